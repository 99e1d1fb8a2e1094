package controlplane

import (
	"slices"
	"time"

	"github.com/infer-run/infer/registry"
)

// schedule says which deployments to reconcile at a tick: those due (an
// event happened to them, or their last plan asked to be looked at by
// now) and the tick's share of the sweep, which visits every deployment
// once per SweepEvery in ID order, so the work of a thousand deployments
// at zero is spread as a few lookups per tick rather than a thousand
// every few seconds. The ControlPlane guards it with its mutex.
type schedule struct {
	at    map[string]time.Time // deployment ID → when it is due
	ids   []string             // every deployment, sorted, for the sweep
	next  int                  // the sweep's position in ids
	// owed is what the sweep owes, in deployments × time: each tick adds
	// len(ids) × tick, and each period of it is one visit (integers, so
	// a period's visits add up exactly).
	owed time.Duration
}

func newSchedule() schedule { return schedule{at: map[string]time.Time{}} }

// due makes a deployment due at t, or sooner if it already is.
func (s *schedule) due(id string, t time.Time) {
	if id == "" {
		return
	}
	if old, ok := s.at[id]; !ok || t.Before(old) {
		s.at[id] = t
	}
}

// takeDue returns the deployments due by now and forgets them.
func (s *schedule) takeDue(now time.Time) []string {
	var out []string
	for id, t := range s.at {
		if !t.After(now) {
			out = append(out, id)
			delete(s.at, id)
		}
	}
	slices.Sort(out)
	return out
}

// forget drops a deleted deployment's wake.
func (s *schedule) forget(id string) { delete(s.at, id) }

// setAll replaces the set of deployments the sweep visits, keeping its
// place.
func (s *schedule) setAll(deps map[string]registry.Deployment) {
	var resume string
	if len(s.ids) > 0 {
		resume = s.ids[s.next%len(s.ids)]
	}
	ids := make([]string, 0, len(deps))
	for id := range deps {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	s.ids = ids
	s.next, _ = slices.BinarySearch(ids, resume)
}

// all returns every deployment.
func (s *schedule) all() []string { return slices.Clone(s.ids) }

// sweep returns the next share of deployments for one tick of a sweep
// that visits all of them every period.
func (s *schedule) sweep(tick, period time.Duration) []string {
	n := len(s.ids)
	if n == 0 || period <= 0 {
		return nil
	}
	s.owed += time.Duration(n) * tick
	k := int(min(s.owed/period, time.Duration(n)))
	s.owed -= time.Duration(k) * period
	s.owed = min(s.owed, period) // a long pause is not made up for all at once
	out := make([]string, 0, k)
	for range k {
		s.next %= n
		out = append(out, s.ids[s.next])
		s.next++
	}
	return out
}
