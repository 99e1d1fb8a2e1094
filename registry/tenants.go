package registry

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"time"

	"github.com/jackc/pgx/v5"
)

// OperatorTenant is the tenant whose admin keys are platform operators:
// they manage tenants (create, suspend, set quotas, delete, read invoices)
// on top of administering their own tenant. It is the tenant
// INFER_ADMIN_KEY is installed into, so an existing installation's admin
// key becomes the operator without any new setting. Its user keys are
// ordinary users. It cannot be suspended or deleted: that would lock the
// operator out.
const OperatorTenant = "default"

// TenantState is what every request needs to know of a key's tenant; the
// cache loads it with the key (keyTenantColumns), so the request path runs
// no query for it.
type TenantState struct {
	Suspended bool
	// Operator: the key's tenant is OperatorTenant.
	Operator bool
	// RequestsPerMinute and TokensPerMinute are the tenant's rate quotas
	// across all its keys; 0 is unlimited.
	RequestsPerMinute int
	TokensPerMinute   int
	// MaxRunners is the tenant's runner quota (0: none), which the
	// activator names in a queued request's SSE comments.
	MaxRunners int
	// MonthlyBudgetUSD is the tenant's monthly budget (nil: none), which
	// the activator enforces from Cache.TenantSpend.
	MonthlyBudgetUSD *float64
}

// keyTenantColumns reads TenantState for an api_keys row (in SELECT and in
// INSERT … RETURNING alike).
const keyTenantColumns = `
	coalesce((SELECT t.suspended_at IS NOT NULL FROM tenants t WHERE t.id = api_keys.tenant_id), false),
	coalesce((SELECT t.name = '` + OperatorTenant + `' FROM tenants t WHERE t.id = api_keys.tenant_id), false),
	coalesce((SELECT t.requests_per_min FROM tenants t WHERE t.id = api_keys.tenant_id), 0),
	coalesce((SELECT t.tokens_per_min FROM tenants t WHERE t.id = api_keys.tenant_id), 0),
	coalesce((SELECT t.max_runners FROM tenants t WHERE t.id = api_keys.tenant_id), 0),
	(SELECT t.monthly_budget_usd::float8 FROM tenants t WHERE t.id = api_keys.tenant_id)`

// Quotas bound what a tenant may use. Zero values (nil for the budget) do
// not bound.
type Quotas struct {
	// MaxDeployments bounds the tenant's deployments.
	MaxDeployments int `json:"max_deployments"`
	// MaxRunners bounds the runners of all the tenant's deployments at
	// once; requests beyond them queue.
	MaxRunners int `json:"max_runners"`
	// MaxArtifactBytes bounds the total size of the weights the tenant
	// holds (each distinct artifact counted once).
	MaxArtifactBytes int64 `json:"max_artifact_bytes"`
	// RequestsPerMinute and TokensPerMinute bound all the tenant's keys
	// together, on top of each key's own limits.
	RequestsPerMinute int `json:"requests_per_minute"`
	TokensPerMinute   int `json:"tokens_per_minute"`
	// MonthlyBudgetUSD is what the tenant's usage may cost in a calendar
	// month (UTC): once the month's cost reaches it, the tenant's
	// inference requests are refused until the month ends or the budget
	// is raised (activator/tenant_budget.go); see also Invoice.OverBudget.
	MonthlyBudgetUSD *float64 `json:"monthly_budget_usd,omitempty"`
}

// Validate checks the quotas can be stored; the error is a *FieldError.
func (q Quotas) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"max_deployments", q.MaxDeployments}, {"max_runners", q.MaxRunners},
		{"requests_per_minute", q.RequestsPerMinute}, {"tokens_per_minute", q.TokensPerMinute}} {
		if f.v < 0 || f.v > MaxRatePerMinute {
			return fieldError(f.name, "%s is %d; it must be between 0 (unlimited) and %d", f.name, f.v, MaxRatePerMinute)
		}
	}
	if q.MaxArtifactBytes < 0 {
		return fieldError("max_artifact_bytes", "max_artifact_bytes is %d; it must be 0 (unlimited) or more", q.MaxArtifactBytes)
	}
	if q.MonthlyBudgetUSD != nil && !(*q.MonthlyBudgetUSD >= 0 && *q.MonthlyBudgetUSD <= MaxBudgetUSD) {
		return fieldError("monthly_budget_usd", "monthly_budget_usd is %v; it must be between 0 and %.0f US dollars", *q.MonthlyBudgetUSD, float64(MaxBudgetUSD))
	}
	return nil
}

const tenantColumns = `id, name, created_at, suspended_at, name = '` + OperatorTenant + `',
	max_deployments, max_runners, max_artifact_bytes, requests_per_min, tokens_per_min, monthly_budget_usd::float8,
	coalesce((SELECT m.spent_usd FROM tenant_month_spend m WHERE m.tenant_id = tenants.id
		AND m.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date), 0)::text`

func scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	q := &t.Quotas
	err := row.Scan(&t.ID, &t.Name, &t.CreatedAt, &t.SuspendedAt, &t.Operator,
		&q.MaxDeployments, &q.MaxRunners, &q.MaxArtifactBytes, &q.RequestsPerMinute, &q.TokensPerMinute, &q.MonthlyBudgetUSD,
		&t.MonthSpentUSD)
	return t, err
}

// CreateTenant creates a tenant with its first admin key and returns the
// key's secret, which cannot be recovered later. A taken name is
// ErrConflict.
func (s *Store) CreateTenant(ctx context.Context, name string, q Quotas) (Tenant, APIKey, string, error) {
	if err := ValidName(name); err != nil {
		return Tenant{}, APIKey{}, "", &FieldError{Field: "name", Err: err}
	}
	if err := q.Validate(); err != nil {
		return Tenant{}, APIKey{}, "", err
	}
	t, err := scanTenant(s.pool.QueryRow(ctx, `
		INSERT INTO tenants (id, name, max_deployments, max_runners, max_artifact_bytes, requests_per_min, tokens_per_min, monthly_budget_usd)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (name) DO NOTHING
		RETURNING `+tenantColumns,
		newID("tnt"), name, q.MaxDeployments, q.MaxRunners, q.MaxArtifactBytes, q.RequestsPerMinute, q.TokensPerMinute, q.MonthlyBudgetUSD))
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, APIKey{}, "", fmt.Errorf("tenant %q exists: %w", name, ErrConflict)
	}
	if err != nil {
		return Tenant{}, APIKey{}, "", fmt.Errorf("creating tenant %q: %w", name, err)
	}
	k, secret, err := s.CreateKey(ctx, t.ID, "first admin key", RoleAdmin)
	if err != nil {
		// A tenant nobody can administer is of no use: take it back.
		s.pool.Exec(context.WithoutCancel(ctx), `DELETE FROM tenants WHERE id = $1`, t.ID)
		return Tenant{}, APIKey{}, "", err
	}
	return t, k, secret, nil
}

// GetTenant returns a tenant by ID.
func (s *Store) GetTenant(ctx context.Context, id string) (Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx, `SELECT `+tenantColumns+` FROM tenants WHERE id = $1`, id))
	if err != nil {
		return Tenant{}, notFound(err, "tenant "+id)
	}
	return t, nil
}

// ListTenants returns every tenant, oldest first.
func (s *Store) ListTenants(ctx context.Context) ([]Tenant, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY created_at, id`)
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	ts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) { return scanTenant(r) })
	if err != nil {
		return nil, fmt.Errorf("listing tenants: %w", err)
	}
	return ts, nil
}

// SetTenantQuotas replaces a tenant's quotas.
func (s *Store) SetTenantQuotas(ctx context.Context, id string, q Quotas) (Tenant, error) {
	if err := q.Validate(); err != nil {
		return Tenant{}, err
	}
	t, err := scanTenant(s.pool.QueryRow(ctx, `
		UPDATE tenants SET max_deployments = $2, max_runners = $3, max_artifact_bytes = $4,
			requests_per_min = $5, tokens_per_min = $6, monthly_budget_usd = $7
		WHERE id = $1 RETURNING `+tenantColumns,
		id, q.MaxDeployments, q.MaxRunners, q.MaxArtifactBytes, q.RequestsPerMinute, q.TokensPerMinute, q.MonthlyBudgetUSD))
	if err != nil {
		return Tenant{}, notFound(err, "tenant "+id)
	}
	return t, nil
}

// ErrOperatorTenant: the operator's own tenant cannot be suspended or
// deleted.
var ErrOperatorTenant = errors.New("the operator's tenant cannot be suspended or deleted")

// SuspendTenant suspends (or, with suspend false, resumes) a tenant. The
// update notifies every activator's cache, which reloads the keys with
// their tenant's state: the tenant's keys answer 403 within a notification
// (milliseconds; TestSuspendReachesOtherCaches bounds it at 1 s).
// Suspending a suspended tenant keeps its first suspension time.
func (s *Store) SuspendTenant(ctx context.Context, id string, suspend bool) (Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx, `
		UPDATE tenants SET suspended_at = CASE WHEN $2 THEN coalesce(suspended_at, now()) END
		WHERE id = $1 AND ($2 = false OR name <> '`+OperatorTenant+`')
		RETURNING `+tenantColumns, id, suspend))
	if errors.Is(err, pgx.ErrNoRows) {
		if _, gerr := s.GetTenant(ctx, id); gerr == nil {
			return Tenant{}, ErrOperatorTenant
		}
	}
	if err != nil {
		return Tenant{}, notFound(err, "tenant "+id)
	}
	return t, nil
}

// ErrTenantNotEmpty: a tenant with deployments is not deleted.
var ErrTenantNotEmpty = errors.New("the tenant still has deployments")

// DeleteTenant deletes a tenant that has no deployments, with its keys and
// its claims on artifacts; its usage records stay (they are billing data).
// A tenant with deployments is refused with ErrTenantNotEmpty rather than
// cascaded: deleting a customer's live endpoints by one call is not what an
// operator expects, and the queues and runners of each deployment are
// removed by deleting the deployment. Suspend first to stop traffic.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	t, err := s.GetTenant(ctx, id)
	if err != nil {
		return err
	}
	if t.Operator {
		return ErrOperatorTenant
	}
	tag, err := s.pool.Exec(ctx, `
		DELETE FROM tenants t WHERE t.id = $1
		AND NOT EXISTS (SELECT 1 FROM deployments d WHERE d.tenant_id = t.id)`, id)
	if err != nil {
		return fmt.Errorf("deleting tenant %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		n, _ := s.CountDeployments(ctx, id)
		return fmt.Errorf("tenant %s has %d deployments: %w", id, n, ErrTenantNotEmpty)
	}
	return nil
}

// CountDeployments is how many deployments the tenant has.
func (s *Store) CountDeployments(ctx context.Context, tenantID string) (int, error) {
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM deployments WHERE tenant_id = $1`, tenantID).Scan(&n); err != nil {
		return 0, fmt.Errorf("counting deployments: %w", err)
	}
	return n, nil
}

// ArtifactBytes is the total size of the artifacts the tenant holds.
func (s *Store) ArtifactBytes(ctx context.Context, tenantID string) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `
		SELECT coalesce(sum(a.size), 0)::bigint FROM artifacts a
		JOIN artifact_owners o ON o.sha256 = a.sha256 WHERE o.tenant_id = $1`, tenantID).Scan(&n); err != nil {
		return 0, fmt.Errorf("summing artifact sizes: %w", err)
	}
	return n, nil
}

// TenantQuotas returns the tenant's quotas.
func (s *Store) TenantQuotas(ctx context.Context, tenantID string) (Quotas, error) {
	t, err := s.GetTenant(ctx, tenantID)
	return t.Quotas, err
}

// InvoiceLine totals one deployment's usage in a month. Money and
// runner-seconds are decimal strings, exactly as Postgres' numeric sums
// them: a float would drift over millions of records.
type InvoiceLine struct {
	DeploymentID     string `json:"deployment_id"`
	Deployment       string `json:"deployment"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	RequestCostUSD   string `json:"request_cost_usd"`
	RunnerSeconds    string `json:"runner_seconds"`
	RunnerCostUSD    string `json:"runner_cost_usd"`
	CostUSD          string `json:"cost_usd"`
}

// Invoice is a tenant's usage and cost for one calendar month (UTC): one
// line per deployment and their totals. Request records count by
// created_at, runner records by ended_at, as in UsageReport.
type Invoice struct {
	Object   string        `json:"object"`
	TenantID string        `json:"tenant_id"`
	Month    string        `json:"month"`
	Lines    []InvoiceLine `json:"lines"`
	Total    InvoiceLine   `json:"total"`
	// BudgetUSD is the tenant's monthly budget, if any, and OverBudget
	// whether the month's cost passed it.
	BudgetUSD  *float64 `json:"monthly_budget_usd,omitempty"`
	OverBudget bool     `json:"over_budget"`
}

// ParseMonth reads "2026-12" as the first instant of that month, UTC.
func ParseMonth(s string) (time.Time, error) {
	t, err := time.Parse("2006-01", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("month %q: want YYYY-MM such as 2026-12", s)
	}
	return t, nil
}

// Invoice totals the tenant's usage in the month starting at month.
func (s *Store) Invoice(ctx context.Context, tenantID string, month time.Time) (Invoice, error) {
	t, err := s.GetTenant(ctx, tenantID)
	if err != nil {
		return Invoice{}, err
	}
	from := time.Date(month.Year(), month.Month(), 1, 0, 0, 0, 0, time.UTC)
	to := from.AddDate(0, 1, 0)
	rows, err := s.pool.Query(ctx, `
		WITH r AS (
			SELECT deployment_id, deployment, count(*) AS requests,
				sum(prompt_tokens)::bigint AS pt, sum(completion_tokens)::bigint AS ct,
				sum(cost_usd) AS request_cost, 0::numeric AS seconds, 0::numeric AS runner_cost
			FROM usage WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3
			GROUP BY deployment_id, deployment
			UNION ALL
			SELECT deployment_id, deployment, 0, 0, 0, 0, sum(seconds), sum(cost_usd)
			FROM runner_usage WHERE tenant_id = $1 AND ended_at >= $2 AND ended_at < $3
			GROUP BY deployment_id, deployment
		)
		SELECT deployment_id, max(deployment), sum(requests)::bigint, sum(pt)::bigint, sum(ct)::bigint,
			sum(request_cost)::text, sum(seconds)::text, sum(runner_cost)::text,
			(sum(request_cost) + sum(runner_cost))::text
		FROM r GROUP BY deployment_id ORDER BY max(deployment), deployment_id`, tenantID, from, to)
	if err != nil {
		return Invoice{}, fmt.Errorf("invoicing tenant %s: %w", tenantID, err)
	}
	lines, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (InvoiceLine, error) {
		var l InvoiceLine
		err := r.Scan(&l.DeploymentID, &l.Deployment, &l.Requests, &l.PromptTokens, &l.CompletionTokens,
			&l.RequestCostUSD, &l.RunnerSeconds, &l.RunnerCostUSD, &l.CostUSD)
		return l, err
	})
	if err != nil {
		return Invoice{}, fmt.Errorf("invoicing tenant %s: %w", tenantID, err)
	}
	inv := Invoice{Object: "invoice", TenantID: tenantID, Month: from.Format("2006-01"), Lines: lines, BudgetUSD: t.Quotas.MonthlyBudgetUSD}
	if inv.Lines == nil {
		inv.Lines = []InvoiceLine{}
	}
	inv.Total, err = SumInvoiceLines(inv.Lines)
	if err != nil {
		return Invoice{}, err
	}
	if b := inv.BudgetUSD; b != nil {
		total, _ := new(big.Rat).SetString(inv.Total.CostUSD)
		inv.OverBudget = total.Cmp(new(big.Rat).SetFloat64(*b)) > 0
	}
	return inv, nil
}

// SumInvoiceLines totals lines exactly (decimal strings added as
// rationals), so the total is the sum of the lines to the last digit.
func SumInvoiceLines(lines []InvoiceLine) (InvoiceLine, error) {
	tot := InvoiceLine{Deployment: "total"}
	var reqCost, secs, runCost, cost big.Rat
	for _, l := range lines {
		tot.Requests += l.Requests
		tot.PromptTokens += l.PromptTokens
		tot.CompletionTokens += l.CompletionTokens
		for _, f := range []struct {
			sum *big.Rat
			v   string
		}{{&reqCost, l.RequestCostUSD}, {&secs, l.RunnerSeconds}, {&runCost, l.RunnerCostUSD}, {&cost, l.CostUSD}} {
			v, ok := new(big.Rat).SetString(f.v)
			if !ok {
				return InvoiceLine{}, fmt.Errorf("invoice line %s: %q is not a decimal", l.DeploymentID, f.v)
			}
			f.sum.Add(f.sum, v)
		}
	}
	// numeric(20, 9) columns: 9 decimals hold every digit of the sums.
	tot.RequestCostUSD, tot.RunnerSeconds = reqCost.FloatString(9), secs.FloatString(3)
	tot.RunnerCostUSD, tot.CostUSD = runCost.FloatString(9), cost.FloatString(9)
	return tot, nil
}

// TenantMonthSpend returns what each tenant with a monthly budget has
// spent in the calendar month (UTC) holding at: its requests' and runners'
// cost, from tenant_month_spend (kept by triggers as usage is recorded, so
// this reads one row per budgeted tenant, not their usage).
func (s *Store) TenantMonthSpend(ctx context.Context, at time.Time) (map[string]float64, error) {
	at = at.UTC()
	month := time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
	rows, err := s.pool.Query(ctx, `
		SELECT t.id, coalesce(m.spent_usd, 0)::float8
		FROM tenants t LEFT JOIN tenant_month_spend m ON m.tenant_id = t.id AND m.month = $1::date
		WHERE t.monthly_budget_usd IS NOT NULL`, month)
	if err != nil {
		return nil, fmt.Errorf("reading tenants' spend this month: %w", err)
	}
	spend := map[string]float64{}
	var id string
	var usd float64
	if _, err := pgx.ForEachRow(rows, []any{&id, &usd}, func() error {
		spend[id] = usd
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reading tenants' spend this month: %w", err)
	}
	return spend, nil
}
