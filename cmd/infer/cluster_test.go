package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// clusterQueueTimeout is the deployment's queue timeout in
// TestNATSNodeLoss: well past a JetStream leader election (a few
// seconds), so a request queued across one waits, not fails.
const clusterQueueTimeout = 20 * time.Second

// streamOutcome is how one streaming request of TestNATSNodeLoss ended.
type streamOutcome struct {
	requestID string
	status    int
	done      bool   // [DONE] arrived
	finished  bool   // a chunk with a finish_reason arrived
	errCode   string // the code of an error (HTTP or SSE event)
	started   time.Time
	took      time.Duration
	transport error // the connection broke or timed out
}

// streamOnce posts one streaming completion to base and reads it to its end.
func streamOnce(client *http.Client, base, key, body string) streamOutcome {
	start := time.Now()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return streamOutcome{transport: err, started: start, took: time.Since(start)}
	}
	defer resp.Body.Close()
	o := streamOutcome{requestID: resp.Header.Get("X-Request-Id"), status: resp.StatusCode, started: start}
	if resp.StatusCode != http.StatusOK {
		var e openAIErrorBody
		json.NewDecoder(resp.Body).Decode(&e)
		if e.Error.Code != nil {
			o.errCode = *e.Error.Code
		}
		if o.errCode == "" {
			o.errCode = fmt.Sprintf("http %d", resp.StatusCode)
		}
		o.took = time.Since(start)
		return o
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		switch {
		case !ok:
		case data == "[DONE]":
			o.done = true
		default:
			var ev struct {
				Error *struct {
					Code string `json:"code"`
				} `json:"error"`
				Choices []struct {
					FinishReason *string `json:"finish_reason"`
				} `json:"choices"`
			}
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				o.transport = fmt.Errorf("bad event %q: %w", data, err)
			}
			if ev.Error != nil {
				o.errCode = ev.Error.Code
			}
			for _, c := range ev.Choices {
				if c.FinishReason != nil {
					o.finished = true
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		o.transport = err
	}
	o.took = time.Since(start)
	return o
}

// TestNATSNodeLoss runs the platform on a real 3-node JetStream cluster
// with --queue-replicas 3, under steady streaming load through two
// activators, and kills the server leading the deployment's request
// stream mid-load. Every request an activator accepted must end within
// its queue timeout plus its generation, either complete or with a clear
// error naming what was lost; a request still queued when the node went
// must complete (its queue has two more copies); usage is recorded once
// per request. See docs/operations.md, "A NATS cluster".
func TestNATSNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary, starts MinIO and a NATS cluster")
	}
	cluster := testenv.StartNATSCluster(t, 3)
	p := startPlatformWith(t, platformOptions{nats: cluster.URL(), env: []string{"INFER_QUEUE_REPLICAS=3"}})
	second := p.startActivator()
	p.deployStories("--idle-timeout", "5m", "--queue-timeout", clusterQueueTimeout.String(), "--parallel", "4")

	// Warm the runner (and create the queue, made at the first request), so the load measures the node loss, not a cold start.
	const body = `{"model":"stories","prompt":"Once upon a time","max_tokens":48,"stream":true}`
	client := &http.Client{Timeout: clusterQueueTimeout + time.Minute}
	if o := streamOnce(client, p.url, p.key, body); !o.done || !o.finished {
		t.Fatalf("warm-up: %+v", o)
	}

	nc, err := nats.Connect(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	streams, err := queue.List(ctx, js)
	if err != nil || len(streams) != 1 {
		t.Fatalf("request streams: %v, %v; want the deployment's one", streams, err)
	}
	s, err := js.Stream(ctx, wire.RequestStream(streams[0].Deployment))
	if err != nil {
		t.Fatal(err)
	}
	info := s.CachedInfo()
	if info.Config.Replicas != 3 || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("request stream: %d replicas, cluster %+v; want 3 (a leader and 2 followers)", info.Config.Replicas, info.Cluster)
	}
	for _, name := range []string{wire.UsageStream, "KV_" + wire.AsyncBucket} {
		if us, err := js.Stream(ctx, name); err != nil || us.CachedInfo().Config.Replicas != 3 {
			t.Errorf("stream %s: %v; want 3 replicas", name, err)
		}
	}

	// Two clients per activator, each one request after another.
	var (
		mu       sync.Mutex
		outcomes []streamOutcome
		wg       sync.WaitGroup
	)
	stop := make(chan struct{})
	for i := range 4 {
		base := p.url
		if i%2 == 1 {
			base = second.url
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				o := streamOnce(client, base, p.key, body)
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(3 * time.Second)
	info, err = s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := cluster.Server(info.Cluster.Leader)
	if leader == nil {
		t.Fatalf("stream leader %q is none of the cluster's servers", info.Cluster.Leader)
	}
	killedAt := time.Now()
	leader.Shutdown()
	t.Logf("killed %s, the request stream's leader", info.Cluster.Leader)
	time.Sleep(8 * time.Second)
	close(stop)
	wg.Wait()

	// A new leader took the stream over.
	waitFor(t, 10*time.Second, "a new request stream leader", func() bool {
		i, err := s.Info(ctx)
		return err == nil && i.Cluster != nil && i.Cluster.Leader != "" && i.Cluster.Leader != leader.Name()
	})

	var completed, failed, afterKill int
	codes := map[string]int{}
	bound := clusterQueueTimeout + 30*time.Second // queue timeout + generating 48 tokens, generously
	var ids []string
	for _, o := range outcomes {
		if o.took > bound {
			t.Errorf("request %s took %s, past its queue timeout and generation (%s)", o.requestID, o.took, bound)
		}
		if o.transport != nil {
			t.Errorf("request %s: the connection broke: %v (%+v)", o.requestID, o.transport, o)
			continue
		}
		if o.requestID == "" {
			t.Errorf("an answer without X-Request-Id: %+v", o)
			continue
		}
		switch {
		case o.done && o.finished && o.errCode == "":
			completed++
			ids = append(ids, o.requestID)
		case o.errCode != "":
			// Tokens already on their way through the killed server
			// are lost; the client is told so, by name, at once.
			failed++
			codes[o.errCode]++
		default:
			t.Errorf("request %s ended without finishing or an error: %+v", o.requestID, o)
		}
	}
	var slowest time.Duration
	for _, o := range outcomes {
		if o.started.After(killedAt) {
			afterKill++
		}
		slowest = max(slowest, o.took)
	}
	t.Logf("%d requests: %d completed, %d ended with a clear error %v; %d began after the kill; the slowest took %s",
		len(outcomes), completed, failed, codes, afterKill, slowest.Round(time.Millisecond))
	for code := range codes {
		if code != "output_lost" && code != "runner_lost" {
			t.Errorf("%d requests failed with %q: only output already streamed may be lost (output_lost)", codes[code], code)
		}
	}
	if completed < len(outcomes)/2 {
		t.Errorf("only %d of %d requests completed", completed, len(outcomes))
	}

	// Each completed request is billed exactly once, and no request twice.
	conn, err := pgx.Connect(ctx, p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var missing int
	waitFor(t, 30*time.Second, "usage of every completed request", func() bool {
		err := conn.QueryRow(ctx, `SELECT count(*) FROM unnest($1::text[]) id WHERE NOT EXISTS (SELECT 1 FROM usage WHERE request_id = id)`, ids).Scan(&missing)
		return err == nil && missing == 0
	})
	var dup int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT request_id FROM usage GROUP BY request_id HAVING count(*) > 1) d`).Scan(&dup); err != nil {
		t.Fatal(err)
	}
	if dup != 0 {
		t.Errorf("%d requests have more than one usage row", dup)
	}
}
