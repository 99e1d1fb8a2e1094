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
// client, its completions through their choiceSinks. The engine calls
// their Deliver and Finish from its decode loops; nats.Conn.Publish only
// appends to the connection's buffer, so a loop never waits on the
// network.
type replySink struct {
	runner  string
	nc      *nats.Conn
	subject string
	seq     uint32 // the next event's sequence number

	first  time.Time
	reason string
	usage  wire.Usage
	err    error
	done   chan struct{}

	// log holds every event sent, in order (event i starts at offs[i]), so
	// that events lost on the way can be sent again (resend, on a NATS
	// goroutine). mu guards it and seq, and orders the publishing of
	// events: the completions of an n > 1 job may decode in different
	// contexts, on different goroutines. Events are sent at most every
	// coalesce interval per completion, so logging costs no per-token
	// work.
	mu   sync.Mutex
	log  []byte
	offs []int

	// async jobs collect their text and send it once, after Finish.
	async bool

	choices []*choiceSink
	// fmu guards left, the completions not finished yet.
	fmu  sync.Mutex
	left int
}

// choiceSink is one completion of a job: the engine's Sink for it.
type choiceSink struct {
	r      *replySink
	index  int
	buf    []byte // a delta event being built: header, then text not yet sent
	sentAt time.Time
	first  time.Time

	reason string
	usage  wire.Usage
	err    error
	text   []byte // an async job's
	// toolCalls are the completion's tool calls (toolSink), sent with
	// the last event.
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
func (s *choiceSink) Logprob(lp wire.TokenLogprob) {
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

// setToolCalls gives the completion tool calls; Finish("tool_calls")
// follows.
func (s *choiceSink) setToolCalls(calls []wire.ToolCall) { s.toolCalls = calls }

// callDeltas sends pieces of the tool calls being written at once, after
// the text delivered before them (an async job's calls come whole, with
// its result).
func (s *choiceSink) callDeltas(d []wire.ToolCallDelta) {
	if s.r.async {
		return
	}
	now := time.Now()
	s.flush(now)
	if data, err := wire.AppendEvent(nil, &wire.Event{Type: wire.EventDelta, Index: s.index, Calls: d}); err == nil {
		s.r.publish(data)
		s.sentAt = now
	}
	if s.first.IsZero() {
		s.first = now
	}
}

// newReplySink makes the sink of a job of n completions (at least 1).
func newReplySink(nc *nats.Conn, subject string, n int) *replySink {
	r := &replySink{nc: nc, subject: subject, done: make(chan struct{}), left: max(1, n)}
	for i := range r.left {
		r.choices = append(r.choices, &choiceSink{r: r, index: i, buf: make([]byte, 0, 256)})
	}
	return r
}

// sinks are the job's completions' sinks, as the engine takes them.
func (r *replySink) sinks() []*choiceSink { return r.choices }

// Start tells the activator the job was admitted; it always precedes the
// first delta. The job's other completions start with the first.
func (s *choiceSink) Start(promptTokens int) {
	if s.index == 0 {
		s.r.send(&wire.Event{Type: wire.EventStart, Runner: s.r.runner, Usage: &wire.Usage{PromptTokens: promptTokens}})
	}
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
func (s *choiceSink) Deliver(text []byte) {
	now := time.Now()
	s.released += len(text)
	if s.r.async {
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

func (s *choiceSink) appendText(text []byte) {
	if len(s.buf) == 0 {
		s.buf = wire.AppendDelta(s.buf, 0, nil) // numbered when sent
	}
	s.buf = append(s.buf, text...)
}

func (s *choiceSink) flush(now time.Time) {
	if s.r.async {
		return
	}
	if n, after := covered(s.lps, s.lpAt, s.released); n > 0 || s.index > 0 && len(s.buf) > wire.EventHeaderLen {
		// A delta with logprobs, or of a completion but the first, is
		// JSON (wire.AppendEvent); its text is what buf holds past the
		// header. This costs an encode per event for the jobs that
		// asked, at most one per coalesce interval.
		s.appendText(nil)
		ev := &wire.Event{Type: wire.EventDelta, Text: string(s.buf[wire.EventHeaderLen:]), Logprobs: s.lps[:n], Index: s.index}
		if data, err := wire.AppendEvent(nil, ev); err == nil {
			s.r.publish(data)
			s.sentAt = now
		}
		s.lps = append(s.lps[:0], s.lps[n:]...)
		s.lpAt = after
		s.buf = s.buf[:0]
		return
	}
	if len(s.buf) > wire.EventHeaderLen {
		s.r.publish(s.buf)
		s.sentAt = now
	}
	s.buf = s.buf[:0]
}

// publish numbers an encoded event as the sink's next, logs it and sends
// it.
func (s *replySink) publish(event []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(event)
	s.nc.Publish(s.subject, event)
}

// record numbers an encoded event as the sink's next and logs it.
func (s *replySink) record(event []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recordLocked(event)
}

func (s *replySink) recordLocked(event []byte) {
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

// Finish ends the completion; the last of the job's to finish ends the
// job.
func (s *choiceSink) Finish(reason string, u wire.Usage, err error) {
	s.flush(time.Now())
	s.reason, s.usage, s.err = reason, u, err
	r := s.r
	r.fmu.Lock()
	r.left--
	last := r.left == 0
	r.fmu.Unlock()
	if last {
		r.finish()
	}
}

// finish ends the job once every completion has: the job's outcome is
// the first completion's, an error or a cancellation if any had one, and
// its usage counts the prompt once.
func (s *replySink) finish() {
	c0 := s.choices[0]
	s.reason, s.usage, s.err = c0.reason, wire.Usage{PromptTokens: c0.usage.PromptTokens}, nil
	for _, c := range s.choices {
		s.usage.CompletionTokens += c.usage.CompletionTokens
		if c.err != nil && s.err == nil {
			s.err = c.err
		}
		if c.reason == "cancelled" {
			s.reason = "cancelled"
		}
		if !c.first.IsZero() && (s.first.IsZero() || c.first.Before(s.first)) {
			s.first = c.first
		}
	}
	var last *wire.Event
	switch {
	case s.async:
		// The runner publishes final() through JetStream, off the decode
		// loop.
	case s.err != nil:
		last = &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: s.err.Error()}}
	case s.reason != "cancelled":
		u := s.usage
		last = &wire.Event{Type: wire.EventDone, Usage: &u}
		if len(s.choices) == 1 {
			last.FinishReason, last.ToolCalls = c0.reason, c0.toolCalls
		} else {
			last.Choices = s.choiceEnds(false)
		}
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

// choiceEnds are the ends of a job's completions, with their text and
// logprobs for an async job.
func (s *replySink) choiceEnds(whole bool) []wire.Choice {
	out := make([]wire.Choice, len(s.choices))
	for i, c := range s.choices {
		out[i] = wire.Choice{Index: i, FinishReason: c.reason, ToolCalls: c.toolCalls, CompletionTokens: c.usage.CompletionTokens}
		if whole {
			n, _ := covered(c.lps, 0, len(c.text))
			out[i].Text, out[i].Logprobs = string(c.text), c.lps[:n]
		}
	}
	return out
}

// final is an async job's last event: the whole text, or the error.
func (s *replySink) final() *wire.Event {
	if s.err != nil {
		return &wire.Event{Type: wire.EventError, Error: &wire.Error{Status: 500, Code: "internal_error", Message: s.err.Error()}}
	}
	u := s.usage
	if len(s.choices) > 1 {
		return &wire.Event{Type: wire.EventDone, Usage: &u, Choices: s.choiceEnds(true)}
	}
	c := s.choices[0]
	n, _ := covered(c.lps, 0, len(c.text))
	return &wire.Event{Type: wire.EventDone, FinishReason: s.reason, Usage: &u, Text: string(c.text), ToolCalls: c.toolCalls, Logprobs: c.lps[:n]}
}

func (s *replySink) send(ev *wire.Event) {
	if data, err := wire.AppendEvent(nil, ev); err == nil {
		s.publish(data)
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
