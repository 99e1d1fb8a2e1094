package activator

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/registry"
)

func TestNextKey(t *testing.T) {
	for _, c := range []struct {
		name string
		keys []keyLoad
		want int
	}{
		{"none", nil, -1},
		{"one", []keyLoad{{"a", 3, 1, 9}}, 0},
		{"fewest admitted", []keyLoad{{"a", 4, 1, 1}, {"b", 1, 1, 8}}, 1},
		{"tie: longest unserved", []keyLoad{{"a", 0, 1, 7}, {"b", 0, 1, 5}}, 1},
		{"tie: never served first", []keyLoad{{"a", 0, 1, 1}, {"b", 0, 1, 0}}, 1},
		{"the burst's key waits its turn", []keyLoad{{"burst", 1, 1, 10}, {"small", 0, 1, 9}}, 1},
		{"share 3 holds 3 before share 1's second", []keyLoad{{"a", 2, 3, 1}, {"b", 1, 1, 2}}, 0},
		{"share 3 at 3 per 1: tie, longest unserved", []keyLoad{{"a", 3, 3, 5}, {"b", 1, 1, 4}}, 1},
		{"share 3 past its share", []keyLoad{{"a", 4, 3, 1}, {"b", 1, 1, 9}}, 1},
		{"share 0 counts as 1: 1 per 1 ties 2 per 2", []keyLoad{{"a", 1, 0, 1}, {"b", 2, 2, 9}}, 0},
		{"share 0 counts as 1, not as nothing", []keyLoad{{"a", 2, 0, 1}, {"b", 3, 2, 9}}, 1},
		{"per share, not per key", []keyLoad{{"a", 5, 10, 9}, {"b", 1, 1, 1}}, 0},
	} {
		if got := nextKey(c.keys); got != c.want {
			t.Errorf("%s: nextKey(%+v) = %d, want %d", c.name, c.keys, got, c.want)
		}
	}
}

// TestFairGateShares drives one deployment's gate with two keys that both
// keep more requests waiting than it has places: key a with share 3, key
// b with share 1. Each freed place must go 3 to 1.
func TestFairGateShares(t *testing.T) {
	g := newFairGates(prometheus.NewRegistry())
	d := registry.Deployment{ID: "dep", Name: "dep", Parallel: 1, MaxRunners: 2, QueueLimit: 1000}
	window := fairWindow(d) // 4
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type place struct {
		key     string
		release func()
	}
	admitted := make(chan place, 200)
	ask := func(key string, share int) {
		go func() {
			release, err := g.admit(ctx, d, key, share, time.Now().Add(time.Minute), nil, nil)
			if err == nil {
				admitted <- place{key, release}
			}
		}()
	}
	// The window is full with a third key's requests, then a and b queue.
	for range window {
		ask("filler", 1)
	}
	var held []place
	for range window {
		held = append(held, <-admitted)
	}
	const each = 60
	for range each {
		ask("a", 3)
		ask("b", 1)
	}
	for deadline := time.Now().Add(10 * time.Second); g.waitingFor(d.ID) < 2*each; {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests wait in the gate, want %d", g.waitingFor(d.ID), 2*each)
		}
		time.Sleep(time.Millisecond)
	}
	// Free one place at a time (the oldest held: runners finish in
	// order) and see who gets it.
	got := map[string]int{}
	const places = 80
	for range places {
		held[0].release()
		held = held[1:]
		p := <-admitted
		got[p.key]++
		held = append(held, p)
	}
	if got["a"]+got["b"] != places || got["a"] < 59 || got["a"] > 61 {
		t.Errorf("of %d freed places, key a (share 3) got %d and key b (share 1) %d; want about 60 and 20", places, got["a"], got["b"])
	}
	for _, p := range held {
		p.release()
	}
}
