package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// embedJob runs an embedding job, or refuses a text job on a model that
// makes only embeddings, from where handle builds a generation request on;
// it reports whether the job was left unacknowledged for another runner
// (its hold then stays, see releaseHold).
func (r *Runner) embedJob(ctx, jobCtx context.Context, cancel context.CancelFunc, job wire.Job, msg jetstream.Msg, sink *replySink, enqueued time.Time, log *slog.Logger) (handedBack bool) {
	start := time.Now()
	fail := func(werr *wire.Error, promptTokens int) bool {
		if job.Async {
			r.publishAsync(ctx, job, &wire.Event{Type: wire.EventError, Error: werr})
		} else {
			sink.sendLast(&wire.Event{Type: wire.EventError, Error: werr})
		}
		msg.Ack()
		r.recordUsage(job, enqueued, start, sink, wire.Usage{PromptTokens: promptTokens}, "error", "")
		return false
	}
	if job.Kind != wire.KindEmbedding {
		param := "messages"
		if job.Kind == wire.KindCompletion {
			param = "prompt"
		}
		// (No leading slash: the activator redacts what looks like a
		// server path from runners' messages.)
		return fail(&wire.Error{Status: 400, Code: "model_not_supported", Param: "model", Message: fmt.Sprintf(
			"deployment %s serves an embedding model (%s), which writes no text; send its %s as input to the embeddings endpoint (v1/embeddings) instead", job.Deployment, r.engine.Info().Architecture, param)}, 0)
	}
	if job.Async {
		// The activator has no async embeddings endpoint.
		return fail(&wire.Error{Status: 400, Message: "embeddings are not served asynchronously"}, 0)
	}
	inputs := job.InputTokens
	if inputs == nil {
		var err error
		if inputs, err = r.engine.EmbedTokenize(job.Inputs); err != nil {
			return fail(&wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}, 0)
		}
	}
	tokens := 0
	for _, in := range inputs {
		tokens += len(in)
	}
	var superseded atomic.Bool
	go r.watchClient(jobCtx, wire.RunnerReplySubject(job.ReplyTo, r.cfg.ID), cancel, &superseded, log)
	// Keep the job ours while it waits for the embeddings context and
	// runs: only a dead runner's jobs are redelivered.
	tickDone := make(chan struct{})
	defer close(tickDone)
	go func() {
		tick := time.NewTicker(queue.AckWait / 3)
		defer tick.Stop()
		for {
			select {
			case <-tickDone:
				return
			case <-tick.C:
				msg.InProgress()
			}
		}
	}()
	started := false
	err := r.engine.Embed(jobCtx, inputs, job.Dimensions, func(i int, vec []byte) {
		if !started {
			sink.sinks()[0].Start(tokens)
			sink.first = time.Now()
			started = true
		}
		sink.send(&wire.Event{Type: wire.EventEmbedding, Embedding: &wire.Embedding{Index: i, Vector: vec}})
	})
	if superseded.Load() {
		return true // the job is another runner's now: it answers and bills
	}
	if err != nil {
		if jobCtx.Err() != nil && ctx.Err() == nil {
			// Its client went away.
			msg.Ack()
			r.recordUsage(job, enqueued, start, sink, wire.Usage{}, "cancelled", "cancelled")
			return false
		}
		if ctx.Err() != nil {
			return true // this runner is being stopped: another runs it
		}
		werr := &wire.Error{Status: 500, Code: "internal_error", Message: err.Error()}
		switch {
		case errors.Is(err, ErrInputLength):
			werr = &wire.Error{Status: 400, Code: "context_length_exceeded", Param: "input", Message: err.Error()}
		case errors.Is(err, ErrBadToken):
			werr = &wire.Error{Status: 400, Param: "input", Message: err.Error()}
		case errors.Is(err, ErrDimensions):
			werr = &wire.Error{Status: 400, Param: "dimensions", Message: err.Error()}
		case errors.Is(err, ErrNotEmbedding):
			werr = &wire.Error{Status: 400, Code: "model_not_supported", Param: "model", Message: err.Error()}
		}
		if started {
			// Vectors were sent: the client's answer fails, and the
			// tokens were spent.
			return fail(werr, tokens)
		}
		return fail(werr, 0)
	}
	u := wire.Usage{PromptTokens: tokens}
	sink.sendLast(&wire.Event{Type: wire.EventDone, FinishReason: "stop", Usage: &u})
	if err := msg.Ack(); err != nil {
		log.Warn("acknowledging job", "err", err)
	}
	r.recordUsage(job, enqueued, start, sink, u, "ok", "stop")
	return false
}
