package activator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// relay writes one request's runner events to its client, as SSE or as one
// JSON body.
type relay struct {
	s       *Server
	c       echo.Context
	kind    wire.Kind
	id      string
	model   string
	depID   string // the deployment's key: its runners are known by it
	stream  bool
	usage   bool
	created int64
	key     registry.APIKey // whose limits the request is charged to
	prices  wire.Prices

	w        *waiter
	started  bool   // the runner admitted the job
	runner   string // which runner (the waiter's owner)
	sentText bool   // tokens were written to the client (streams only: a body is written at the end)
	gaveUp   bool   // stop waiting: remove the job from the queue (timeout, runner failures or loss)
	hungUp   bool   // the client went away before the relay finished
	shutDown bool   // the activator's shutdown ended the request: withdraw or stop its job
	sse      bool   // SSE headers are written: errors now go in-band
	phase    string // the cold-start phase last named in a comment
	// done is what the finished request used (nil until it finished);
	// failed says a runner answered with an error (it may bill the prompt).
	done   *wire.Usage
	failed bool
	// seqRunner's next event should be numbered nextSeq (see want); a
	// gap means events were lost. gapSince is when the current gap was
	// found, in gapRunner's events; resentAt when events were last asked
	// for again.
	seqRunner string
	nextSeq   uint32
	gapSince  time.Time
	gapRunner string
	resentAt  time.Time
	// ch are the choices (n), by index.
	ch []relayChoice
	// lp says the client asked for logprobs.
	lp bool
	// echo is a completion's prompt to write before its text (echo:
	// true).
	echo string
	// emb collects an embedding request's vectors (nil for completions).
	emb      *embedReply
	enc      chunkEncoder
	queuedAt time.Time
	ttft     time.Duration
}

func (rl *relay) run(ctx context.Context, w *waiter, deadline time.Time) error {
	rl.w = w
	rl.queuedAt = time.Now()
	rl.enc = newChunkEncoder(rl.kind, rl.id, rl.model, rl.created)
	queueTimeout := time.Until(deadline)
	wait := time.NewTimer(queueTimeout)
	defer wait.Stop()
	tick := time.NewTicker(keepaliveEvery)
	defer tick.Stop()
	grace := time.NewTimer(headerGrace)
	defer grace.Stop()
	// Once its SSE has begun, a stream waiting for a runner hears each
	// cold-start phase as it begins; nil (never ready) before that, for
	// bodies, and once a runner has the job.
	var phase <-chan struct{}
	// draining becomes nil once seen with the job generating: from then on
	// only the grace's end (stopping) ends it.
	draining := rl.s.draining

	for {
		select {
		case <-w.signal:
			done, err := rl.handle(w.take())
			if done || err != nil {
				return err
			}
			if rl.started && rl.runner != "" {
				wait.Stop()
				phase = nil
			}
		case <-grace.C:
			if rl.stream && !rl.sse {
				rl.beginSSE()
				rl.phaseComment(true)
				if rl.runner == "" {
					phase = rl.s.runners.changed(rl.depID)
				}
			}
		case <-phase:
			phase = nil
			if rl.runner == "" {
				phase = rl.s.runners.changed(rl.depID)
				rl.phaseComment(false)
			}
		case <-tick.C:
			if rl.runner != "" && !rl.s.runners.alive(rl.runner) {
				if rl.sentText {
					// Its output cannot be resumed elsewhere without
					// repeating text: end the stream with an error.
					rl.gaveUp = true
					rl.s.metrics.requests.WithLabelValues(rl.model, "runner_lost").Inc()
					return rl.fail(errRunnerLost())
				}
				// Nothing was sent yet: JetStream redelivers the job to
				// another runner; keep waiting (and keep the stream alive)
				// for its start event. A body's text buffered so far is
				// the lost runner's: the next runner starts over.
				rl.runner = ""
				rl.resetChoices()
				rl.gapSince = time.Time{} // the next runner starts over
				rl.w.disown()
				if rl.s.shuttingDown() {
					// No redelivery is worth waiting for now.
					return rl.shutdown(false)
				}
				if rl.sse {
					phase = rl.s.runners.changed(rl.depID)
				}
				// JetStream hands the job on within the ack wait, and
				// the next runner may need a queue timeout to take it.
				// Past that nothing will (its deliveries may be spent):
				// fail rather than hold the client forever.
				wait.Reset(queue.AckWait + queueTimeout)
			}
			if !rl.gapSince.IsZero() && !rl.resend(rl.gapRunner) {
				// Nothing more may come to ask again on (the last event
				// was acknowledged before the gap showed), so the tick
				// asks; the gap could not be filled.
				return rl.outputLost()
			}
			if rl.runner != "" {
				break // generating
			}
			if f, ok := rl.s.runners.failure(rl.depID); ok && f.count >= cannotStartAfter {
				// Holding the request longer only hides the problem.
				rl.gaveUp = true // not started: remove it from the queue
				rl.s.metrics.requests.WithLabelValues(rl.model, "cannot_start").Inc()
				return rl.fail(errStatus(http.StatusServiceUnavailable, "server_error", "deployment_unavailable",
					"deployment %s cannot start a runner: %s", rl.model, f.detail))
			}
			if rl.sse {
				rl.phaseComment(true)
			}
		case <-wait.C:
			switch {
			case !rl.started:
				rl.gaveUp = true
				rl.s.metrics.requests.WithLabelValues(rl.model, "timeout").Inc()
				why := ""
				if f, ok := rl.s.runners.failure(rl.depID); ok {
					// Say what held it up (the object store is down,
					// say), not only that it waited.
					why = "; its last runner failed to start: " + f.detail
				}
				return rl.fail(errStatus(http.StatusGatewayTimeout, "server_error", "queue_timeout",
					"request waited %s in the queue of %s without starting%s", time.Since(rl.queuedAt).Round(time.Millisecond), rl.model, why))
			case rl.runner == "":
				// Its runner was lost and no other took the job over.
				rl.gaveUp = true
				rl.s.metrics.requests.WithLabelValues(rl.model, "runner_lost").Inc()
				return rl.fail(errRunnerLost())
			}
		case <-draining:
			if rl.runner == "" {
				// Not started (or its runner was lost): end it now, the
				// client retries elsewhere rather than wait out the grace.
				return rl.shutdown(false)
			}
			draining = nil // generating: it gets the grace
		case <-rl.s.stopping:
			return rl.shutdown(rl.runner != "")
		case <-ctx.Done():
			rl.hungUp = true
			return ctx.Err()
		}
	}
}

// shutdown ends the request because the activator is shutting down;
// started says whether a runner was generating it.
func (rl *relay) shutdown(started bool) error {
	rl.shutDown = true
	rl.s.metrics.requests.WithLabelValues(rl.model, "shutting_down").Inc()
	return rl.fail(errShuttingDown(started))
}

// handle processes a batch of events and flushes once.
func (rl *relay) handle(events []reply) (done bool, err error) {
	res := rl.c.Response()
	for _, r := range events {
		if rl.w.superseded(r.runner) {
			// A second runner got the job (redelivered while the owner
			// was frozen, say), or a runner given up for dead woke up:
			// only the owner's answer counts, and the other hears
			// "superseded" at its next ping.
			continue
		}
		ev, derr := wire.DecodeEvent(r.data)
		if derr != nil {
			rl.s.log.Error("bad event from runner", "request", rl.id, "err", derr)
			continue
		}
		want := rl.want(r.runner)
		switch {
		case ev.Seq < want:
			continue // a repeat: of a last event until acknowledged, or resent
		case ev.Seq > want:
			// Events were lost, across a NATS reconnect. The runner
			// keeps what it sent: ask for it again from the first one
			// missing, and drop what came after, which it resends too.
			if rl.gapSince.IsZero() {
				rl.s.log.Warn("events from runner lost; asking for them again", "request", rl.id, "runner", r.runner, "want", want, "got", ev.Seq)
			}
			if rl.resend(r.runner) {
				continue
			}
			// It cannot: the answer would miss text, or never end.
			return true, rl.outputLost()
		}
		rl.seqRunner, rl.nextSeq, rl.gapSince = r.runner, ev.Seq+1, time.Time{}
		switch ev.Type {
		case wire.EventStart:
			if rl.sentText {
				// A redelivered job restarting after its first runner
				// died: its text would repeat.
				rl.gaveUp = true
				return true, rl.fail(errRunnerLost())
			}
			// Nothing reached the client: whatever an earlier runner
			// produced for the body is dropped, this one starts over.
			rl.resetChoices()
			rl.emb.reset()
			rl.runner = ev.Runner
			if r.runner != "" {
				rl.runner = r.runner
			}
			rl.w.own(rl.runner)
			rl.start()
		case wire.EventDelta:
			if rl.ttft == 0 {
				rl.ttft = time.Since(rl.queuedAt)
				rl.s.metrics.ttft.WithLabelValues(rl.model).Observe(rl.ttft.Seconds())
			}
			if ev.Index < 0 || ev.Index >= len(rl.ch) {
				rl.s.log.Error("event of a choice the request has not", "request", rl.id, "index", ev.Index, "n", len(rl.ch))
				continue
			}
			ch := &rl.ch[ev.Index]
			if rl.stream {
				rl.writeEcho(ev.Index)
				if len(ev.Calls) > 0 {
					// Text before the calls, then the calls' pieces.
					if ev.Text != "" {
						res.Write(rl.enc.delta(ev.Index, ev.Text))
					}
					res.Write(rl.enc.callDeltaChunks(ev.Index, ev.Calls))
					ch.streamed = addCallDeltas(ch.streamed, ev.Calls)
				} else if rl.lp && len(ev.Logprobs) > 0 {
					res.Write(rl.enc.deltaWith(ev.Index, ev.Text, logprobsJSON(rl.kind, ev.Logprobs, &ch.lpOffset)))
				} else {
					res.Write(rl.enc.delta(ev.Index, ev.Text))
				}
				rl.sentText = true
			} else {
				ch.text = append(ch.text, ev.Text...)
				if rl.lp {
					ch.lps = append(ch.lps, ev.Logprobs...)
				}
			}
		case wire.EventEmbedding:
			rl.emb.add(ev.Embedding)
		case wire.EventDone:
			u := wire.Usage{}
			if ev.Usage != nil {
				u = *ev.Usage
			}
			rl.s.limits.charge(rl.key, u, rl.prices)
			rl.s.limits.chargeTenant(rl.key, u, rl.prices)
			rl.done = &u
			rl.s.metrics.finished(rl.model, "ok", time.Since(rl.queuedAt), rl.ttft, u)
			if rl.emb != nil {
				body, err := rl.emb.body(rl.model, u)
				if err != nil {
					rl.gaveUp = true
					return true, rl.fail(errStatus(http.StatusBadGateway, "server_error", "output_lost", "%v", err))
				}
				return true, rl.c.JSONBlob(http.StatusOK, body)
			}
			ends := ev.Choices
			if len(ends) == 0 {
				ends = []wire.Choice{{FinishReason: ev.FinishReason, ToolCalls: ev.ToolCalls}}
			}
			if rl.stream {
				for _, c := range ends {
					if c.Index < 0 || c.Index >= len(rl.ch) {
						continue
					}
					if len(c.ToolCalls) > 0 {
						// What the calls' pieces streamed before did not say.
						res.Write(rl.enc.toolCallRest(c.Index, c.ToolCalls, rl.ch[c.Index].streamed))
					}
					rl.writeEcho(c.Index) // a completion of no text
					res.Write(rl.enc.finish(c.Index, c.FinishReason))
				}
				if rl.usage {
					res.Write(rl.enc.usage(u))
				}
				res.Write([]byte("data: [DONE]\n\n"))
				res.Flush()
				return true, nil
			}
			out := make([]choiceOut, len(rl.ch))
			for _, c := range ends {
				if c.Index >= 0 && c.Index < len(out) {
					out[c.Index].reason, out[c.Index].toolCalls = c.FinishReason, c.ToolCalls
				}
			}
			for i := range out {
				out[i].text = rl.echo + string(rl.ch[i].text)
				out[i].logprobs = choiceLogprobs(rl.kind, rl.lp, rl.ch[i].lps)
			}
			return true, rl.c.JSONBlob(http.StatusOK, rl.enc.bodyOf(out, u))
		case wire.EventError:
			rl.failed = true
			rl.s.metrics.requests.WithLabelValues(rl.model, "error").Inc()
			we := ev.Error
			if we == nil {
				we = &wire.Error{Status: 500, Message: "runner failed"}
			}
			return true, rl.fail(fromWire(we))
		}
	}
	if rl.sse {
		res.Flush()
	}
	return false, nil
}

// How a gap in a runner's events is filled: a resend request at most every
// resendEvery while events past the gap keep coming (each would ask
// again), and at every keepalive tick while none do, waiting resendWait
// for the answer, for at most resendFor.
const (
	resendEvery = 500 * time.Millisecond
	resendWait  = time.Second
	resendFor   = 15 * time.Second
)

// want is the number runner's next event for the job should have: each
// runner numbers its events for a job from 0.
func (rl *relay) want(runner string) uint32 {
	if runner == rl.seqRunner {
		return rl.nextSeq
	}
	return 0
}

// resend asks runner to send its events again from the first one missing;
// false when the gap cannot be filled: the runner no longer has the
// events, does not take resend requests, or the gap has lasted resendFor.
func (rl *relay) resend(runner string) bool {
	now := time.Now()
	from := rl.want(runner)
	if rl.gapSince.IsZero() {
		rl.gapSince, rl.gapRunner = now, runner
	} else if now.Sub(rl.gapSince) > resendFor {
		rl.s.log.Warn("events from runner lost and not resent in time", "request", rl.id, "runner", runner, "want", from, "waited", now.Sub(rl.gapSince))
		return false
	}
	if now.Sub(rl.resentAt) < resendEvery {
		return true // asked already; its events are on the way
	}
	rl.resentAt = now
	rl.s.metrics.resends.WithLabelValues(rl.model).Inc()
	m, err := rl.s.nc.Request(wire.ResendSubject(runner), wire.AppendResend(nil, rl.id, from), resendWait)
	switch {
	case err == nil:
		return string(m.Data) == wire.ResendOK
	case errors.Is(err, nats.ErrNoResponders):
		// The runner's events reach this activator, so its
		// subscriptions are in place: it takes no resend requests.
		return false
	default:
		return true // no answer yet (NATS is reconnecting): ask again
	}
}

// outputLost ends a request whose runner's events were lost for good, and
// stops its job.
func (rl *relay) outputLost() error {
	rl.gaveUp = true
	rl.s.metrics.requests.WithLabelValues(rl.model, "output_lost").Inc()
	return rl.fail(errOutputLost())
}

// start handles the runner admitting the job.
func (rl *relay) start() {
	if rl.started {
		return
	}
	rl.started = true
	rl.s.metrics.waiting.WithLabelValues(rl.model).Dec()
	rl.s.metrics.running.WithLabelValues(rl.model).Inc()
	rl.s.metrics.queue.WithLabelValues(rl.model).Observe(time.Since(rl.queuedAt).Seconds())
	if rl.stream {
		if !rl.sse {
			rl.beginSSE()
		}
		for i := range rl.ch {
			rl.c.Response().Write(rl.enc.first(i))
		}
	}
}

func (rl *relay) beginSSE() {
	h := rl.c.Response().Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Request-Id", rl.id)
	rl.c.Response().WriteHeader(http.StatusOK)
	rl.c.Response().Flush()
	rl.sse = true
}

// phaseComment names what the request waits for in an SSE comment: always
// for a keepalive, else only when it differs from the last one written.
func (rl *relay) phaseComment(keepalive bool) {
	p := rl.s.runners.coldStartPhase(rl.depID)
	if q := rl.s.runnerQuotaPhase(rl.c.Request().Context(), rl.key, rl.depID); q != "" {
		p = q
	}
	if !keepalive && p == rl.phase {
		return
	}
	rl.phase = p
	rl.comment(p)
}

// relayChoice is what the relay holds of one choice.
type relayChoice struct {
	text []byte // a body's text
	// lps are a body's logprobs, and lpOffset the text offset of a
	// completion stream's next token.
	lps      []wire.TokenLogprob
	lpOffset int
	echoed   bool // a stream wrote the prompt before its text (echo)
	// streamed are the tool calls as their pieces streamed so far.
	streamed []wire.ToolCall
}

// resetChoices drops what an earlier runner produced: the next starts
// over.
func (rl *relay) resetChoices() {
	for i := range rl.ch {
		c := &rl.ch[i]
		c.text, c.lps, c.lpOffset, c.streamed = c.text[:0], c.lps[:0], 0, nil
	}
}

// choiceLogprobs is a choice's logprobs object in a body (nil: null).
func choiceLogprobs(kind wire.Kind, asked bool, lps []wire.TokenLogprob) any {
	switch {
	case !asked:
		return nil
	case kind == wire.KindChat:
		return chatLogprobsObject(lps)
	}
	obj, _ := legacyLogprobsObject(lps, 0)
	return obj
}

// writeEcho writes a completion stream's prompt (echo: true) before
// choice i's first text.
func (rl *relay) writeEcho(i int) {
	if rl.echo != "" && !rl.ch[i].echoed {
		rl.c.Response().Write(rl.enc.delta(i, rl.echo))
		rl.ch[i].echoed = true
	}
}

// comment writes an SSE comment line, which clients ignore and people read.

func (rl *relay) comment(text string) {
	res := rl.c.Response()
	res.Write([]byte(": " + text + "\n\n"))
	res.Flush()
}

// fail reports an error: as an HTTP error before streaming began, or as an
// SSE error event followed by [DONE] after.
func (rl *relay) fail(e *apiError) error {
	if !rl.sse {
		return e
	}
	body, _ := json.Marshal(map[string]*apiError{"error": e})
	res := rl.c.Response()
	res.Write([]byte("event: error\ndata: "))
	res.Write(body)
	res.Write([]byte("\n\ndata: [DONE]\n\n"))
	res.Flush()
	return nil
}

// errOutputLost is what a client hears when part of its answer was lost on
// the way from the runner.
func errOutputLost() *apiError {
	return errStatus(http.StatusBadGateway, "server_error", "output_lost",
		"part of the answer was lost between the runner and the activator (a NATS reconnect); retry the request")
}

// errRunnerLost is what a client hears when its runner died after sending
// part of the answer.
func errRunnerLost() *apiError {
	return errStatus(http.StatusBadGateway, "server_error", "runner_lost",
		"the runner serving this request stopped mid-generation; retry the request")
}

// retryAfter formats a Retry-After value.
func retryAfter(seconds int) string { return strconv.Itoa(max(1, seconds)) }
