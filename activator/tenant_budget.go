package activator

import (
	"net/http"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// A tenant's monthly budget is enforced where requests are admitted, the
// way a key's budget gets its quick first refusal (limits.go), with no
// query per request: each activator's registry cache reloads what every
// budgeted tenant has spent this calendar month (UTC) every
// registry.SpendRefresh (5 s) from tenant_month_spend, which triggers keep
// exact as usage and runner records are stored; the limiter adds the cost
// of the requests this activator saw finish since (under the tenant's
// bucket, tenantBucket). A tenant whose month-to-date cost has reached its
// budget is refused on the inference routes, sync and async. The check
// costs about 0.7 µs and two small allocations per request
// (BenchmarkAdmitTenantBudget, shared 2-core machine).
//
// What holds with several activators: every activator reads the same
// figure within one refresh plus ingestion (the control plane stores
// usage records within about a second), so a tenant may overshoot its
// budget by what its requests in flight, and those finishing on other
// activators within that bound, cost, and by its runners' cost until the
// runner stops (runner-seconds are recorded when a runner ends). A key
// budget, which must never be overshot, takes a hold in Postgres per
// request instead (budget.go); a monthly budget is a spending cap on a
// customer's bill, where a few seconds of overshoot are acceptable and a
// Postgres round trip on every request of every budgeted tenant is not.
//
// The refusal is 429 with type insufficient_quota, OpenAI's answer when an
// account's quota or billing limit is used up (its SDKs raise
// RateLimitError, which callers already treat as "stop and check the
// account"), and code budget_exceeded, so a client can tell it from a
// key's own budget (code insufficient_quota). 402 would be truer to HTTP,
// but no OpenAI client knows it.

// tenantSpender is the part of registry.Cache monthly budgets use; a
// registry without it enforces them from this activator's own increments
// only.
type tenantSpender interface {
	TenantSpend(tenantID string) (float64, time.Time)
}

// monthStart is the first instant of t's calendar month, UTC.
func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

// monthSpend is what a tenant has spent in now's month: base, the spend
// the cache loaded as of asOf (worth nothing if asOf is in an earlier
// month), plus the costs in local that finished after asOf and in now's
// month, and the costs it keeps (the others are in base or last month).
func monthSpend(base float64, asOf time.Time, local []spent, now time.Time) (float64, []spent) {
	from := monthStart(now)
	if asOf.Before(from) {
		base, asOf = 0, from.Add(-time.Nanosecond)
	}
	return addLocal(base, asOf, local)
}

// admitBudget refuses the key's request if its tenant's month-to-date
// spend has reached its monthly budget. Called with l.mu held.
func (l *limiter) admitBudget(key registry.APIKey, ts tenantSpender, now time.Time) *apiError {
	b := key.Tenant.MonthlyBudgetUSD
	if b == nil {
		return nil
	}
	var base float64
	var asOf time.Time
	if ts != nil {
		base, asOf = ts.TenantSpend(key.TenantID)
	}
	st := l.state(tenantBucket(key))
	used, keep := monthSpend(base, asOf, st.local, now)
	st.local = keep
	if used < *b {
		return nil
	}
	next := monthStart(now).AddDate(0, 1, 0)
	return errStatus(http.StatusTooManyRequests, "insufficient_quota", "budget_exceeded",
		"this API key's tenant has used its monthly budget of $%.2f ($%.6f spent since %s); requests are refused until %s, or until the platform operator raises the budget",
		*b, used, monthStart(now).Format("2006-01-02"), next.Format(time.RFC3339))
}

// chargeBudget adds a finished request's cost to its tenant's
// month-to-date spend on this activator. Called with l.mu held.
func (l *limiter) chargeBudget(key registry.APIKey, u wire.Usage, p wire.Prices, now time.Time) {
	if key.Tenant.MonthlyBudgetUSD == nil {
		return
	}
	st := l.state(tenantBucket(key))
	st.local = append(st.local, spent{at: now, usd: cost(u, p)})
}

// tenantSpender returns the registry's tenant spend view, if it has one.
func (s *Server) tenantSpender() tenantSpender {
	ts, _ := s.reg.(tenantSpender)
	return ts
}
