package activator

import (
	"fmt"
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
	sub, err := nc.Subscribe(r.prefix+"*", r.onMsg)
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
	id := strings.TrimPrefix(m.Subject, r.prefix)
	r.mu.Lock()
	w := r.waiters[id]
	r.mu.Unlock()
	if m.Reply != "" && m.Header.Get(wire.PingHeader) != "" {
		// A runner asks whether this request still has a client.
		answer := wire.PingAlive
		if w == nil {
			answer = wire.PingGone
		}
		m.Respond([]byte(answer))
		return
	}
	if w != nil {
		w.push(m.Data)
	}
}

// waiter buffers one request's events. The handler drains everything that
// arrived since it last looked in one go, so a fast runner's per-token
// events become one write and one flush to the client.
type waiter struct {
	mu     sync.Mutex
	events [][]byte
	spare  [][]byte
	signal chan struct{}
}

func (w *waiter) push(data []byte) {
	w.mu.Lock()
	w.events = append(w.events, data)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// take returns the buffered events. The slice is reused: it is valid until
// the next call.
func (w *waiter) take() [][]byte {
	w.mu.Lock()
	evs := w.events
	w.events = w.spare[:0]
	w.mu.Unlock()
	w.spare = evs
	return evs
}
