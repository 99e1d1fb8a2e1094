package activator_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// TestColdStartComments: a stream waiting on a cold start is told each
// phase its runner goes through, in SSE comments, in order (curl users see
// why they wait; SDKs ignore comments), then gets its tokens. The runner is
// played by hand so each phase lasts until the test has seen it named.
func TestColdStartComments(t *testing.T) {
	h := newHarness(t)
	h.deploy("cold", map[string]any{"parallel": 1})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}

	lines := make(chan string, 256)
	go func() {
		defer close(lines)
		req, _ := http.NewRequest(http.MethodPost, h.url+"/v1/completions",
			strings.NewReader(`{"model":"cold","prompt":"Once","max_tokens":5,"stream":true}`))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() != "" {
				lines <- sc.Text()
			}
		}
	}()
	// expect reads the stream up to want (skipping other lines) and
	// returns what it skipped.
	expect := func(want string) []string {
		t.Helper()
		var skipped []string
		deadline := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the stream ended before %q; it had %q", want, skipped)
				}
				if l == want {
					return skipped
				}
				skipped = append(skipped, l)
			case <-deadline:
				t.Fatalf("no %q within 20 s; the stream had %q", want, skipped)
			}
		}
	}
	started := time.Now()
	phase := func(p wire.Phase, detail string) {
		t.Helper()
		hb, _ := json.Marshal(wire.Heartbeat{RunnerID: "r1", Deployment: "cold", DeploymentID: h.depID("cold"), Phase: p, Detail: detail, Slots: 1, StartedAt: started, Sent: time.Now()})
		if err := h.nc.Publish(wire.HeartbeatSubject(h.depID("cold"), "r1"), hb); err != nil {
			t.Fatal(err)
		}
	}

	expect(": starting runner")
	phase(wire.PhaseFetching, "fetching weights 40%")
	expect(": fetching weights 40%")
	phase(wire.PhaseFetching, "fetching weights 100%")
	expect(": fetching weights 100%")
	phase(wire.PhaseLoading, "")
	expect(": loading model")

	phase(wire.PhaseReady, "")
	heartbeat(t, h.nc, h.depID("cold"), "r1")
	job := takeJob(t, js, h.depID("cold"))
	r := &fakeRunner{t: t, nc: h.nc, id: "r1", subject: wire.RunnerReplySubject(job.ReplyTo, "r1")}
	r.start()
	r.delta(" upon")
	r.done()
	skipped := expect("data: [DONE]")
	var text strings.Builder
	for _, l := range skipped {
		if payload, ok := strings.CutPrefix(l, "data: "); ok {
			var chunk struct {
				Choices []struct{ Text string }
			}
			if err := json.Unmarshal([]byte(payload), &chunk); err != nil {
				t.Fatalf("chunk %q: %v", payload, err)
			}
			for _, c := range chunk.Choices {
				text.WriteString(c.Text)
			}
		}
	}
	if text.String() != " upon" {
		t.Errorf("streamed text %q after the cold start, want %q (lines %q)", text.String(), " upon", skipped)
	}
}
