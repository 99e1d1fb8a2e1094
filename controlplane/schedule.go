package controlplane

import (
	"hash/fnv"
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
	at   map[string]time.Time // deployment ID → when it is due
	ids  []string             // every deployment, sorted, for the sweep
	next int                  // the sweep's position in ids
	pass int                  // how many times the sweep went round
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
	ids := make([]string, 0, len(deps))
	for id := range deps {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	if slices.Equal(ids, s.ids) {
		return
	}
	next := len(ids) // at the end of a pass, the next one starts
	if s.next < len(s.ids) {
		next, _ = slices.BinarySearch(ids, s.ids[s.next])
	}
	s.ids, s.next = ids, next
}

// all returns every deployment.
func (s *schedule) all() []string { return slices.Clone(s.ids) }

// sweep returns the next share of deployments for one tick of a sweep
// that visits all of them every period. keep says whether a deployment is
// looked at on this pass (see restPass).
func (s *schedule) sweep(tick, period time.Duration, keep func(id string, pass int) bool) []string {
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
		if s.next >= n {
			s.next = 0
			s.pass++
		}
		if id := s.ids[s.next]; keep == nil || keep(id, s.pass) {
			out = append(out, id)
		}
		s.next++
	}
	return out
}

// restPass says whether a deployment at rest is looked at on a sweep's
// pass: on one pass in every k, chosen by its ID's hash, so the passes
// share the deployments at rest evenly and each is looked at every k
// passes.
func restPass(id string, pass, k int) bool {
	if k <= 1 {
		return true
	}
	h := fnv.New32a()
	h.Write([]byte(id))
	return (int(h.Sum32()%uint32(k))+pass)%k == 0
}
