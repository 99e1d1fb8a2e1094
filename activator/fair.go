package activator

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/registry"
)

// Fair sharing between keys. A deployment's JetStream queue is first in,
// first out, so a burst of 200 requests from one key, sent while the
// deployment is cold or saturated, would be served before anything another
// key sends afterwards. The activator therefore admits a deployment's
// requests, sync and async, to the queue through a gate:
//
//   - At most window requests per deployment are in the queue or running
//     from this activator at once, where window is twice the most the
//     deployment can ever run at once (2 × parallel × max(max_runners,
//     min_runners); see fairWindow). The control plane still sees enough
//     queued work to scale to the maximum, and nothing the runners could
//     take waits here.
//   - Beyond it, requests wait here in one first-in-first-out line per key,
//     and each freed place goes to the waiting key with the fewest requests
//     in the queue or running per unit of its share (the key's "share",
//     1 by default), ties to the key served longest ago: weighted max-min
//     fairness. Saturating keys hold places in proportion to their shares
//     (share 3 against share 1: three places to one), a key alone gets
//     them all, and a key that asks for less than its share gets all it
//     asks. Weights are per key, not per tenant: all the keys of a
//     deployment belong to its tenant.
//
// The gate is per activator: with N activators behind a load balancer a
// deployment can have N windows in its queue, and fairness holds within
// each activator's share (a burst spread over all of them is shared fairly
// on each); docs/architecture.md, "Fair sharing between keys", says
// precisely what holds across activators. Async jobs take places in the
// same gate, durably (async_fair.go): recorded before they wait, published
// by another activator should the one holding them die. A request waiting here
// counts against its queue timeout (504 queue_timeout) and, with those
// queued, its queue limit (429 queue_full); a streamed one gets its SSE
// headers only once admitted.

// fairGates holds one gate per deployment ID.
type fairGates struct {
	mu      sync.Mutex
	gates   map[string]*fairGate
	waiting *prometheus.GaugeVec
}

func newFairGates(reg prometheus.Registerer) *fairGates {
	g := &fairGates{gates: map[string]*fairGate{},
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "infer_activator_fair_waiting",
			Help: "Requests waiting in this activator's fair-sharing gate for a place in their deployment's queue.",
		}, []string{"deployment"})}
	reg.MustRegister(g.waiting)
	return g
}

// fairGate is one deployment's gate.
type fairGate struct {
	window int
	// admitted counts each key's requests in the queue or running;
	// lines holds each key's waiting requests in arrival order; served
	// is when each key last got a place (for ties).
	admitted map[string]int
	lines    map[string][]chan struct{}
	served   map[string]uint64
	shares   map[string]int // each waiting key's share, as it last asked
	total    int            // requests admitted, all keys
	waiting  int            // requests in lines, all keys
	clock    uint64         // counts places given, ordering served
}

// fairWindow is how many of a deployment's requests the gate lets into its
// queue at once: twice what the deployment can run at once. The second
// half keeps a batch queued behind the running one, so a runner that
// finishes a request takes the next from JetStream at once rather than
// waiting for this activator to publish it (and a cold deployment's queue
// shows the control plane work for every runner it may start).
func fairWindow(d registry.Deployment) int {
	return 2 * max(1, d.Parallel) * max(1, d.MaxRunners, d.MinRunners)
}

// keyLoad is one waiting key, as nextKey sees it.
type keyLoad struct {
	key      string
	admitted int    // its requests in the queue or running
	share    int    // its weight (below 1 counts as 1)
	served   uint64 // when it last got a place (0: never)
}

// nextKey picks the key that gets the next place: the fewest admitted per
// unit of share, then the longest unserved, then the first listed. It is
// -1 for none. (Compared by cross-multiplying, exactly: admitted and share
// are small integers.)
func nextKey(keys []keyLoad) int {
	best := -1
	for i, k := range keys {
		if best < 0 {
			best = i
			continue
		}
		b := keys[best]
		l, r := k.admitted*max(1, b.share), b.admitted*max(1, k.share)
		if l < r || (l == r && k.served < b.served) {
			best = i
		}
	}
	return best
}

// admit waits for the request's place in its deployment's queue and
// returns the function that gives it back when the request ends. While it
// waits, it calls wait every keepaliveEvery (a stream writes an SSE comment
// saying why it waits) and gives up when draining is closed (shutdown).
func (g *fairGates) admit(ctx context.Context, d registry.Deployment, keyID string, share int, deadline time.Time,
	draining <-chan struct{}, wait func(waiting int)) (func(), error) {
	release, t, err := g.enter(d, keyID, share)
	if err != nil || release != nil {
		return release, err
	}
	if wait != nil {
		wait(g.waitingFor(d.ID))
	}
	return g.await(ctx, t, deadline, draining, wait)
}

// fairTicket is a request's place in its key's line.
type fairTicket struct {
	d    registry.Deployment
	key  string
	gate *fairGate
	ch   chan struct{}
}

// enter takes a place at once if one is free and nobody waits (release is
// then non-nil), or else joins the key's line (await waits for the place):
// the part of admit that cannot block, so an async submission learns
// whether the gate refuses it (429 queue_full) before it answers 202.
func (g *fairGates) enter(d registry.Deployment, keyID string, share int) (release func(), t *fairTicket, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gate := g.gates[d.ID]
	if gate == nil {
		gate = &fairGate{admitted: map[string]int{}, lines: map[string][]chan struct{}{}, served: map[string]uint64{}, shares: map[string]int{}}
		g.gates[d.ID] = gate
	}
	gate.window = fairWindow(d) // follows the deployment's settings
	if gate.waiting == 0 && gate.total < gate.window {
		gate.take(keyID)
		return g.releaser(d, keyID), nil, nil
	}
	if gate.total+gate.waiting >= max(d.QueueLimit, gate.window) {
		e := errStatus(http.StatusTooManyRequests, "rate_limit_error", "queue_full", "deployment %s has %d requests queued, its limit; retry later", d.Name, d.QueueLimit)
		e.RetryAfter = 1
		return nil, nil, e
	}
	ch := make(chan struct{})
	gate.lines[keyID] = append(gate.lines[keyID], ch)
	gate.shares[keyID] = share
	gate.waiting++
	g.waiting.WithLabelValues(d.Name).Inc()
	return nil, &fairTicket{d: d, key: keyID, gate: gate, ch: ch}, nil
}

// releaser is the function that gives an admitted request's place back;
// it does so once however often it is called.
func (g *fairGates) releaser(d registry.Deployment, keyID string) func() {
	var once sync.Once
	return func() { once.Do(func() { g.release(d, keyID) }) }
}

// await waits in line for the place enter did not give at once (see
// admit).
func (g *fairGates) await(ctx context.Context, t *fairTicket, deadline time.Time,
	draining <-chan struct{}, wait func(waiting int)) (func(), error) {
	d, keyID, gate, ch := t.d, t.key, t.gate, t.ch
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(keepaliveEvery)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case <-ch:
			return g.releaser(d, keyID), nil
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-draining:
			err = errShuttingDown(false)
			break wait
		case <-timer.C:
			err = errStatus(http.StatusGatewayTimeout, "server_error", "queue_timeout",
				"no runner started the request within the deployment's queue timeout (%s); other requests were ahead of it", d.QueueTimeout)
			break wait
		case <-tick.C:
			if wait != nil {
				wait(g.waitingFor(d.ID))
			}
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-ch:
		// Admitted while giving up: the place goes to the next.
		gate.total--
		if gate.admitted[keyID]--; gate.admitted[keyID] <= 0 {
			delete(gate.admitted, keyID)
		}
		g.dispatch(d, gate)
	default:
		line := gate.lines[keyID]
		for i, c := range line {
			if c == ch {
				gate.lines[keyID] = append(line[:i:i], line[i+1:]...)
				break
			}
		}
		if len(gate.lines[keyID]) == 0 {
			delete(gate.lines, keyID)
			delete(gate.shares, keyID)
		}
		gate.waiting--
		g.waiting.WithLabelValues(d.Name).Dec()
	}
	return nil, err
}

// waitingFor is how many requests wait in the deployment's gate.
func (g *fairGates) waitingFor(depID string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if gate := g.gates[depID]; gate != nil {
		return gate.waiting
	}
	return 0
}

// take admits one request of key. Called with g.mu held.
func (gate *fairGate) take(key string) {
	gate.total++
	gate.admitted[key]++
	gate.clock++
	gate.served[key] = gate.clock
}

func (g *fairGates) release(d registry.Deployment, key string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	gate := g.gates[d.ID]
	gate.total--
	if gate.admitted[key]--; gate.admitted[key] <= 0 {
		delete(gate.admitted, key)
	}
	g.dispatch(d, gate)
	if gate.total == 0 && gate.waiting == 0 {
		delete(g.gates, d.ID) // nothing to remember: deployments come and go
	}
}

// dispatch gives free places to waiting requests, fairly. Called with g.mu
// held.
func (g *fairGates) dispatch(d registry.Deployment, gate *fairGate) {
	for gate.total < gate.window && gate.waiting > 0 {
		keys := make([]keyLoad, 0, len(gate.lines))
		for k := range gate.lines {
			keys = append(keys, keyLoad{key: k, admitted: gate.admitted[k], share: gate.shares[k], served: gate.served[k]})
		}
		k := keys[nextKey(keys)].key
		line := gate.lines[k]
		ch := line[0]
		if len(line) == 1 {
			delete(gate.lines, k)
			delete(gate.shares, k)
		} else {
			gate.lines[k] = line[1:]
		}
		gate.waiting--
		g.waiting.WithLabelValues(d.Name).Dec()
		gate.take(k)
		close(ch)
	}
}
