package activator

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Async jobs. POST /v1/async/{chat/,}completions validates a request like
// the sync endpoints, stores a job record in the AsyncBucket key-value
// bucket, queues the job and answers 202. The runner sends the job's start
// event and its whole result to the durable async event stream rather than
// to this activator, and whichever activator takes an event from the shared
// consumer folds it into the record and, at the end, calls the webhook. So a
// job and its result do not depend on the activator that accepted it.

// WebhookHeader names the webhook URL as a header, for clients that cannot
// add fields to the body. The body field "webhook" wins.
const WebhookHeader = "X-Infer-Webhook"

// Async job states.
const (
	asyncQueued    = "queued"
	asyncRunning   = "running"
	asyncSucceeded = "succeeded"
	asyncFailed    = "failed"
)

// asyncRecord is an async job as stored and, without its internal fields,
// as returned by GET /v1/async/{id} and posted to the webhook.
type asyncRecord struct {
	ID         string          `json:"id"`
	Object     string          `json:"object"` // "async.job"
	Endpoint   string          `json:"endpoint"`
	Model      string          `json:"model"`
	Status     string          `json:"status"`
	CreatedAt  int64           `json:"created_at"`
	StartedAt  int64           `json:"started_at,omitempty"`
	FinishedAt int64           `json:"finished_at,omitempty"`
	ExpiresAt  int64           `json:"expires_at"`
	Webhook    string          `json:"webhook,omitempty"`
	Result     json.RawMessage `json:"result,omitempty"`
	Error      *apiError       `json:"error,omitempty"`

	// Internal: never shown to clients.
	TenantID string    `json:"tenant_id,omitempty"`
	Kind     wire.Kind `json:"kind,omitempty"`
	Deadline time.Time `json:"deadline,omitzero"`
	// DroppedAt is when the deployment's queue drops the job if no runner
	// took it (its MaxAge, twice the queue timeout); after that a queued
	// job can only have failed.
	DroppedAt time.Time `json:"dropped_at,omitzero"`
	// WebhookSent is set once the webhook accepted the result (or was
	// given up), so a redelivered event does not call it again.
	WebhookSent bool `json:"webhook_sent,omitempty"`
	// Runner is the runner that last started the job.
	Runner string `json:"runner,omitempty"`
	// WebhookClaimed is when an activator last took on delivering the
	// webhook of a job the sweeper failed (no event is left to redeliver
	// should it die).
	WebhookClaimed time.Time `json:"webhook_claimed,omitzero"`
	// Swept is set when the sweeper failed the job; its webhook is then
	// the sweeper's to call, and a late runner event must not call it too.
	Swept bool `json:"swept,omitempty"`
	// What the job's tokens are charged to when its result is folded in,
	// as sync requests are charged when they finish: the submitting key
	// with its limits at submission, and the deployment's prices.
	// Logprobs says the job asked for logprobs, so its result shows them.
	Logprobs  bool     `json:"logprobs_asked,omitempty"`
	KeyID     string   `json:"key_id,omitempty"`
	KeyTPM    int      `json:"key_tokens_per_minute,omitempty"`
	KeyBudget *float64 `json:"key_budget_usd,omitempty"`
	// TenantBudget is the tenant's monthly budget at submission, so the
	// activator folding the result adds its cost to the tenant's spend.
	TenantBudget *float64    `json:"tenant_budget_usd,omitempty"`
	Prices       wire.Prices `json:"prices,omitzero"`

	// Unpublished says the job is recorded but not yet in its
	// deployment's queue: it waits for a place in the fair gate of the
	// activator Holder, which renews HeldUntil while it holds it; once
	// HeldUntil passes, any activator's sweep takes it over (see
	// async_fair.go). Job is the queued job's encoding until then, so
	// whoever holds it can publish it; DeploymentID and KeyShare are what
	// its gate needs. (Unpublished rather than "published": a record
	// written before jobs waited in the gate reads as published.)
	Unpublished  bool            `json:"unpublished,omitempty"`
	Holder       string          `json:"holder,omitempty"`
	HeldUntil    time.Time       `json:"held_until,omitzero"`
	Job          json.RawMessage `json:"job,omitempty"`
	DeploymentID string          `json:"deployment_id,omitempty"`
	KeyShare     int             `json:"key_share,omitempty"`
}

func (r *asyncRecord) terminal() bool { return r.Status == asyncSucceeded || r.Status == asyncFailed }

// settle fails a job that has failed although no event will say so, as
// the sweeper stores it and GET shows it until then, and returns why
// (a metrics outcome), or "" if the job is not such a job:
//   - still queued after its queue dropped it: no runner took it, and none
//     will;
//   - running, after its queue dropped it, on a runner that is gone: no
//     other runner can take it again.
func (a *asyncJobs) settle(r *asyncRecord, now time.Time) (outcome string) {
	if r.Status == asyncQueued && r.Unpublished && !r.Deadline.IsZero() && now.After(r.Deadline) {
		// Still waiting in a fair gate at its deadline: no runner may
		// start it now.
		r.Status, r.FinishedAt, r.Swept, r.WebhookClaimed, r.Job = asyncFailed, r.Deadline.Unix(), true, now, nil
		r.Error = errStatus(http.StatusGatewayTimeout, "server_error", "queue_timeout",
			"the job waited for a place in the queue of %s past its deadline without starting; other jobs were ahead of it", r.Model)
		return "timeout"
	}
	if r.DroppedAt.IsZero() || !now.After(r.DroppedAt) {
		return ""
	}
	switch {
	case r.Status == asyncQueued:
		// (A runner that takes a job past its deadline reports the same
		// error itself.)
		r.Status, r.FinishedAt, r.Swept, r.WebhookClaimed = asyncFailed, r.DroppedAt.Unix(), true, now
		r.Error = errStatus(http.StatusGatewayTimeout, "server_error", "queue_timeout",
			"the job waited in the queue of %s past its deadline without starting", r.Model)
		return "timeout"
	case r.Status == asyncRunning && r.Runner != "" && a.runnerGone(r.Runner, now):
		r.Status, r.FinishedAt, r.Swept, r.WebhookClaimed = asyncFailed, now.Unix(), true, now
		r.Error = errStatus(http.StatusBadGateway, "server_error", "runner_lost",
			"the runner running the job on %s stopped, and the job's queue dropped it before another runner could take it; submit it again", r.Model)
		return "runner_lost"
	}
	return ""
}

// runnerGone reports whether this activator has heard no heartbeat from
// the runner for a while, having listened long enough to know.
func (a *asyncJobs) runnerGone(runner string, now time.Time) bool {
	return now.Sub(a.started) > staleAfter && !a.s.runners.alive(runner)
}

// key is the submitting key, as far as charging the job needs it.
func (r *asyncRecord) key() registry.APIKey {
	return registry.APIKey{ID: r.KeyID, TenantID: r.TenantID, Limits: registry.Limits{TokensPerMinute: r.KeyTPM, BudgetUSD: r.KeyBudget},
		Tenant: registry.TenantState{MonthlyBudgetUSD: r.TenantBudget}}
}

// view is what clients see.
func (r asyncRecord) view() asyncRecord {
	r.TenantID, r.Kind, r.Deadline, r.DroppedAt, r.WebhookSent, r.Swept, r.Runner = "", "", time.Time{}, time.Time{}, false, false, ""
	r.WebhookClaimed = time.Time{}
	r.KeyID, r.KeyTPM, r.KeyBudget, r.TenantBudget, r.Prices, r.Logprobs = "", 0, nil, nil, wire.Prices{}, false
	r.Unpublished, r.Holder, r.HeldUntil, r.Job, r.DeploymentID, r.KeyShare = false, "", time.Time{}, nil, "", 0
	return r
}

// asyncJobs holds the async job store and folds runner events into it.
type asyncJobs struct {
	s    *Server
	kv   jetstream.KeyValue
	ttl  time.Duration
	http *http.Client
	// allowPrivate lets webhooks reach non-public addresses (see
	// webhook.go).
	allowPrivate bool
	// started is when this activator began listening to heartbeats.
	started time.Time
	// webhookClaim is Config.AsyncWebhookClaim.
	webhookClaim time.Duration
	// webhookBackoff is the wait before the first webhook retry; it
	// doubles up to webhookAttempts tries.
	webhookBackoff time.Duration
	// lease is Config.AsyncLease; held maps each job this activator
	// holds in its fair gate (waiting, or published and not yet ended)
	// to what ends its holding (async_fair.go).
	lease  time.Duration
	heldMu sync.Mutex
	held   map[string]context.CancelFunc

	ctx    context.Context
	cancel context.CancelFunc
	cc     jetstream.ConsumeContext
	wg     sync.WaitGroup
}

const webhookAttempts = 5

func newAsyncJobs(s *Server, cfg Config) (*asyncJobs, error) {
	ttl := cfg.AsyncTTL
	if ttl <= 0 {
		ttl = queue.DefaultAsyncTTL
	}
	sweepEvery := cfg.AsyncSweep
	if sweepEvery <= 0 {
		sweepEvery = defaultAsyncSweep
	}
	claim := cfg.AsyncWebhookClaim
	if claim <= 0 {
		claim = defaultWebhookClaim
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, kv, err := queue.EnsureAsync(ctx, s.js, ttl, s.replicas)
	if err != nil {
		return nil, err
	}
	a := &asyncJobs{
		s: s, kv: kv, ttl: ttl, webhookBackoff: time.Second, started: time.Now(), webhookClaim: claim,
		lease: cmp.Or(cfg.AsyncLease, defaultAsyncLease), held: map[string]context.CancelFunc{},
		http:         webhookClient(cfg.WebhookClient, cfg.AllowPrivateWebhooks),
		allowPrivate: cfg.AllowPrivateWebhooks,
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.cc, err = cons.Consume(a.onEvent)
	if err != nil {
		a.cancel()
		return nil, fmt.Errorf("consuming async job events: %w", err)
	}
	a.wg.Add(1)
	go a.sweep(sweepEvery)
	return a, nil
}

// close stops folding events and sweeping. Events being handled and not
// yet acknowledged go to another activator after the ack wait.
func (a *asyncJobs) close() {
	a.cc.Stop()
	a.cancel()
	a.wg.Wait()
}

func (s *Server) asyncChatCompletions(c echo.Context) error { return s.submitAsync(c, wire.KindChat) }
func (s *Server) asyncCompletions(c echo.Context) error     { return s.submitAsync(c, wire.KindCompletion) }

// submitAsync validates and queues an async job and answers 202 at once.
func (s *Server) submitAsync(c echo.Context, kind wire.Kind) error {
	a, err := s.accept(c, kind, true)
	if err != nil {
		return err
	}
	dep, job, hook := a.dep, a.job, a.webhook
	queued := false
	defer func() {
		if !queued {
			a.hold.end(nil, job.Prices, false)
		}
	}()
	job.Async = true
	job.ReplyTo = wire.AsyncEventSubject(job.ID)
	data, err := json.Marshal(job)
	if err != nil {
		return errStatus(http.StatusInternalServerError, "server_error", "", "encoding job: %v", err)
	}
	now := time.Now()
	endpoint := "/v1/chat/completions"
	if kind == wire.KindCompletion {
		endpoint = "/v1/completions"
	}
	rec := asyncRecord{
		ID: job.ID, Object: "async.job", Endpoint: endpoint, Model: dep.Name, Status: asyncQueued,
		CreatedAt: now.Unix(), ExpiresAt: now.Add(s.async.ttl).Unix(), Webhook: hook,
		TenantID: job.TenantID, Kind: kind, Deadline: job.Deadline, DroppedAt: now.Add(queue.DeploymentLimits(dep.QueueLimit, dep.QueueTimeout, s.replicas).MaxAge),
		KeyID: a.key.ID, KeyTPM: a.key.TokensPerMinute, KeyBudget: a.key.BudgetUSD, TenantBudget: a.key.Tenant.MonthlyBudgetUSD, Prices: job.Prices,
		Logprobs: job.Logprobs,
	}
	if e := s.checkJobSize(len(data)); e != nil {
		s.metrics.requests.WithLabelValues(dep.Name, "request_too_large").Inc()
		return e
	}
	// Recorded with the job, as waiting for a place in this activator's
	// fair gate: should this activator die before the job is in the
	// queue, another publishes it (async_fair.go).
	rec.Unpublished, rec.Holder, rec.HeldUntil, rec.Job = true, s.id, now.Add(s.async.lease), data
	rec.DeploymentID, rec.KeyShare = dep.ID, a.key.Share
	recData, err := json.Marshal(rec)
	if err != nil {
		return errStatus(http.StatusInternalServerError, "server_error", "", "encoding job record: %v", err)
	}
	// The record exists before the job is queued, so a runner's events
	// always find it.
	ctx := c.Request().Context()
	if _, err := s.async.kv.Create(ctx, job.ID, recData); err != nil {
		if publishTooLarge(err) {
			s.metrics.requests.WithLabelValues(dep.Name, "request_too_large").Inc()
			return errJobTooLarge(len(recData), s.nc.MaxPayload())
		}
		s.log.Error("storing async job", "request", job.ID, "err", err)
		return errStatus(http.StatusServiceUnavailable, "server_error", "queue_unavailable", "could not store the job: %v", err)
	}
	unrecord := func() {
		if derr := s.async.kv.Purge(context.WithoutCancel(ctx), job.ID); derr != nil {
			s.log.Warn("removing record of unqueued async job", "request", job.ID, "err", derr)
		}
	}
	// Held (so that its end gives its place back) before it can end.
	hctx, lose, done := s.async.register(job.ID)
	release, ticket, err := s.fair.enter(dep, a.key.ID, a.key.Share)
	if err != nil {
		done()
		unrecord()
		var ae *apiError
		if errors.As(err, &ae) {
			s.metrics.requests.WithLabelValues(dep.Name, deref(ae.Code)).Inc()
		}
		return err
	}
	held := heldJob{id: job.ID, dep: dep, key: a.key.ID, share: a.key.Share, deadline: job.Deadline, data: data}
	published := false
	if release != nil {
		// A place at once: queued now, so that what refuses it (a full
		// queue) is this answer.
		if _, err := s.enqueue(ctx, dep, job.ID, data, job.Deadline); err != nil {
			release()
			done()
			unrecord()
			return err
		}
		s.metrics.queued.WithLabelValues(dep.Name).Inc()
		// Should recording it fail, run publishes it again (stored
		// once: the job ID is its message ID) and records that.
		published = s.async.markPublished(job.ID, dep, time.Now()) == nil
	}
	queued = true
	s.async.wg.Add(1)
	go s.async.run(hctx, lose, done, held, release, ticket, published)
	c.Response().Header().Set("Location", "/v1/async/"+job.ID)
	return c.JSON(http.StatusAccepted, rec.view())
}

// checkRequest is what only the async endpoints refuse; it returns the
// job's webhook URL, from the body or else the WebhookHeader.
func (a *asyncJobs) checkRequest(c echo.Context, req *completionRequest) (string, *apiError) {
	if req.Stream {
		return "", errInvalid("stream", "async jobs cannot stream; leave stream unset and read the result with GET /v1/async/{id}")
	}
	hook := c.Request().Header.Get(WebhookHeader)
	if req.Webhook != nil {
		hook = *req.Webhook
	}
	if hook != "" {
		if e := checkWebhook(hook, a.allowPrivate); e != nil {
			return "", e
		}
	}
	return hook, nil
}

// getAsync returns an async job to the key that submitted it or an admin
// key of its tenant; to others it is missing.
func (s *Server) getAsync(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	id := c.Param("id")
	notFound := &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: strp("id"), Code: strp("not_found"),
		Message: fmt.Sprintf("no async job %q: it does not exist, has expired, or belongs to another tenant", id)}
	if !validAsyncID(id) {
		return notFound
	}
	rec, _, err := s.async.get(c.Request().Context(), id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || (err == nil && !mayReadAsync(key, rec.TenantID, rec.KeyID)) {
		return notFound
	}
	if err != nil {
		s.log.Error("reading async job", "request", id, "err", err)
		return errStatus(http.StatusServiceUnavailable, "server_error", "queue_unavailable", "could not read the job: %v", err)
	}
	// Failed although no event says so, and the sweeper has not stored
	// that yet: show what it will store.
	s.async.settle(&rec, time.Now())
	return c.JSON(http.StatusOK, rec.view())
}

// validAsyncID accepts what the activator hands out, which is also safe as
// a key-value key and a subject token.
func validAsyncID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func (a *asyncJobs) get(ctx context.Context, id string) (asyncRecord, uint64, error) {
	e, err := a.kv.Get(ctx, id)
	if err != nil {
		return asyncRecord{}, 0, err
	}
	var rec asyncRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return asyncRecord{}, 0, fmt.Errorf("decoding async job %s: %w", id, err)
	}
	return rec, e.Revision(), nil
}

// update applies change to a job's record with optimistic concurrency: two
// activators may fold events of the same job at once. change returns false
// to leave the record alone.
func (a *asyncJobs) update(ctx context.Context, id string, change func(*asyncRecord) bool) (asyncRecord, error) {
	for {
		rec, rev, err := a.get(ctx, id)
		if err != nil {
			return rec, err
		}
		if !change(&rec) {
			return rec, nil
		}
		// Every write restarts the bucket's TTL clock for the key.
		rec.ExpiresAt = time.Now().Add(a.ttl).Unix()
		data, err := json.Marshal(rec)
		if err != nil {
			return rec, fmt.Errorf("encoding async job %s: %w", id, err)
		}
		_, err = a.kv.Update(ctx, id, data, rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue // someone else changed it first
		}
		if err != nil {
			return rec, fmt.Errorf("updating async job %s: %w", id, err)
		}
		return rec, nil
	}
}

// onEvent folds one runner event into its job's record. A failure leaves
// the event unacknowledged, so it comes back (here or at another
// activator).
func (a *asyncJobs) onEvent(msg jetstream.Msg) {
	id := strings.TrimPrefix(msg.Subject(), wire.AsyncEventSubject(""))
	ev, err := wire.DecodeEvent(msg.Data())
	if err != nil {
		a.s.log.Error("dropping bad async event", "request", id, "err", err)
		msg.Term()
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	now := time.Now()
	switch ev.Type {
	case wire.EventStart:
		_, err = a.update(ctx, id, func(r *asyncRecord) bool {
			switch r.Status {
			case asyncQueued:
				r.Status, r.StartedAt, r.Runner = asyncRunning, now.Unix(), ev.Runner
				return true
			case asyncRunning:
				// Redelivered to another runner: watch that one.
				changed := r.Runner != ev.Runner
				r.Runner = ev.Runner
				return changed
			}
			return false
		})
	case wire.EventDone, wire.EventError:
		var rec asyncRecord
		folded := false
		u := wire.Usage{}
		if ev.Usage != nil {
			u = *ev.Usage
		}
		rec, err = a.update(ctx, id, func(r *asyncRecord) bool {
			// Decided afresh on every try: a lost compare-and-swap may
			// have been a redelivery of this event folded elsewhere.
			folded = !r.terminal()
			if !folded {
				return false // a redelivered event: already folded
			}
			r.FinishedAt = now.Unix()
			if r.StartedAt == 0 {
				r.StartedAt = r.FinishedAt
			}
			if ev.Type == wire.EventDone {
				r.Status, r.Result = asyncSucceeded, asyncResult(r, &ev, u)
				if limit := a.s.nc.MaxPayload() - asyncRecordRoom; limit > 0 && len(r.Result) > int(limit) {
					r.Status, r.Result = asyncFailed, nil
					r.Error = errResultTooLarge(r.Logprobs, len(r.Result), int(limit))
				}
			} else {
				we := ev.Error
				if we == nil {
					we = &wire.Error{Status: 500, Message: "runner failed"}
				}
				r.Status, r.Error = asyncFailed, fromWire(we)
			}
			return true
		})
		if err == nil && folded {
			if ev.Type == wire.EventDone {
				// A result too large to store ran all the same, and the
				// runner bills its tokens: so does the key's limiter.
				a.s.metrics.requests.WithLabelValues(rec.Model, "ok").Inc()
				// This activator folded the result, so its limiter holds
				// the charge (limits are per activator, see limits.go).
				a.s.limits.charge(rec.key(), u, rec.Prices)
				a.s.limits.chargeTenant(rec.key(), u, rec.Prices)
				a.s.endHold(rec.ID, rec.KeyBudget != nil, &u, rec.Prices, true)
			} else {
				a.s.metrics.requests.WithLabelValues(rec.Model, "error").Inc()
				a.s.endHold(rec.ID, rec.KeyBudget != nil, nil, rec.Prices, true)
			}
		}
		if err == nil && rec.Webhook != "" && !rec.WebhookSent && !rec.Swept {
			// Acknowledged once the webhook took it (or gave up), so an
			// activator dying meanwhile leaves the call to another.
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.deliver(msg, rec)
			}()
			return
		}
	}
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		// The record expired (or the job never got one): nothing to fold into.
		msg.Ack()
		return
	}
	if err != nil {
		a.s.log.Warn("folding async event", "request", id, "err", err)
		msg.NakWithDelay(time.Second)
		return
	}
	msg.Ack()
}

// deliver posts a finished job to its webhook, retrying with backoff, and
// then acknowledges the event that finished it, if one did (msg is nil
// for a job the sweeper failed).
func (a *asyncJobs) deliver(msg jetstream.Msg, rec asyncRecord) {
	body, _ := json.Marshal(rec.view())
	log := a.s.log.With("request", rec.ID, "webhook", rec.Webhook)
	backoff := a.webhookBackoff
	progress := time.NewTicker(queue.AckWait / 3)
	defer progress.Stop()
	for attempt := 1; ; attempt++ {
		err := a.post(rec, body)
		if err == nil {
			break
		}
		if a.ctx.Err() != nil {
			return // shutting down: another activator retries
		}
		if errors.Is(err, errWebhookInternal) {
			log.Warn("giving up on webhook: refusing to call a non-public address (see --webhook-allow-private)", "err", err)
			break
		}
		if attempt == webhookAttempts {
			log.Warn("giving up on webhook", "attempts", attempt, "err", err)
			break
		}
		log.Info("webhook failed, retrying", "attempt", attempt, "in", backoff, "err", err)
		wait := time.NewTimer(backoff)
	waiting:
		for {
			select {
			case <-wait.C:
				break waiting
			case <-progress.C:
				if msg != nil {
					msg.InProgress()
				}
			case <-a.ctx.Done():
				// Shutting down: another activator retries.
				wait.Stop()
				return
			}
		}
		backoff *= 2
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 10*time.Second)
	defer cancel()
	if _, err := a.update(ctx, rec.ID, func(r *asyncRecord) bool { r.WebhookSent = true; return true }); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		log.Warn("recording webhook delivery", "err", err)
	}
	if msg != nil {
		msg.Ack()
	}
}

func (a *asyncJobs) post(rec asyncRecord, body []byte) error {
	ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rec.Webhook, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "infer-activator")
	req.Header.Set("X-Infer-Job-Id", rec.ID)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("calling webhook: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// asyncRecordRoom is what a job's record needs besides its result, kept
// free below the NATS max payload that bounds a stored record.
const asyncRecordRoom = 4 << 10

// asyncResult is a finished async job's result: the response body the
// sync endpoint would have answered, its choices' logprobs included when
// the job asked for them.
func asyncResult(r *asyncRecord, ev *wire.Event, u wire.Usage) json.RawMessage {
	enc := newChunkEncoder(r.Kind, r.ID, r.Model, r.CreatedAt)
	ends := ev.Choices
	if len(ends) == 0 {
		ends = []wire.Choice{{FinishReason: ev.FinishReason, ToolCalls: ev.ToolCalls, Text: ev.Text, Logprobs: ev.Logprobs}}
	}
	out := make([]choiceOut, len(ends))
	for i, c := range ends {
		out[i] = choiceOut{text: c.Text, reason: c.FinishReason, toolCalls: c.ToolCalls, logprobs: choiceLogprobs(r.Kind, r.Logprobs, c.Logprobs)}
	}
	return enc.bodyOf(out, u)
}

// errResultTooLarge fails an async job whose result does not fit a
// record: with logprobs (20 alternatives a token), a few thousand tokens
// outgrow NATS's default 1 MiB.
func errResultTooLarge(logprobs bool, size, limit int) *apiError {
	hint := "lower max_tokens"
	if logprobs {
		hint = "lower max_tokens or top_logprobs, or leave logprobs out"
	}
	e := errStatus(http.StatusBadRequest, "invalid_request_error", "result_too_large",
		"the job's result is %d bytes, more than an async job can store (%d bytes, the NATS max payload); %s, or use the sync endpoint", size, limit, hint)
	if logprobs {
		e.Param = strp("logprobs")
	}
	return e
}
