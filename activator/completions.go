package activator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// maxBody bounds a completion request. Prompts are text; a few MiB is more
// than any context window holds.
const maxBody = 8 << 20

// keepaliveEvery is how often a waiting stream hears an SSE comment naming
// what it waits for (proxies keep the connection, people see why).
const keepaliveEvery = 2 * time.Second

// headerGrace is how long a streaming response waits for the runner's
// first word before committing to 200 and SSE. Within it, errors such as
// an oversized prompt still get their proper HTTP status.
const headerGrace = time.Second

func (s *Server) chatCompletions(c echo.Context) error { return s.complete(c, wire.KindChat) }
func (s *Server) completions(c echo.Context) error     { return s.complete(c, wire.KindCompletion) }

// complete is the request path: validate, queue on JetStream, poke the
// control plane, then relay the runner's events to the client.
func (s *Server) complete(c echo.Context, kind wire.Kind) error {
	if s.shuttingDown() {
		// A request on a connection kept alive into the shutdown: it
		// would be withdrawn at once, so it is refused before anything
		// (the key's limits included) is spent on it.
		return errShuttingDown(false)
	}
	a, err := s.accept(c, kind, false)
	if err != nil {
		return err
	}
	return s.serveJob(c, kind, a, nil)
}

// serveJob queues an accepted request's job and relays its runner's
// answer: a completion's, or (emb set) an embedding request's.
func (s *Server) serveJob(c echo.Context, kind wire.Kind, a accepted, emb *embedReply) error {
	req, dep, job := a.req, a.dep, a.job
	id := job.ID
	// Every answer from here on names the request, streamed or not, as
	// OpenAI's x-request-id does; usage records carry the same ID.
	c.Response().Header().Set("X-Request-Id", id)
	var rl *relay
	defer func() { a.hold.end(rl.billed()) }()

	w, replyTo := s.replies.register(id)
	defer s.replies.unregister(id)
	job.ReplyTo = replyTo
	data, err := json.Marshal(job)
	if err != nil {
		return errStatus(http.StatusInternalServerError, "server_error", "", "encoding job: %v", err)
	}
	ctx := c.Request().Context()
	rl = &relay{
		s:       s,
		c:       c,
		key:     a.key,
		prices:  job.Prices,
		kind:    kind,
		id:      id,
		model:   dep.Name,
		depID:   dep.ID,
		stream:  req.Stream,
		usage:   req.StreamOptions != nil && req.StreamOptions.IncludeUsage,
		created: time.Now().Unix(),
		lp:      job.Logprobs,
		emb:     emb,
		ch:      make([]relayChoice, req.choices()),
	}
	if req.Echo != nil && *req.Echo {
		rl.echo = job.Prompt
	}
	// A place in the deployment's queue, shared fairly between keys
	// (fair.go); a stream waiting for one hears why.
	release, err := s.fair.admit(ctx, dep, a.key.ID, a.key.Share, job.Deadline, s.draining, func(waiting int) {
		if !rl.stream {
			return
		}
		if !rl.sse {
			rl.beginSSE()
		}
		rl.comment(fmt.Sprintf("queued: %d requests wait for this deployment; its places are shared fairly between API keys", waiting))
	})
	if err != nil {
		if ctx.Err() != nil {
			rl = nil
			s.metrics.requests.WithLabelValues(dep.Name, "cancelled").Inc()
			return nil
		}
		var ae *apiError
		if errors.As(err, &ae) {
			s.metrics.requests.WithLabelValues(dep.Name, deref(ae.Code)).Inc()
			fail := rl.fail(ae)
			rl = nil
			return fail
		}
		return err
	}
	defer release()
	seq, err := s.enqueue(ctx, dep, id, data, job.Deadline)
	if err != nil {
		if rl.sse {
			var ae *apiError
			if errors.As(err, &ae) {
				return rl.fail(ae)
			}
		}
		return err
	}
	s.metrics.queued.WithLabelValues(dep.Name).Inc()
	s.metrics.waiting.WithLabelValues(dep.Name).Inc()
	defer func() {
		if rl.started {
			s.metrics.running.WithLabelValues(dep.Name).Dec()
		} else {
			s.metrics.waiting.WithLabelValues(dep.Name).Dec()
		}
	}()
	err = rl.run(ctx, w, job.Deadline)
	if rl.hungUp {
		// The client went away before the answer was complete: stop the
		// job wherever it is. (A client that hangs up once the relay
		// finished changes nothing: the runner is done with the job, and
		// the request counted as what it ended as.)
		// A job waiting for redelivery after its runner was lost is
		// back in the queue: only one that a runner has is stopped
		// rather than removed.
		s.abandon(dep.ID, id, seq, rl.runner != "")
		s.metrics.requests.WithLabelValues(dep.Name, "cancelled").Inc()
		return nil
	}
	if rl.gaveUp {
		s.abandon(dep.ID, id, seq, false)
	}
	if rl.shutDown {
		// Ended by the shutdown: withdraw a job still queued, stop one
		// that runs, as for a client that hung up.
		s.abandon(dep.ID, id, seq, rl.runner != "")
	}
	return err
}

// accepted is a completion request that passed authentication,
// validation and the key's limits, with the job that will carry it.
type accepted struct {
	req *completionRequest
	dep registry.Deployment
	key registry.APIKey // whose limits the request is charged to
	job wire.Job
	// webhook is an async job's webhook URL, if it has one.
	webhook string
	// hold is the job's hold on its key's budget (nil without a budget),
	// which the caller must end (budget.go).
	hold *budgetHold
}

// accept authenticates and validates a completion request and builds its
// job: everything the sync and async endpoints share before queueing.
// Every check that can refuse the request comes before the key's limits
// are charged, the async endpoints' own checks included.
func (s *Server) accept(c echo.Context, kind wire.Kind, async bool) (accepted, error) {
	key, err := s.authenticate(c)
	if err != nil {
		return accepted{}, err
	}
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, maxBody+1))
	if err != nil {
		return accepted{}, bodyReadError(err)
	}
	if len(body) > maxBody {
		return accepted{}, errStatus(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "request body is larger than %d bytes", maxBody)
	}
	req, apiErr := decodeRequest(body, kind, async)
	if apiErr != nil {
		return accepted{}, apiErr
	}
	var hook string
	if async {
		if hook, apiErr = s.async.checkRequest(c, req); apiErr != nil {
			return accepted{}, apiErr
		}
	}
	dep, err := s.allowedDeployment(c.Request().Context(), key, req.Model)
	if err != nil {
		return accepted{}, err
	}
	if dep.EmbeddingOnly {
		// Known from the upload: no runner is started to say so.
		param := "messages"
		if kind == wire.KindCompletion {
			param = "prompt"
		}
		e := errInvalid("model", "deployment %s serves an embedding model, which writes no text; send its %s as input to /v1/embeddings instead", dep.Name, param)
		e.Code = strp("model_not_supported")
		s.metrics.requests.WithLabelValues(dep.Name, "model_not_supported").Inc()
		return accepted{}, e
	}
	// A deployment that sets its context says, before any runner starts,
	// that a max_tokens as large can never fit next to a prompt. (The
	// runner, which knows the prompt's length and the context of one
	// left at the model's default, checks the rest.)
	if req.MaxTokens != nil && dep.ContextLength > 0 && *req.MaxTokens >= dep.ContextLength {
		e := errInvalid("max_tokens", "max_tokens is %d, but deployment %s gives a request %d tokens, prompt included; lower max_tokens, or leave it out to generate until the context is full",
			*req.MaxTokens, dep.Name, dep.ContextLength)
		e.Code = strp("context_length_exceeded")
		return accepted{}, e
	}
	if n := req.choices(); n > 1 && dep.Parallel > 0 && n > dep.Parallel {
		return accepted{}, errInvalid("n", "n is %d, but deployment %s decodes at most %d sequences at once (its parallel); lower n", n, dep.Name, dep.Parallel)
	}
	if err := s.admitKey(c, key, dep); err != nil {
		return accepted{}, err
	}

	prefix := "chatcmpl-"
	if kind == wire.KindCompletion {
		prefix = "cmpl-"
	}
	job := req.job(kind)
	stamp(&job, prefix+wire.NewID(12), dep, key)
	hold, apiErr := s.holdBudget(c.Request().Context(), key, dep, job)
	if apiErr != nil {
		s.metrics.requests.WithLabelValues(dep.Name, deref(apiErr.Code)).Inc()
		return accepted{}, apiErr
	}
	return accepted{req: req, dep: dep, key: key, job: job, webhook: hook, hold: hold}, nil
}
