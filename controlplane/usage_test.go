package controlplane

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// TestRecordUsageBillsOnce sends a request's usage record and a runner's
// lifetime record twice each through the real usage stream — once within
// JetStream's duplicate window and once after it (a new message ID, as a
// redelivery long after would be) — and checks that Postgres holds each
// once, at the prices the records carried, not the deployment's current
// ones.
func TestRecordUsageBillsOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	store, err := registry.Open(ctx, testenv.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	nc, js := testenv.JetStream(t)

	done := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { done <- RecordUsage(rctx, nc, store, slog.Default(), 1) }()
	defer func() { stop(); <-done }()

	req := wire.UsageRecord{RequestID: "chatcmpl-once", Deployment: "billed", TenantID: "tnt_a", KeyID: "key_a",
		PromptTokens: 400, CompletionTokens: 100, Status: "ok", FinishedAt: time.Now(),
		Prices: wire.Prices{PromptPerMTok: 2.5, CompletionPerMTok: 10}}
	run := wire.RunnerUsageRecord{RunnerID: "run-once", Deployment: "billed",
		StartedAt: time.Now().Add(-10 * time.Second), EndedAt: time.Now(), PricePerSecond: 0.01}
	publish := func(subject string, v any, msgID string) {
		t.Helper()
		data, _ := json.Marshal(v)
		// The stream exists once the recorder has started.
		for {
			_, err := js.Publish(ctx, subject, data, jetstream.WithMsgID(msgID))
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("publishing: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for _, id := range []string{"", "", ".late"} {
		publish(wire.UsageSubject("billed"), req, req.RequestID+id)
		publish(wire.RunnerUsageSubject("billed"), run, "runner."+run.RunnerID+id)
	}
	// Wait until the recorder has acknowledged everything.
	stream, err := js.Stream(ctx, wire.UsageStream)
	if err != nil {
		t.Fatal(err)
	}
	for {
		cons, err := stream.Consumer(ctx, "recorder")
		if err == nil {
			info, err := cons.Info(ctx)
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream >= 4 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("recorder did not drain the usage stream")
		}
		time.Sleep(50 * time.Millisecond)
	}

	recs, err := store.ListUsage(ctx, registry.UsageFilter{Deployment: "billed"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].CostUSD != 0.002 || recs[0].PromptPricePerMTok != 2.5 {
		t.Errorf("usage records %+v; want one costing 400×2.5/1M + 100×10/1M = $0.002", recs)
	}
	groups, err := store.UsageReport(ctx, registry.UsageFilter{Deployment: "billed"}, registry.GroupByDeployment)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].Requests != 1 || groups[0].RunnerSeconds < 9.9 || groups[0].RunnerSeconds > 10.1 ||
		math.Abs(groups[0].RunnerCostUSD-groups[0].RunnerSeconds*0.01) > 1e-9 {
		t.Errorf("report %+v; want one request and one 10 s runner at $0.01/s", groups)
	}
}
