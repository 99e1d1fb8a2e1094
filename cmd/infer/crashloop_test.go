package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// poisonMark marks the prompts of the jobs TestJobThatKillsItsRunners
// kills the runners of.
const poisonMark = "POISON"

// runnerKiller SIGKILLs the runner process that starts a poison job, as
// llama.cpp aborting on a request would end it. It reads, in the order
// NATS delivered them, the jobs published to the deployments' queues (to
// learn the poison jobs' IDs) and the start events runners send for sync
// and async jobs (to learn who took one).
type runnerKiller struct {
	t      *testing.T
	p      *platform
	deps   []string
	mu     sync.Mutex
	poison map[string]string // job ID → deployment
	kills  map[string]int    // job ID → runners killed
}

func newRunnerKiller(t *testing.T, p *platform, nc *nats.Conn, deps ...string) *runnerKiller {
	k := &runnerKiller{t: t, p: p, deps: deps, poison: map[string]string{}, kills: map[string]int{}}
	// One channel for every subscription keeps NATS's order: a job's
	// publication comes before any runner's start event for it.
	ch := make(chan *nats.Msg, 4096)
	// Request subjects name the deployment's ID, which the CLI does not
	// print: every queue's, matched to deps by the job's name.
	subjects := []string{"_INFER.reply.>", wire.AsyncEventSubject("*"), wire.RequestSubject("*")}
	for _, s := range subjects {
		sub, err := nc.ChanSubscribe(s, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case m := <-ch:
				k.see(m)
			case <-done:
				return
			}
		}
	}()
	return k
}

func (k *runnerKiller) see(m *nats.Msg) {
	if strings.HasPrefix(m.Subject, wire.RequestSubject("")) {
		var job wire.Job
		if json.Unmarshal(m.Data, &job) == nil && slices.Contains(k.deps, job.Deployment) && strings.Contains(job.Prompt, poisonMark) {
			k.mu.Lock()
			k.poison[job.ID] = job.Deployment
			k.mu.Unlock()
		}
		return
	}
	if m.Header.Get(wire.PingHeader) != "" {
		return
	}
	ev, err := wire.DecodeEvent(m.Data)
	if err != nil || ev.Type != wire.EventStart {
		return
	}
	// _INFER.reply.<activator>.<job>.<runner>, or
	// infer.async.events.<job> with the runner in the event.
	tok := strings.Split(m.Subject, ".")
	id, runner := tok[len(tok)-1], ev.Runner
	if strings.HasPrefix(m.Subject, "_INFER.") && len(tok) == 5 {
		id, runner = tok[3], tok[4]
	}
	k.mu.Lock()
	dep, ok := k.poison[id]
	k.mu.Unlock()
	if !ok {
		return
	}
	for _, pid := range k.p.runnerPIDs(dep) {
		if runnerID(k.t, pid) == runner {
			var n int
			fmt.Sscan(pid, &n)
			if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
				k.t.Errorf("killing runner %s: %v", runner, err)
				return
			}
			k.mu.Lock()
			k.kills[id]++
			k.mu.Unlock()
			k.t.Logf("killed runner %s (pid %s), which started poison job %s", runner, pid, id)
			return
		}
	}
	k.t.Errorf("runner %s started poison job %s, but no such process serves %s", runner, id, dep)
}

// killed is how many runners were killed for the poison job in dep, and
// its ID.
func (k *runnerKiller) killed(dep string) (id string, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, d := range k.poison {
		if d == dep {
			return id, k.kills[id]
		}
	}
	return "", 0
}

// TestJobThatKillsItsRunners: a job whose runner process dies each time it
// starts the job (SIGKILL, as when llama.cpp aborts on a request) is not
// handed on for ever. The first two runners to die holding it are
// replaced and the job redelivered; on the third delivery it runs alone on
// its runner, and when that runner dies too the next delivery fails it
// with 422 request_crashed_runner. A sync request gets that error as its
// answer, an async job as its result. Other requests on the same
// deployments are answered meanwhile (some of them were on the killed
// runners and are redelivered) and after.
func TestJobThatKillsItsRunners(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs runner processes")
	}
	natsURL := testenv.NATS(t)
	p := startPlatformWith(t, platformOptions{nats: natsURL, localBlobs: true})
	p.deployStories("--idle-timeout", "60s", "--parallel", "2", "--queue-timeout", "3m")
	if out, err := p.cli("deploy", "tales", "--weights", testenv.ModelPath(t), "--idle-timeout", "60s", "--parallel", "2", "--queue-timeout", "3m"); err != nil {
		t.Fatalf("infer deploy tales: %v\n%s", err, out)
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	k := newRunnerKiller(t, p, nc, "stories", "tales")

	// Ordinary requests on both deployments, one after another, the whole
	// time: every one must be answered.
	stop := make(chan struct{})
	var others sync.WaitGroup
	served := map[string]int{}
	var servedMu sync.Mutex
	var stopOnce sync.Once
	stopOthers := func() {
		stopOnce.Do(func() { close(stop) })
		others.Wait()
	}
	t.Cleanup(stopOthers) // before the platform stops, should the test end early
	for _, dep := range []string{"stories", "tales"} {
		others.Add(1)
		go func() {
			defer others.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				status, b := p.tryPost("/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"Once upon a time %d","max_tokens":8}`, dep, i))
				if status != 200 {
					t.Errorf("%s request %d beside the poison job: %d %s", dep, i, status, b)
					time.Sleep(time.Second)
					continue
				}
				servedMu.Lock()
				served[dep]++
				servedMu.Unlock()
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}

	// The sync poison job on stories.
	type answer struct {
		status int
		body   []byte
		err    error
	}
	syncDone := make(chan answer, 1)
	start := time.Now()
	go func() {
		resp, err := p.post("/v1/completions", p.key, `{"model":"stories","prompt":"`+poisonMark+` Once upon a time"}`)
		if err != nil {
			syncDone <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		syncDone <- answer{resp.StatusCode, b, err}
	}()
	// The async poison job on tales.
	status, _, b := p.do(http.MethodPost, "/v1/async/completions", p.key, `{"model":"tales","prompt":"`+poisonMark+` Once upon a time"}`)
	var job struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(b, &job); status != http.StatusAccepted || err != nil {
		t.Fatalf("async poison job: %d %s", status, b)
	}

	type apiErr struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    string `json:"code"`
	}
	checkErr := func(what string, e apiErr) {
		t.Helper()
		if e.Code != "request_crashed_runner" || e.Type != "invalid_request_error" || !strings.Contains(e.Message, "stopped the runner processing it") {
			t.Errorf("%s ended with %+v; want request_crashed_runner", what, e)
		}
	}

	var a answer
	select {
	case a = <-syncDone:
	case <-time.After(150 * time.Second):
		t.Fatal("the sync poison job had no answer after 150 s")
	}
	_, kills := k.killed("stories")
	t.Logf("sync poison job answered %d after %s and %d runners killed", a.status, time.Since(start).Round(100*time.Millisecond), kills)
	var body struct {
		Error apiErr `json:"error"`
	}
	if a.err != nil || a.status != 422 || json.Unmarshal(a.body, &body) != nil {
		t.Errorf("sync poison job: %d %v %s; want 422", a.status, a.err, a.body)
	}
	checkErr("the sync poison job", body.Error)
	if kills != 3 {
		t.Errorf("the sync poison job killed %d runners; want 3 (two redeliveries, the last one alone)", kills)
	}

	var rec struct {
		Status string  `json:"status"`
		Error  *apiErr `json:"error"`
	}
	for deadline := time.Now().Add(150 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		status, _, b := p.do(http.MethodGet, "/v1/async/"+job.ID, p.key, "")
		if status != 200 || json.Unmarshal(b, &rec) != nil {
			t.Fatalf("GET the async poison job: %d %s", status, b)
		}
		if rec.Status == "failed" || rec.Status == "succeeded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the async poison job is still %s after 150 s", rec.Status)
		}
	}
	_, kills = k.killed("tales")
	t.Logf("async poison job %s after %s and %d runners killed", rec.Status, time.Since(start).Round(100*time.Millisecond), kills)
	if rec.Status != "failed" || rec.Error == nil {
		t.Fatalf("async poison job %s: %+v", rec.Status, rec.Error)
	}
	checkErr("the async poison job", *rec.Error)
	if kills != 3 {
		t.Errorf("the async poison job killed %d runners; want 3", kills)
	}

	stopOthers()
	t.Logf("requests answered beside the poison jobs: %v", served)
	for _, dep := range []string{"stories", "tales"} {
		if served[dep] == 0 {
			t.Errorf("no request on %s was answered beside its poison job", dep)
		}
		// And after: a burst is served in full.
		var burst sync.WaitGroup
		for i := range 4 {
			burst.Add(1)
			go func() {
				defer burst.Done()
				status, b := p.tryPost("/v1/completions", fmt.Sprintf(`{"model":%q,"prompt":"After %d","max_tokens":8}`, dep, i))
				if status != 200 {
					t.Errorf("%s request %d after the poison job: %d %s", dep, i, status, b)
				}
			}()
		}
		burst.Wait()
	}
}

// tryPost posts body with the admin key from any goroutine: a failed
// request is status 0 and the error as the body.
func (p *platform) tryPost(path, body string) (int, []byte) {
	resp, err := p.post(path, p.key, body)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
