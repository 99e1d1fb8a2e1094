package activator

import (
	"net/http"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// A tenant's requests and tokens per minute bound all its keys together.
// They use the limiter's buckets under the name "tenant:"+ID (key IDs
// start with "key_", so the two never collide), with the same per-activator
// trade-off as key limits (limits.go).

func tenantBucket(key registry.APIKey) string { return "tenant:" + key.TenantID }

// admitTenant takes one request from the key's tenant's allowance, or says
// why not: its monthly budget (tenant_budget.go), then its rates.
func (l *limiter) admitTenant(key registry.APIKey, ts tenantSpender) *apiError {
	rpm, tpm := key.Tenant.RequestsPerMinute, key.Tenant.TokensPerMinute
	if rpm == 0 && tpm == 0 && key.Tenant.MonthlyBudgetUSD == nil {
		return nil
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.admitBudget(key, ts, now); e != nil {
		return e
	}
	st := l.state(tenantBucket(key))
	if tpm > 0 {
		st.tokens.refill(tpm, now)
		if w := st.tokens.wait(tpm, 1); w > 0 {
			return tenantRateLimited(w, "tokens per minute (%d)", tpm)
		}
	}
	if rpm > 0 {
		st.requests.refill(rpm, now)
		if w := st.requests.wait(rpm, 1); w > 0 {
			return tenantRateLimited(w, "requests per minute (%d)", rpm)
		}
		st.requests.level--
	}
	return nil
}

// chargeTenant records a finished request's tokens and cost against its
// tenant.
func (l *limiter) chargeTenant(key registry.APIKey, u wire.Usage, p wire.Prices) {
	tpm := key.Tenant.TokensPerMinute
	if tpm == 0 && key.Tenant.MonthlyBudgetUSD == nil {
		return
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.chargeBudget(key, u, p, now)
	if tpm == 0 {
		return
	}
	st := l.state(tenantBucket(key))
	st.tokens.refill(tpm, now)
	st.tokens.level -= float64(u.PromptTokens + u.CompletionTokens)
}

func tenantRateLimited(wait time.Duration, format string, args ...any) *apiError {
	e := rateLimited(wait, format, args...)
	e.Message = "rate limit reached for this tenant (all its keys together): " + e.Message[len("rate limit reached for this API key: "):]
	e.Status = http.StatusTooManyRequests
	return e
}
