package runner

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// TestBadSchemaJob: jobs whose schemas crashed or stalled runners before
// (issue 19), put on the queue directly as if an activator had not checked
// them, each end in their own 400 invalid_schema; the runner keeps serving
// and the next job, with a schema it accepts, finishes. A real runner,
// model and NATS; the test plays the activator.
func TestBadSchemaJob(t *testing.T) {
	ctx := context.Background()
	art, store := storedModel(t)
	nc, js, deployment := testQueue(t, "schema-")
	replyTo, events := playActivator(t, nc)
	runRunner(t, Config{ID: wire.NewID(4), DeploymentID: deployment, Deployment: deployment, Artifact: art, Cache: &Cache{Dir: t.TempDir(), Blobs: store}, Engine: EngineConfig{Parallel: 2, Context: 256}}, nc)

	// run queues a job and returns its last event.
	run := func(schema string) wire.Event {
		t.Helper()
		zero := float32(0)
		job := wire.Job{ID: "cmpl-" + wire.NewID(6), Deployment: deployment, DeploymentID: deployment, Kind: wire.KindCompletion, Prompt: "Once upon a time",
			MaxTokens: 32, Sampling: wire.Sampling{Temperature: &zero, JSONSchema: json.RawMessage(schema)}, ReplyTo: replyTo + "." + wire.NewID(4),
			Deadline: time.Now().Add(time.Minute)}
		data, _ := json.Marshal(job)
		if _, err := queue.Publish(ctx, js, deployment, job.ID, data); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case raw := <-events:
				ev, err := wire.DecodeEvent(raw)
				if err != nil {
					t.Fatal(err)
				}
				if ev.Type == wire.EventDone || ev.Type == wire.EventError {
					return ev
				}
			case <-time.After(60 * time.Second):
				t.Fatalf("no last event for schema %.80s", schema)
			}
		}
	}
	for name, schema := range map[string]string{
		"impossible pattern":     `{"type":"string","pattern":"^[^\\s\\S]$"}`,
		"integer range reversed": `{"type":"integer","minimum":10,"maximum":5}`,
		"empty anyOf":            `{"anyOf":[]}`,
		"maxLength 500000":       `{"type":"string","maxLength":500000}`,
		"repeated empty match":   `{"type":"string","pattern":"^(a*)*$"}`,
		"overlapping stars":      `{"type":"string","pattern":"^` + strings.Repeat(`[a-z ]*`, 500) + `$"}`,
	} {
		ev := run(schema)
		if ev.Type != wire.EventError || ev.Error == nil || ev.Error.Status != 400 || ev.Error.Code != "invalid_schema" || ev.Error.Param != "response_format" {
			t.Errorf("%s: last event %+v %+v; want a 400 invalid_schema error on response_format", name, ev, ev.Error)
		}
	}
	if ev := run(`{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}`); ev.Type != wire.EventDone {
		t.Fatalf("the job after the refused ones: %+v %+v", ev, ev.Error)
	}
}
