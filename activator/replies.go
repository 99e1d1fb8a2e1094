package activator

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/wire"
)

// replies routes runner events to the HTTP handlers waiting for them. One
// wildcard subscription per activator serves every request (a subscription
// per request would cost a round of protocol messages each), and replies
// reach whichever activator holds the client because the job names this
// activator's subject.
type replies struct {
	prefix string
	sub    *nats.Subscription

	mu      sync.Mutex
	waiters map[string]*waiter
}

func newReplies(nc *nats.Conn, activatorID string) (*replies, error) {
	r := &replies{prefix: "_INFER.reply." + activatorID + ".", waiters: map[string]*waiter{}}
	sub, err := nc.Subscribe(r.prefix+">", r.onMsg)
	if err != nil {
		return nil, fmt.Errorf("subscribing to replies: %w", err)
	}
	// Events must never be dropped as a slow consumer: a lost "done" would
	// hang a client. Memory is bounded by the requests in flight.
	sub.SetPendingLimits(-1, -1)
	r.sub = sub
	return r, nil
}

func (r *replies) close() { r.sub.Unsubscribe() }

// register returns the waiter for a request and the subject runners should
// reply to. Call it before the job is queued so no event can be missed.
// Each runner appends its ID as one more token (wire.RunnerReplySubject),
// so every event says which runner sent it.
func (r *replies) register(id string) (*waiter, string) {
	w := &waiter{signal: make(chan struct{}, 1)}
	r.mu.Lock()
	r.waiters[id] = w
	r.mu.Unlock()
	return w, r.prefix + id
}

func (r *replies) unregister(id string) {
	r.mu.Lock()
	delete(r.waiters, id)
	r.mu.Unlock()
}

func (r *replies) onMsg(m *nats.Msg) {
	id, runner, _ := strings.Cut(strings.TrimPrefix(m.Subject, r.prefix), ".")
	r.mu.Lock()
	w := r.waiters[id]
	r.mu.Unlock()
	if m.Reply != "" && m.Header.Get(wire.PingHeader) != "" {
		// A runner asks whether this request still has a client.
		answer := wire.PingGone
		if w != nil {
			answer = w.answer(runner)
		}
		m.Respond([]byte(answer))
		return
	}
	if w != nil {
		w.push(runner, m.Data)
	}
	if m.Reply != "" {
		// A job's last event, which its runner repeats until it hears
		// this; the relay drops repeats. With no waiter the request is
		// over (answered, or its client gone) and nobody needs it.
		m.Respond(nil)
	}
}

// reply is one event and the runner that sent it.
type reply struct {
	runner string
	data   []byte
}

// waiter buffers one request's events. The handler drains everything that
// arrived since it last looked in one go, so a fast runner's per-token
// events become one write and one flush to the client.
type waiter struct {
	mu     sync.Mutex
	events []reply
	spare  []reply
	signal chan struct{}
	// owner is the runner whose start event the handler accepted. A job
	// can reach a second runner (JetStream redelivers it when the first
	// stops reporting progress, which a frozen runner does too); only the
	// owner's events count, and the others are told to stop. lost are
	// former owners given up for dead: should one wake up, it is told to
	// stop too.
	owner string
	lost  []string
}

func (w *waiter) push(runner string, data []byte) {
	w.mu.Lock()
	w.events = append(w.events, reply{runner, data})
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// own makes runner the job's owner.
func (w *waiter) own(runner string) {
	w.mu.Lock()
	w.owner = runner
	w.mu.Unlock()
}

// disown gives the owner up for dead: the job waits for another runner.
func (w *waiter) disown() {
	w.mu.Lock()
	w.lost = append(w.lost, w.owner)
	w.owner = ""
	w.mu.Unlock()
}

// superseded reports whether runner's events no longer count: another
// runner owns the job, or runner was given up for dead.
func (w *waiter) superseded(runner string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if runner == "" {
		return false // a runner that does not say who it is
	}
	return (w.owner != "" && runner != w.owner) || slices.Contains(w.lost, runner)
}

// answer is the reply to a runner's ping.
func (w *waiter) answer(runner string) string {
	if w.superseded(runner) {
		return wire.PingSuperseded
	}
	return wire.PingAlive
}

// take returns the buffered events. The slice is reused: it is valid until
// the next call.
func (w *waiter) take() []reply {
	w.mu.Lock()
	evs := w.events
	w.events = w.spare[:0]
	w.mu.Unlock()
	w.spare = evs
	return evs
}
