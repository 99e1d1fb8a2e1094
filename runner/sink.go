package runner

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/nats-io/nats.go"
)

// sinkEntry is a sync job's reply sink and, once the job ended, until when
// it can still resend.
type sinkEntry struct {
	sink  *replySink
	until time.Time
}

// resendKeep is how long a sync job's events can still be resent after
// the job ended: its last event is acknowledged on arrival, and the
// activator may find the gap before it only then. What it keeps is the
// runner's output of the last resendKeep, bounded by its token rate (a
// few MB at ~10,000 tokens/s).
const resendKeep = 30 * time.Second

func (r *Runner) keepSink(id string, s *replySink) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sinks[id] = sinkEntry{sink: s}
}

// dropSink starts the ended job's resendKeep (unless the job runs again
// here, redelivered, with a sink of its own), and drops the sinks whose
// time is up (at most once per resendKeep, so each job pays O(1)).
func (r *Runner) dropSink(id string, s *replySink) {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.sinks[id]; ok && e.sink == s {
		e.until = now.Add(resendKeep)
		r.sinks[id] = e
	}
	if now.Sub(r.sinksSwept) < resendKeep {
		return
	}
	r.sinksSwept = now
	for id, e := range r.sinks {
		if !e.until.IsZero() && now.After(e.until) {
			delete(r.sinks, id)
		}
	}
}

// onResend publishes a sync job's events again from the sequence number
// asked for (see wire.ResendSubject).
func (r *Runner) onResend(m *nats.Msg) {
	id, from, err := wire.ParseResend(m.Data)
	if err != nil {
		r.log.Warn("bad resend request", "err", err)
		m.Respond([]byte(wire.ResendGone))
		return
	}
	r.mu.Lock()
	e, ok := r.sinks[id]
	r.mu.Unlock()
	if !ok || (!e.until.IsZero() && time.Now().After(e.until)) || !e.sink.resend(from) {
		m.Respond([]byte(wire.ResendGone))
		return
	}
	r.log.Info("resent events lost on the way", "request", id, "from", from)
	m.Respond([]byte(wire.ResendOK))
}

// replySink streams one job's output to the activator that holds its
// client. The engine calls Deliver and Finish from its decode loop;
// nats.Conn.Publish only appends to the connection's buffer, so the loop
// never waits on the network.
type replySink struct {
	runner  string
	nc      *nats.Conn
	subject string
	buf     []byte // a delta event being built: header, then text not yet sent
	sentAt  time.Time
	seq     uint32 // the next event's sequence number

	first  time.Time
	reason string
	usage  wire.Usage
	err    error
	done   chan struct{}

	// log holds every event sent, in order (event i starts at offs[i]), so
	// that events lost on the way can be sent again (resend, on a NATS
	// goroutine). mu guards it and seq. Events are sent at most every
	// coalesce interval, so logging costs no per-token work.
	mu   sync.Mutex
	log  []byte
	offs []int

	// async jobs collect their text and send it once, after Finish.
	async bool
	text  []byte

	// toolCalls are the reply's tool calls (toolSink), sent with the last
	// event.
	toolCalls []wire.ToolCall
	// lps are the logprobs of tokens sampled and not sent yet, for a job
	// that asked (an async job's: all of them). A token's logprob is sent
	// once its text begins to be (see covered): the stop buffer holds
	// back text that may begin a stop sequence, and the tokens of a
	// matched one, whose text never comes, are dropped with it.
	// released counts the bytes of text delivered, lpAt the text offset
	// of lps[0].
	lps      []wire.TokenLogprob
	released int
	lpAt     int
}

// Logprob takes a sampled token's logprob; it travels with the delta
// event that carries its text.
func (s *replySink) Logprob(lp wire.TokenLogprob) {
	s.lps = append(s.lps, lp)
}

// covered is how many of lps have had their text begin to be delivered,
// and the text offset after them.
func covered(lps []wire.TokenLogprob, at, released int) (n, after int) {
	for n < len(lps) && (at < released || len(lps[n].Token) == 0 && at <= released) {
		at += len(lps[n].Token)
		n++
	}
	return n, at
}

// setToolCalls gives the reply tool calls; Finish("tool_calls") follows.
func (s *replySink) setToolCalls(calls []wire.ToolCall) { s.toolCalls = calls }

func newReplySink(nc *nats.Conn, subject string) *replySink {
	return &replySink{nc: nc, subject: subject, buf: make([]byte, 0, 256), done: make(chan struct{})}
}

// Start tells the activator the job was admitted; it always precedes the
// first delta.
func (s *replySink) Start(promptTokens int) {
	s.send(&wire.Event{Type: wire.EventStart, Runner: s.runner, Usage: &wire.Usage{PromptTokens: promptTokens}})
}

// coalesce is the longest a token waits to be sent with the ones after it.
// A fast model makes a token every ~0.15 ms; one message and one client
// flush per token would then cost more than decoding it. 2 ms is far below
// what a reader notices and still streams smoothly.
const coalesce = 2 * time.Millisecond

// Deliver sends the first token at once (time to first token is what
// clients wait on) and later ones at most every coalesce interval. Text
// held back is sent by the next Deliver or by Finish, so it waits at most
// one decode step.
func (s *replySink) Deliver(text []byte) {
	now := time.Now()
	s.released += len(text)
	if s.async {
		if s.first.IsZero() {
			s.first = now
		}
		s.text = append(s.text, text...)
		return
	}
	s.appendText(text)
	if s.first.IsZero() {
		s.first = now
	} else if now.Sub(s.sentAt) < coalesce {
		return
	}
	s.flush(now)
}

func (s *replySink) appendText(text []byte) {
	if len(s.buf) == 0 {
		s.buf = wire.AppendDelta(s.buf, 0, nil) // numbered when sent
	}
	s.buf = append(s.buf, text...)
}

func (s *replySink) flush(now time.Time) {
	if n, after := covered(s.lps, s.lpAt, s.released); n > 0 && !s.async {
		// A delta with logprobs is JSON (wire.AppendEvent); its text is
		// what buf holds past the header. This costs an encode per event
		// for the jobs that asked, at most one per coalesce interval.
		s.appendText(nil)
		ev := &wire.Event{Type: wire.EventDelta, Text: string(s.buf[wire.EventHeaderLen:]), Logprobs: s.lps[:n]}
		if data, err := s.encode(ev); err == nil {
			s.nc.Publish(s.subject, data)
			s.sentAt = now
		}
		s.lps = append(s.lps[:0], s.lps[n:]...)
		s.lpAt = after
		s.buf = s.buf[:0]
		return
	}
	if len(s.buf) > wire.EventHeaderLen {
		s.record(s.buf)
		s.nc.Publish(s.subject, s.buf)
		s.sentAt = now
	}
	s.buf = s.buf[:0]
}

// record numbers an encoded event as the sink's next and logs it.
func (s *replySink) record(event []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wire.SetSeq(event, s.seq)
	s.seq++
	s.offs = append(s.offs, len(s.log))
	s.log = append(s.log, event...)
}

// resend publishes the events from sequence number from on again; false
// if from is past the last event sent. A last event is published too, as
// a plain message: its first copy was acknowledged or is still repeated.
func (s *replySink) resend(from uint32) bool {
	// The log only grows, and appending never writes over bytes already
	// in it: what the slices hold now stays valid without the lock, which
	// the decode loop needs for its next event.
	s.mu.Lock()
	log, offs := s.log, s.offs
	s.mu.Unlock()
	if int64(from) > int64(len(offs)) {
		return false
	}
	for i := int(from); i < len(offs); i++ {
		end := len(log)
		if i+1 < len(offs) {
			end = offs[i+1]
		}
		s.nc.Publish(s.subject, log[offs[i]:end])
	}
	return true
}

func (s *replySink) Finish(reason string, u wire.Usage, err error) {
	s.flush(time.Now())
	s.reason, s.usage, s.err = reason, u, err
	var last *wire.Event
	switch {
	case s.async:
		// The runner publishes final() through JetStream, off the decode
		// loop.
	case err != nil:
		last = &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}}
	case reason != "cancelled":
		last = &wire.Event{Type: wire.EventDone, FinishReason: reason, Usage: &u, ToolCalls: s.toolCalls}
	}
	if last == nil {
		close(s.done)
		return
	}
	// Off the decode loop: it waits for the activator.
	go func() {
		s.sendLast(last)
		close(s.done)
	}()
}

// final is an async job's last event: the whole text, or the error.
func (s *replySink) final() *wire.Event {
	if s.err != nil {
		return &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: s.err.Error()}}
	}
	u := s.usage
	n, _ := covered(s.lps, 0, len(s.text))
	return &wire.Event{Type: wire.EventDone, FinishReason: s.reason, Usage: &u, Text: string(s.text), ToolCalls: s.toolCalls, Logprobs: s.lps[:n]}
}

func (s *replySink) send(ev *wire.Event) {
	if data, err := s.encode(ev); err == nil {
		s.nc.Publish(s.subject, data)
	}
}

// encode encodes ev as the sink's next event, numbered and logged.
func (s *replySink) encode(ev *wire.Event) ([]byte, error) {
	data, err := wire.AppendEvent(nil, ev)
	if err != nil {
		return nil, err
	}
	s.record(data)
	return data, nil
}

// How a job's last event is repeated until the activator acknowledges it.
const (
	lastAckWait = 2 * time.Second
	lastEvery   = 250 * time.Millisecond
	// lastFor bounds the repeats through a NATS outage.
	lastFor = time.Minute
	// lastNoResponders is how many "no responders" in a row mean that the
	// activator is gone: for a moment after a reconnect it may not have
	// subscribed again yet.
	lastNoResponders = 8
)

// sendLast sends a job's last event (done or error) and repeats it until
// the activator acknowledges it. Deltas lost across a NATS reconnect show
// as a gap in the sequence numbers once a later event arrives; a lost last
// event would leave the client waiting with nothing to arrive after it.
// The activator drops repeats by their sequence number.
func (s *replySink) sendLast(ev *wire.Event) {
	data, err := s.encode(ev)
	if err != nil {
		return
	}
	deadline := time.Now().Add(lastFor)
	for noResponders := 0; ; {
		_, err := s.nc.Request(s.subject, data, lastAckWait)
		if err == nil {
			return
		}
		if errors.Is(err, nats.ErrNoResponders) {
			if noResponders++; noResponders >= lastNoResponders {
				return
			}
			time.Sleep(lastEvery) // it may be subscribing again
		} else {
			noResponders = 0
		}
		// Through an outage, one copy waits in the reconnect buffer.
		if !queue.WaitConnected(context.Background(), s.nc, deadline) {
			return
		}
	}
}
