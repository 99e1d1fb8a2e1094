package activator_test

import (
	"encoding/json"
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

	s := h.stream(t, "/v1/completions", `{"model":"cold","prompt":"Once","max_tokens":5,"stream":true}`)
	started := time.Now()
	phase := func(p wire.Phase, detail string) {
		t.Helper()
		hb, _ := json.Marshal(wire.Heartbeat{RunnerID: "r1", Deployment: "cold", DeploymentID: h.depID("cold"), Phase: p, Detail: detail, Slots: 1, StartedAt: started, Sent: time.Now()})
		if err := h.nc.Publish(wire.HeartbeatSubject(h.depID("cold"), "r1"), hb); err != nil {
			t.Fatal(err)
		}
	}

	s.expect(": starting runner")
	phase(wire.PhaseFetching, "fetching weights 40%")
	s.expect(": fetching weights 40%")
	phase(wire.PhaseFetching, "fetching weights 100%")
	s.expect(": fetching weights 100%")
	phase(wire.PhaseLoading, "")
	s.expect(": loading model")

	phase(wire.PhaseReady, "")
	heartbeat(t, h.nc, h.depID("cold"), "r1")
	job := takeJob(t, js, h.depID("cold"))
	r := &fakeRunner{t: t, nc: h.nc, id: "r1", subject: wire.RunnerReplySubject(job.ReplyTo, "r1")}
	r.start()
	r.delta(" upon")
	r.done()
	skipped := s.expect("data: [DONE]")
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
