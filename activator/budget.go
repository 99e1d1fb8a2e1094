package activator

import (
	"context"
	"net/http"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Budgets hold under concurrency: a request on a key with a budget holds
// its maximum cost of the budget before it is queued, in Postgres (where
// the spend is recorded), and the hold is settled to the real cost when it
// finishes. The spend the cache loads (limits.go) cannot do this: it lags
// by a refresh and ingestion, and counts nothing in flight, so ten
// concurrent requests on a $0.01 budget once spent $2.00.
//
// The price: a key with a budget costs one Postgres round trip per request
// (and one more when it ends), and while Postgres is unreachable its
// requests are refused with 503 rather than let through unchecked. A key
// without a budget runs no query. And a key with little budget left
// refuses a request whose maximum cost, not its likely cost, exceeds what
// is left: a big max_tokens (or none, which means the context's length)
// is refused where a small one would pass.

// budgetHolder is the part of the registry that holds budgets
// (registry.Store, through the cache); a registry without it enforces
// budgets from the cached spend only.
type budgetHolder interface {
	HoldBudget(ctx context.Context, keyID, requestID string, usd float64, expires time.Time) (registry.BudgetHold, error)
	SettleBudget(ctx context.Context, requestID string, usd *float64, expires time.Time) error
	ReleaseBudget(ctx context.Context, requestID string) error
}

const (
	// holdOverrun is how long past its queue deadline a hold outlives an
	// activator that died before ending it: long enough for any
	// generation to finish and be billed (the runner's usage record then
	// ends the hold), short enough that a crash does not freeze a budget
	// for a day.
	holdOverrun = time.Hour
	// holdIngest is how long a finished request's hold lasts at its real
	// cost: until the control plane stores the usage record (normally
	// well under a second), which ends the hold in the same transaction.
	holdIngest = 2 * time.Minute
	// defaultRequestContext is the most tokens a runner gives one request
	// when the deployment does not set a context length (runner.LoadEngine
	// caps the model's own at 4096).
	defaultRequestContext = 4096
	// Prompt tokens are bounded by bytes: every tokenizer llama.cpp
	// runs maps each token to at least one byte of text (byte fallback
	// included), plus what the chat template adds around each message and
	// the whole conversation.
	templatePerMessage = 64
	templateFixed      = 256
)

// maxCost is the most a request can cost at prices p: its prompt's
// token bound at the prompt price plus, within the context of ctxLen
// tokens, as many completion tokens as max_tokens (or the context) allow
// after the prompt. A prompt that does not fit is billed for its prompt
// alone (context_length_exceeded).
func maxCost(promptBound, maxTokens, ctxLen int, p wire.Prices) float64 {
	if maxTokens <= 0 || maxTokens > ctxLen {
		maxTokens = ctxLen
	}
	cost := func(prompt int) float64 {
		completion := 0
		if prompt < ctxLen {
			completion = min(maxTokens, ctxLen-prompt)
		}
		return (float64(prompt)*p.PromptPerMTok + float64(completion)*p.CompletionPerMTok) / 1e6
	}
	// Cost is piecewise linear in the prompt's length: its maximum is at
	// an end or a bend.
	best := 0.0
	for _, n := range []int{1, promptBound, ctxLen - maxTokens, ctxLen - 1} {
		best = max(best, cost(min(max(n, 1), max(promptBound, 1))))
	}
	return best
}

// promptBound is an upper bound on the job's prompt tokens.
func promptBound(job wire.Job) int {
	n := len(job.Prompt) + templateFixed
	for _, m := range job.Messages {
		n += len(m.Content) + len(m.Role) + templatePerMessage + len(m.ToolCallID)
		for _, c := range m.ToolCalls {
			n += len(c.ID) + len(c.Name) + len(c.Arguments) + templatePerMessage
		}
	}
	// The template writes each tool's definition (as JSON) into the prompt.
	for _, t := range job.Tools {
		n += len(t.Name) + len(t.Description) + len(t.Parameters) + templatePerMessage
	}
	return n
}

// budgetHold is one request's hold; nil for a key without a budget.
type budgetHold struct {
	s  *Server
	h  budgetHolder
	id string
}

// holdBudget holds the job's maximum cost of its key's budget, or says why
// not.
func (s *Server) holdBudget(ctx context.Context, key registry.APIKey, dep registry.Deployment, job wire.Job) (*budgetHold, *apiError) {
	h, ok := s.reg.(budgetHolder)
	if key.BudgetUSD == nil || !ok {
		return nil, nil
	}
	ctxLen := dep.ContextLength
	if ctxLen <= 0 {
		ctxLen = defaultRequestContext
	}
	usd := maxCost(promptBound(job), job.MaxTokens, ctxLen, job.Prices)
	if job.Kind == wire.KindEmbedding {
		usd = float64(embedPromptBound(job, ctxLen)) * job.Prices.PromptPerMTok / 1e6
	}
	if job.N > 1 {
		// Each further completion may cost as much as the longest one
		// (a prompt of one token leaves it the most room).
		usd += float64(job.N-1) * maxCost(1, job.MaxTokens, ctxLen, wire.Prices{CompletionPerMTok: job.Prices.CompletionPerMTok})
	}
	res, err := h.HoldBudget(ctx, key.ID, job.ID, usd, job.Deadline.Add(holdOverrun))
	if err != nil {
		s.log.Error("holding budget", "key", key.ID, "err", err)
		e := errStatus(http.StatusServiceUnavailable, "server_error", "registry_unavailable",
			"this API key has a budget, which cannot be checked right now; retry later")
		e.RetryAfter = 1
		return nil, e
	}
	if !res.Held {
		left := max(0, res.BudgetUSD-res.SpentUSD-res.HeldUSD)
		return nil, errStatus(http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota",
			"this API key's budget of $%.2f has $%.6f left ($%.6f spent, $%.6f held by requests in flight), less than this request may cost ($%.6f at most, for its prompt and max_tokens); lower max_tokens, wait for requests in flight, or ask an admin for a larger budget",
			res.BudgetUSD, left, res.SpentUSD, res.HeldUSD, usd)
	}
	return &budgetHold{s: s, h: h, id: job.ID}, nil
}

// endHold ends the hold of a request that this activator did not admit
// (an async job's result folded here): any activator can, the hold is in
// Postgres.
func (s *Server) endHold(id string, budgeted bool, usage *wire.Usage, prices wire.Prices, ran bool) {
	if h, ok := s.reg.(budgetHolder); ok && budgeted {
		(&budgetHold{s: s, h: h, id: id}).end(usage, prices, ran)
	}
}

// end settles the hold: to the request's real cost when it finished
// (usage non-nil), dropped when no runner ever had it, and otherwise kept
// at its maximum until the runner's usage record ends it (a runner may
// have billed part of the work, or the prompt of one it refused, such as
// context_length_exceeded) or holdIngest passes.
func (b *budgetHold) end(usage *wire.Usage, prices wire.Prices, ran bool) {
	if b == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	switch {
	case usage != nil:
		usd := cost(*usage, prices)
		err = b.h.SettleBudget(ctx, b.id, &usd, time.Now().Add(holdIngest))
	case !ran:
		err = b.h.ReleaseBudget(ctx, b.id)
	default:
		err = b.h.SettleBudget(ctx, b.id, nil, time.Now().Add(holdIngest))
	}
	if err != nil {
		// The hold lapses by itself; until then the key has less budget.
		b.s.log.Warn("ending budget hold", "request", b.id, "err", err)
	}
}

// billed is what the relay's request used, the prices and whether a
// runner had it, for budgetHold.end; a nil relay is a request never
// queued.
func (rl *relay) billed() (*wire.Usage, wire.Prices, bool) {
	if rl == nil {
		return nil, wire.Prices{}, false
	}
	return rl.done, rl.prices, rl.started || rl.runner != "" || rl.failed
}
