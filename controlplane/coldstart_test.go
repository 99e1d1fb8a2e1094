package controlplane

import (
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

func TestColdStartPhases(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	full := wire.ColdStart{FetchStarted: at(20), FetchDone: at(30), LoadDone: at(60), Ready: at(65), FetchedBytes: 1000}
	withToken := full
	withToken.FirstToken = at(70)

	tests := []struct {
		name    string
		poked   bool
		queued  bool
		beats   []wire.ColdStart
		waitFor time.Duration // receive time of the last heartbeat after the ready one
		want    map[string]float64
	}{
		{
			name:  "request-driven start waits for the first token",
			poked: true, queued: true,
			beats: []wire.ColdStart{{FetchStarted: at(20)}, full, withToken},
			want:  map[string]float64{"decision": 0.005, "start": 0.015, "fetch": 0.010, "load": 0.030, "attach": 0.005, "first_token": 0.005},
		},
		{
			name:  "a warm-pool start is done when ready",
			beats: []wire.ColdStart{full},
			want:  map[string]float64{"start": 0.015, "fetch": 0.010, "load": 0.030, "attach": 0.005},
		},
		{
			name:    "no first token within the wait is logged without one",
			queued:  true,
			beats:   []wire.ColdStart{full, full},
			waitFor: firstTokenWait,
			want:    map[string]float64{"start": 0.015, "fetch": 0.010, "load": 0.030, "attach": 0.005},
		},
		{
			name:   "still waiting for the first token",
			queued: true,
			beats:  []wire.ColdStart{full},
			want:   map[string]float64{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cp := &ControlPlane{
				log:        slog.New(slog.DiscardHandler),
				metrics:    newMetrics(prometheus.NewRegistry()),
				pokedAt:    map[string]time.Time{},
				coldStarts: map[string]*coldStart{},
			}
			if tt.poked {
				cp.pokedAt["d"] = t0
			}
			cp.noteStart("r1", registry.Deployment{ID: "d", Name: "d"}, at(5), tt.queued)
			now := at(100)
			got := map[string]float64{}
			for i, cs := range tt.beats {
				if i == len(tt.beats)-1 {
					now = now.Add(tt.waitFor)
				}
				phases := cp.observeColdStart(wire.Heartbeat{RunnerID: "r1", Deployment: "d", DeploymentID: "d", Phase: wire.PhaseReady, ColdStart: cs}, now)
				for p, d := range phases {
					got[p] = d.Seconds()
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("phases observed %v, want %v", got, tt.want)
			}
			for p, w := range tt.want {
				if g, ok := got[p]; !ok || g < w-1e-6 || g > w+1e-6 {
					t.Errorf("phase %s = %v s, want %v s", p, got[p], w)
				}
			}
			if bytes := testutil.ToFloat64(cp.metrics.fetchedBytes.WithLabelValues("d")); bytes != 1000 {
				t.Errorf("fetched bytes %v, want 1000 (once per runner)", bytes)
			}
		})
	}
}
