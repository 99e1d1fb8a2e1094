package activator

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Key limits are enforced per activator, from memory: each activator keeps
// a token bucket per key for requests and for tokens per minute, and adds
// the cost of the requests it relayed to the spend the registry cache last
// loaded. Nothing on the request path queries Postgres or NATS. An async
// job's tokens are charged by the activator that folds its result into the
// job record, which need not be the one that admitted it.
//
// The trade-off: with N activators behind a load balancer a key can get up
// to N times its per-minute limits. The budget check here, from the spend
// the cache loaded, is only a quick first refusal: it lags by a spend
// refresh (registry.SpendRefresh) plus ingestion and counts nothing in
// flight. What holds a budget is the hold each request takes in Postgres
// before it is queued (budget.go). Shared counters (a NATS KV bucket updated with
// compare-and-swap) would make limits exact across activators at the price
// of a NATS round trip, and contention on one key, per request; that can be
// added behind this type if exact limits ever matter more than latency.

// spender is the part of registry.Cache budgets use; a registry without it
// enforces budgets from this activator's own increments only.
type spender interface {
	Spend(keyID string) (float64, time.Time)
}

type limiter struct {
	mu   sync.Mutex
	keys map[string]*keyState
	now  func() time.Time
}

// keyState is one key's buckets and local spend.
type keyState struct {
	requests, tokens bucket
	// local is cost this activator saw finish, by time, not yet in the
	// spend the cache loaded.
	local []spent
}

type spent struct {
	at  time.Time
	usd float64
}

// bucket is a token bucket holding up to perMinute, refilled at
// perMinute/60 a second. Its level may go negative: tokens are charged when
// a request finishes, and the key then waits until the debt is repaid.
type bucket struct {
	level float64
	last  time.Time
}

func (b *bucket) refill(perMinute int, now time.Time) {
	if b.last.IsZero() {
		b.level, b.last = float64(perMinute), now
		return
	}
	b.level = min(float64(perMinute), b.level+now.Sub(b.last).Seconds()*float64(perMinute)/60)
	b.last = now
}

// wait is how long until the bucket holds n.
func (b *bucket) wait(perMinute int, n float64) time.Duration {
	if b.level >= n {
		return 0
	}
	return time.Duration((n - b.level) / (float64(perMinute) / 60) * float64(time.Second))
}

func newLimiter() *limiter {
	return &limiter{keys: map[string]*keyState{}, now: time.Now}
}

func (l *limiter) state(id string) *keyState {
	st, ok := l.keys[id]
	if !ok {
		st = &keyState{}
		l.keys[id] = st
	}
	return st
}

// admit takes one request from the key's allowance, or says why not.
func (l *limiter) admit(key registry.APIKey, sp spender) *apiError {
	if key.RequestsPerMinute == 0 && key.TokensPerMinute == 0 && key.BudgetUSD == nil {
		return nil
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(key.ID)
	if key.BudgetUSD != nil {
		if used := st.spend(key.ID, sp); used >= *key.BudgetUSD {
			return errStatus(http.StatusTooManyRequests, "insufficient_quota", "insufficient_quota",
				"this API key has used its budget of $%.2f ($%.6f spent); ask an admin for a new key or a larger budget", *key.BudgetUSD, used)
		}
	}
	if key.TokensPerMinute > 0 {
		st.tokens.refill(key.TokensPerMinute, now)
		if w := st.tokens.wait(key.TokensPerMinute, 1); w > 0 {
			return rateLimited(w, "tokens per minute (%d)", key.TokensPerMinute)
		}
	}
	if key.RequestsPerMinute > 0 {
		st.requests.refill(key.RequestsPerMinute, now)
		if w := st.requests.wait(key.RequestsPerMinute, 1); w > 0 {
			return rateLimited(w, "requests per minute (%d)", key.RequestsPerMinute)
		}
		st.requests.level--
	}
	return nil
}

// setRateHeaders sets OpenAI's x-ratelimit-* headers for a key with
// per-minute limits: each limit, what is left of it now, and how long
// until its bucket is full again (a Go duration, as OpenAI writes them:
// "1s", "6m0s"). A key without a limit of a kind gets no headers for it.
func (l *limiter) setRateHeaders(key registry.APIKey, h http.Header) {
	if key.RequestsPerMinute == 0 && key.TokensPerMinute == 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(key.ID)
	for _, r := range []struct {
		kind      string
		perMinute int
		b         *bucket
	}{{"requests", key.RequestsPerMinute, &st.requests}, {"tokens", key.TokensPerMinute, &st.tokens}} {
		if r.perMinute == 0 {
			continue
		}
		r.b.refill(r.perMinute, now)
		h.Set("x-ratelimit-limit-"+r.kind, strconv.Itoa(r.perMinute))
		h.Set("x-ratelimit-remaining-"+r.kind, strconv.Itoa(max(0, int(math.Floor(r.b.level)))))
		h.Set("x-ratelimit-reset-"+r.kind, r.b.wait(r.perMinute, float64(r.perMinute)).Round(time.Millisecond).String())
	}
}

// spend is what the key has spent: the cache's figure plus what this
// activator saw finish since the cache loaded it. Called with l.mu held.
func (st *keyState) spend(id string, sp spender) float64 {
	var base float64
	var asOf time.Time
	if sp != nil {
		base, asOf = sp.Spend(id)
	}
	total, keep := addLocal(base, asOf, st.local)
	st.local = keep
	return total
}

// addLocal is base, a spend loaded as of asOf, plus the costs in local
// seen finish after asOf, and those costs (the others are in base). It
// reuses local's array.
func addLocal(base float64, asOf time.Time, local []spent) (float64, []spent) {
	keep := local[:0]
	total := base
	for _, s := range local {
		if s.at.After(asOf) {
			keep = append(keep, s)
			total += s.usd
		}
	}
	return total, keep
}

// charge records a finished request's tokens and cost against its key.
func (l *limiter) charge(key registry.APIKey, u wire.Usage, p wire.Prices) {
	if key.TokensPerMinute == 0 && key.BudgetUSD == nil {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.state(key.ID)
	if key.TokensPerMinute > 0 {
		st.tokens.refill(key.TokensPerMinute, now)
		st.tokens.level -= float64(u.PromptTokens + u.CompletionTokens)
	}
	if key.BudgetUSD != nil {
		st.local = append(st.local, spent{at: now, usd: cost(u, p)})
	}
}

// cost is what a request costs at prices p, as the registry computes it.
func cost(u wire.Usage, p wire.Prices) float64 {
	return (float64(u.PromptTokens)*p.PromptPerMTok + float64(u.CompletionTokens)*p.CompletionPerMTok) / 1e6
}

func rateLimited(wait time.Duration, format string, args ...any) *apiError {
	e := errStatus(http.StatusTooManyRequests, "requests", "rate_limit_exceeded",
		"rate limit reached for this API key: "+format+"; retry after the Retry-After header's seconds", args...)
	e.RetryAfter = int(math.Ceil(wait.Seconds()))
	return e
}

// spender returns the registry's spend view, if it has one.
func (s *Server) spender() spender {
	sp, _ := s.reg.(spender)
	return sp
}

// errDeploymentDenied is a key calling a deployment of its tenant that it
// is not allowed to.
func errDeploymentDenied(name string) *apiError {
	e := errStatus(http.StatusForbidden, "invalid_request_error", "permission_denied",
		"this API key may not call the model %q", name)
	e.Param = strp("model")
	return e
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
