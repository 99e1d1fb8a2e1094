package controlplane

import (
	"testing"
	"time"

	"github.com/infer-run/infer/registry"
)

func TestDesired(t *testing.T) {
	tests := []struct {
		name                     string
		min, max, parallel, work int
		want                     int
	}{
		{"idle deployment scales to zero", 0, 4, 4, 0, 0},
		{"first request starts one runner", 0, 4, 4, 1, 1},
		{"a full runner's worth", 0, 4, 4, 4, 1},
		{"one more request needs a second runner", 0, 4, 4, 5, 2},
		{"capped at max", 0, 3, 4, 100, 3},
		{"min kept warm while idle", 2, 4, 4, 0, 2},
		{"min above max wins", 3, 1, 4, 0, 3},
		{"parallel 0 treated as 1", 0, 10, 0, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := registry.Deployment{MinRunners: tt.min, MaxRunners: tt.max, Parallel: tt.parallel}
			if got := Desired(d, tt.work); got != tt.want {
				t.Errorf("Desired(min %d, max %d, parallel %d, work %d) = %d, want %d", tt.min, tt.max, tt.parallel, tt.work, got, tt.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		failures int
		want     time.Duration
	}{{0, 0}, {1, time.Second}, {2, 2 * time.Second}, {4, 8 * time.Second}, {7, time.Minute}, {50, time.Minute}}
	for _, tt := range tests {
		if got := backoff(tt.failures); got != tt.want {
			t.Errorf("backoff(%d) = %s, want %s", tt.failures, got, tt.want)
		}
	}
}
