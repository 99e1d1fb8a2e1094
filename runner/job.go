package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// handle runs one job from the queue to its acknowledgement.
func (r *Runner) handle(ctx context.Context, msg jetstream.Msg) {
	var job wire.Job
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		r.log.Error("dropping undecodable job", "err", err)
		msg.Term()
		return
	}
	enqueued := time.Now()
	delivered := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		enqueued, delivered = md.Timestamp, md.NumDelivered
	}
	log := r.log.With("request", job.ID)
	if r.takeCancelled(job.ID, time.Now()) {
		log.Info("skipping job cancelled while queued")
		msg.Ack()
		return
	}
	if !job.Deadline.IsZero() && time.Now().After(job.Deadline) {
		// The activator has answered 504 already; nobody waits.
		log.Info("skipping job past its queue deadline")
		if job.Async {
			// Nobody waits, but the job's record does.
			werr := &wire.Error{Status: 504, Code: "queue_timeout",
				Message: fmt.Sprintf("the job waited in the queue of %s past its deadline without starting", job.Deployment)}
			if delivered > 1 {
				// It did start: the runners it reached stopped first.
				werr = &wire.Error{Status: 502, Code: "runner_lost", Message: fmt.Sprintf(
					"the job was handed to a runner of %s %d times and none finished it before its deadline; submit it again", job.Deployment, delivered-1)}
			}
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		return
	}

	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.begin(job.ID, cancel)
	defer r.end(job.ID)

	replyTo := job.ReplyTo
	if !job.Async {
		replyTo = wire.RunnerReplySubject(job.ReplyTo, r.cfg.ID)
	}
	if delivered > 1 && !job.Async {
		// Another runner had it. If that one was only frozen and is
		// back, or the client is gone, the job is not ours to run. (No
		// responders is no proof here: right after a NATS reconnect the
		// activator may not have resubscribed yet. watchClient decides.)
		if answer := r.ping(ctx, replyTo); answer == wire.PingSuperseded || answer == wire.PingGone {
			log.Info("skipping redelivered job", "answer", answer)
			if answer == wire.PingGone {
				msg.Ack()
			}
			return
		}
	}
	sink := newReplySink(r.nc, replyTo, job.N)
	sink.runner = r.cfg.ID
	sink.async = job.Async
	if !job.Async {
		r.keepSink(job.ID, sink)
		defer r.dropSink(job.ID, sink)
	}
	adm, holdRev := r.admitJob(ctx, job.ID, delivered, log)
	handedBack := false // left unacknowledged, to be delivered again
	defer func() { r.releaseHold(job.ID, holdRev, adm, !handedBack) }()
	if adm.refuse {
		log.Error("refusing a job that stopped the runners holding it", "deaths", adm.deaths, "deliveries", delivered)
		werr := errCrashedRunner(adm)
		if job.Async {
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		} else {
			sink.sendLast(&wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		r.recordUsage(job, enqueued, time.Now(), sink, wire.Usage{}, "error", "")
		return
	}
	if adm.alone {
		log.Warn("running a redelivered job alone: the runner that last held it died", "deaths", adm.deaths)
	}
	if err := r.gate.enter(jobCtx, adm.alone, func() { msg.InProgress() }); err != nil {
		// Stopped while waiting for its turn.
		switch {
		case job.Async:
			msg.Nak() // this runner is being stopped: another runs it
			handedBack = true
		case ctx.Err() == nil:
			msg.Ack() // its client went away
		default:
			handedBack = true // this runner is being stopped
		}
		return
	}
	defer r.gate.leave(adm.alone)
	if adm.alone {
		holdRev = r.markAlone(job.ID, adm, holdRev)
	}

	if job.Kind == wire.KindEmbedding || r.engine.EmbeddingOnly() {
		handedBack = r.embedJob(ctx, jobCtx, cancel, job, msg, sink, enqueued, log)
		return
	}
	req := Request{MaxTokens: job.MaxTokens, Stop: job.Stop, Sampling: job.Sampling, Logprobs: job.Logprobs, TopLogprobs: job.TopLogprobs, N: job.N}
	var renderErr error
	run := make([]Sink, len(sink.sinks()))
	for i, c := range sink.sinks() {
		run[i] = c
	}
	if job.Kind == wire.KindChat {
		tools := job.Tools
		if job.ToolChoice != nil && job.ToolChoice.Mode == "none" {
			tools = nil // the model is not to call them: not shown either
		}
		req.Parts, renderErr = r.prompt.render(job.Messages, tools)
		req.Stop = append(req.Stop, r.prompt.stops...)
		if renderErr == nil {
			run, renderErr = r.prompt.toolRequest(job, &req, sink.sinks())
		}
	} else {
		req.Prompt, req.Suffix = job.Prompt, job.Suffix
	}
	var superseded atomic.Bool
	if !job.Async {
		go r.watchClient(jobCtx, replyTo, cancel, &superseded, log)
	}
	start := time.Now()
	var promptTokens int
	err := renderErr
	if err == nil {
		promptTokens, err = r.engine.SubmitN(jobCtx, req, run)
	}
	if err != nil {
		werr := &wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}
		var refused *chat.RefusedError
		switch {
		case errors.As(err, &refused):
			// The model's template refused the conversation (say, a
			// system message to a model that has no system role).
			werr = &wire.Error{Status: 400, Code: "invalid_request_error", Param: "messages", Message: err.Error()}
		case errors.Is(err, errToolChoice):
			werr = &wire.Error{Status: 400, Code: "invalid_request_error", Param: "tool_choice", Message: err.Error()}
		case errors.Is(err, ErrContextLength):
			// The parameter the client sent the text in.
			param := "messages"
			if job.Kind == wire.KindCompletion {
				param = "prompt"
			}
			werr = &wire.Error{Status: 400, Code: "context_length_exceeded", Param: param, Message: err.Error()}
		case errors.Is(err, ErrMaxTokens):
			werr = &wire.Error{Status: 400, Code: "context_length_exceeded", Param: "max_tokens", Message: err.Error()}
		case errors.Is(err, ErrBadSchema):
			param := "response_format"
			if ts, ok := run[0].(*toolSink); ok && ts.forced {
				param = "tools" // a required call's schema is the function's
			}
			werr = &wire.Error{Status: 400, Code: "invalid_schema", Param: param, Message: err.Error()}
		case errors.Is(err, ErrNoFIM):
			werr = &wire.Error{Status: 400, Code: "unsupported_value", Param: "suffix", Message: err.Error()}
		case errors.Is(err, ErrBadLogitBias):
			werr = &wire.Error{Status: 400, Param: "logit_bias", Message: err.Error()}
		}
		if job.Async {
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		} else {
			sink.sendLast(&wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		r.recordUsage(job, enqueued, start, sink, wire.Usage{PromptTokens: promptTokens}, "error", "")
		return
	}

	// Keep the job ours while it generates: only a dead runner's jobs are
	// redelivered.
	tick := time.NewTicker(queue.AckWait / 3)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-sink.done:
			done = true
		case <-tick.C:
			msg.InProgress()
		}
	}
	if job.Async {
		if sink.reason == "cancelled" {
			// Nobody cancels an async job: this runner is being stopped.
			// Hand the job back so another runner runs it.
			msg.Nak()
			handedBack = true
			return
		}
		// Stored before the job is acknowledged: if this runner dies
		// first, the job runs again elsewhere.
		r.publishAsync(ctx, job, sink.final())
	}
	if superseded.Load() {
		// The job is another runner's now: it acknowledges and bills it.
		handedBack = true
		return
	}
	if err := msg.Ack(); err != nil {
		log.Warn("acknowledging job", "err", err)
	}
	status := "ok"
	switch {
	case sink.err != nil:
		status = "error"
		log.Error("generation failed", "err", sink.err)
	case sink.reason == "cancelled":
		status = "cancelled"
	}
	r.recordUsage(job, enqueued, start, sink, sink.usage, status, sink.reason)
}

// watchClient cancels a streaming job nobody waits for any more. A client
// that hangs up is announced on the cancel subject, but an activator that
// crashes or restarts announces nothing, and the runner would generate up
// to max_tokens for nobody while queued jobs wait for the slot. So every
// ClientCheck the runner pings the job's reply subject (see
// wire.PingHeader). It gives up on the job after two answers in a row that
// nobody is there: for a moment after a NATS reconnect the runner may be
// subscribed again while the activator is not yet. A timeout is not an
// answer: a busy activator is not a gone one. "Superseded" stops the job
// at once and sets superseded.
func (r *Runner) watchClient(ctx context.Context, subject string, cancel context.CancelFunc, superseded *atomic.Bool, log *slog.Logger) {
	tick := time.NewTicker(r.cfg.ClientCheck)
	defer tick.Stop()
	for gone := 0; gone < 2; {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		switch r.ping(ctx, subject) {
		case wire.PingSuperseded:
			log.Info("stopping job: another runner owns it now")
			superseded.Store(true)
			cancel()
			return
		case wire.PingGone, noResponders:
			gone++
		case wire.PingAlive:
			gone = 0
		}
	}
	log.Info("stopping job: nobody waits for it any more (its activator is gone)")
	cancel()
}

// noResponders is ping's answer when no activator subscribes to the
// subject.
const noResponders = "no responders"

// ping asks a job's reply subject who waits for it: one of the wire.Ping
// answers, noResponders, or "" for no answer.
func (r *Runner) ping(ctx context.Context, subject string) string {
	msg := nats.NewMsg(subject)
	msg.Header.Set(wire.PingHeader, "1")
	pctx, cancel := context.WithTimeout(ctx, r.cfg.ClientCheck)
	defer cancel()
	reply, err := r.nc.RequestMsgWithContext(pctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return noResponders
	case err != nil:
		return ""
	}
	return string(reply.Data)
}

// publishAsync stores an async job's last event in the async event stream,
// retrying through a NATS outage: the job's record depends on it.
func (r *Runner) publishAsync(ctx context.Context, job wire.Job, ev *wire.Event) {
	data, err := wire.AppendEvent(nil, ev)
	if err != nil {
		r.log.Error("encoding async result", "request", job.ID, "err", err)
		return
	}
	if limit := r.nc.MaxPayload(); limit > 0 && int64(len(data)) > limit {
		// A result NATS cannot carry (logprobs of thousands of tokens)
		// would leave the job running until swept: say why it failed.
		msg := fmt.Sprintf("the job's result is %d bytes, more than an async job can carry (%d bytes, the NATS max payload); lower max_tokens", len(data), limit)
		werr := &wire.Error{Status: 400, Code: "result_too_large", Message: msg}
		if job.Logprobs {
			werr.Param, werr.Message = "logprobs", msg+" or top_logprobs, or leave logprobs out"
		}
		data, _ = wire.AppendEvent(nil, &wire.Event{Type: wire.EventError, Error: werr})
	}
	if _, err := queue.PublishRetry(context.WithoutCancel(ctx), r.js, job.ReplyTo, job.ID+".end", data, durableRetry); err != nil {
		r.log.Error("publishing async result", "request", job.ID, "err", err)
	}
}

// durableRetry is how long a runner keeps trying to store what must not be
// lost (usage records, async results) through a NATS outage: well inside
// the duplicate windows of their streams, so the copies count once.
const durableRetry = 2 * time.Minute

func (r *Runner) recordUsage(job wire.Job, enqueued, start time.Time, sink *replySink, u wire.Usage, status, reason string) {
	now := time.Now()
	rec := wire.UsageRecord{
		RequestID:        job.ID,
		Deployment:       job.Deployment,
		DeploymentID:     r.cfg.DeploymentID,
		TenantID:         job.TenantID,
		KeyID:            job.KeyID,
		RunnerID:         r.cfg.ID,
		PromptTokens:     u.PromptTokens,
		CompletionTokens: u.CompletionTokens,
		QueueWaitMS:      ms(start.Sub(enqueued)),
		DurationMS:       ms(now.Sub(enqueued)),
		ColdStart:        enqueued.Before(r.readyAt),
		Status:           status,
		FinishReason:     reason,
		EnqueuedAt:       enqueued,
		FinishedAt:       now,
		Prices:           job.Prices,
	}
	if !sink.first.IsZero() {
		rec.TTFTMS = ms(sink.first.Sub(enqueued))
		r.mu.Lock()
		if r.coldStart.FirstToken.IsZero() {
			r.coldStart.FirstToken = sink.first
		}
		r.mu.Unlock()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		r.log.Error("encoding usage record", "err", err)
		return
	}
	// The request ID is the message ID: a redelivered job, or a record
	// published again through an outage, is billed once.
	if _, err := queue.PublishRetry(context.Background(), r.js, wire.UsageSubject(r.cfg.DeploymentID), job.ID, data, durableRetry); err != nil {
		r.log.Error("publishing usage record", "request", job.ID, "err", err)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (r *Runner) begin(id string, cancel context.CancelFunc) {
	r.mu.Lock()
	r.inFlight++
	r.lastRequest = time.Now()
	r.running[id] = cancel
	r.mu.Unlock()
}

func (r *Runner) end(id string) {
	r.mu.Lock()
	r.inFlight--
	r.lastRequest = time.Now()
	delete(r.running, id)
	r.mu.Unlock()
}
