package activator_test

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/infer-run/infer/registry"
	"testing"
)

// BenchmarkPutDeployment creates deployments through PUT
// /v1/deployments/{name}, one after another from one client, against real
// Postgres and NATS JetStream: the rate one operator's script gets
// (target: 500/s; docs/performance.md).
func BenchmarkPutDeployment(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	b.ResetTimer()
	for i := range b.N {
		h.deploy(fmt.Sprintf("bench-%d", i), map[string]any{})
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deployments/s")
}

// BenchmarkPutDeploymentConcurrent is BenchmarkPutDeployment from one
// client with 16 requests in flight at once, as a provisioning script
// with a worker pool sends them.
func BenchmarkPutDeploymentConcurrent(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	var n atomic.Int64
	b.SetParallelism(8) // × GOMAXPROCS (2 here) = 16 in flight
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.deploy(fmt.Sprintf("bench-%d", n.Add(1)), map[string]any{})
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deployments/s")
}

// BenchmarkPutDeploymentRow is only the Postgres insert PUT ends with,
// to tell the API's own cost from the database's commit.
func BenchmarkPutDeploymentRow(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		d := registry.DefaultDeployment()
		d.ID, d.Name, d.TenantID, d.ArtifactSHA256 = registry.NewDeploymentID(), fmt.Sprintf("row-%d", i), h.tenant, h.art.SHA256
		if _, err := h.store.PutDeployment(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkPutDeploymentsBatch creates deployments through PUT
// /v1/deployments, 500 a request (one transaction each), one request at a
// time from one client: the rate a provisioning script gets by batching
// (target: 500 deployments/s from one client; docs/performance.md).
func BenchmarkPutDeploymentsBatch(b *testing.B) {
	quiet(b)
	h := newHarness(b)
	const per = 500
	b.ResetTimer()
	for i := range b.N {
		names := make([]string, per)
		for j := range names {
			names[j] = fmt.Sprintf("batch-%d-%d", i, j)
		}
		if code, out := h.putBatch(adminKey, batchOf(h.art.SHA256, "", names...)); code != 200 || len(out.Data) != per {
			b.Fatalf("batch: %d %+v", code, out.Error)
		}
	}
	b.ReportMetric(float64(b.N*per)/b.Elapsed().Seconds(), "deployments/s")
}
