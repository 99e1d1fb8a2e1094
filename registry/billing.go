package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// RunnerUsage is one runner's lifetime: what a deployment pays for a runner
// existing, busy or idle, cold start included.
type RunnerUsage struct {
	RunnerID     string    `json:"runner_id"`
	Deployment   string    `json:"deployment"`
	DeploymentID string    `json:"deployment_id"`
	TenantID     string    `json:"tenant_id"`
	StartedAt    time.Time `json:"started_at"`
	EndedAt      time.Time `json:"ended_at"`
	// PricePerSecond is the deployment's runner-second price when the
	// runner ran.
	PricePerSecond float64 `json:"price_runner_second"`
	Seconds        float64 `json:"seconds"`
	CostUSD        float64 `json:"cost_usd"`
}

// RecordRunnerUsage stores a runner's lifetime unless one with its ID
// exists, and reports whether it was inserted. The cost is computed here,
// in numeric, from the price the record carries.
func (s *Store) RecordRunnerUsage(ctx context.Context, r RunnerUsage) (bool, error) {
	if r.RunnerID == "" {
		return false, errors.New("runner usage record has no runner ID")
	}
	if r.EndedAt.Before(r.StartedAt) {
		r.EndedAt = r.StartedAt
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO runner_usage (runner_id, deployment, deployment_id, tenant_id, started_at, ended_at,
			price_runner_second, seconds, cost_usd)
		SELECT $1::text, $2::text,
			coalesce(nullif($3::text, ''), d.id, ''),
			coalesce(nullif($4::text, ''), d.tenant_id, ''),
			$5::timestamptz, $6::timestamptz, $7::float8::numeric,
			round(extract(epoch FROM $6::timestamptz - $5::timestamptz), 3),
			round(extract(epoch FROM $6::timestamptz - $5::timestamptz), 3) * $7::float8::numeric
		FROM (SELECT 1) AS one
		LEFT JOIN LATERAL (`+deploymentOfRecord+`) d ON true
		ON CONFLICT (runner_id) DO NOTHING`,
		r.RunnerID, r.Deployment, r.DeploymentID, r.TenantID, r.StartedAt, r.EndedAt, r.PricePerSecond)
	if err != nil {
		return false, fmt.Errorf("recording usage of runner %s: %w", r.RunnerID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Usage report groupings.
const (
	GroupByDay        = "day"
	GroupByDeployment = "deployment"
	GroupByKey        = "key"
)

// UsageGroup totals usage for one day (UTC, "2006-01-02"), deployment or
// key. Runner-seconds belong to no key: grouped by key, they appear under
// the key "".
type UsageGroup struct {
	Group            string  `json:"group"`
	Requests         int64   `json:"requests"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	ColdStarts       int64   `json:"cold_starts"`
	RunnerSeconds    float64 `json:"runner_seconds"`
	RequestCostUSD   float64 `json:"request_cost_usd"`
	RunnerCostUSD    float64 `json:"runner_cost_usd"`
	CostUSD          float64 `json:"cost_usd"`
}

// UsageReport totals the request and runner records f selects, grouped by
// groupBy. Runner records are selected by ended_at and left out when f
// names a key. Limit is ignored.
func (s *Store) UsageReport(ctx context.Context, f UsageFilter, groupBy string) ([]UsageGroup, error) {
	var reqGroup, runGroup string
	switch groupBy {
	case GroupByDay, "":
		groupBy = GroupByDay
		reqGroup = `to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')`
		runGroup = `to_char(ended_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')`
	case GroupByDeployment:
		reqGroup, runGroup = `deployment`, `deployment`
	case GroupByKey:
		reqGroup, runGroup = `key_id`, `''`
	default:
		return nil, fmt.Errorf("grouping usage by %q: want day, deployment or key", groupBy)
	}
	rows, err := s.pool.Query(ctx, `
		WITH req AS (
			SELECT `+reqGroup+` AS g, count(*) AS requests, sum(prompt_tokens) AS prompt,
				sum(completion_tokens) AS completion, count(*) FILTER (WHERE cold_start) AS cold,
				sum(cost_usd) AS cost
			FROM usage`+usageWhere+`
			GROUP BY 1
		), run AS (
			SELECT `+runGroup+` AS g, sum(seconds) AS seconds, sum(cost_usd) AS cost
			FROM runner_usage
			WHERE ($1::text = '' OR tenant_id = $1)
			  AND ($2::text = '' OR deployment = $2)
			  AND ($3::timestamptz IS NULL OR ended_at >= $3)
			  AND ($4::timestamptz IS NULL OR ended_at < $4)
			  AND $5::text = ''
			GROUP BY 1
		)
		SELECT coalesce(req.g, run.g), coalesce(req.requests, 0), coalesce(req.prompt, 0),
			coalesce(req.completion, 0), coalesce(req.cold, 0),
			coalesce(run.seconds, 0)::float8, coalesce(req.cost, 0)::float8, coalesce(run.cost, 0)::float8,
			(coalesce(req.cost, 0) + coalesce(run.cost, 0))::float8
		FROM req FULL JOIN run ON req.g = run.g
		ORDER BY 1`, usageArgs(f)...)
	if err != nil {
		return nil, fmt.Errorf("reporting usage by %s: %w", groupBy, err)
	}
	groups, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (UsageGroup, error) {
		var g UsageGroup
		err := row.Scan(&g.Group, &g.Requests, &g.PromptTokens, &g.CompletionTokens, &g.ColdStarts,
			&g.RunnerSeconds, &g.RequestCostUSD, &g.RunnerCostUSD, &g.CostUSD)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("reporting usage by %s: %w", groupBy, err)
	}
	return groups, nil
}

// SpendByKey returns what each key's requests have cost so far, for keys
// with a budget (the only ones whose spend matters on the request path).
func (s *Store) SpendByKey(ctx context.Context) (map[string]float64, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT u.key_id, sum(u.cost_usd)::float8
		FROM usage u JOIN api_keys k ON k.id = u.key_id
		WHERE k.budget_usd IS NOT NULL AND k.revoked_at IS NULL
		GROUP BY u.key_id`)
	if err != nil {
		return nil, fmt.Errorf("summing spend by key: %w", err)
	}
	spend := map[string]float64{}
	var id string
	var usd float64
	_, err = pgx.ForEachRow(rows, []any{&id, &usd}, func() error {
		spend[id] = usd
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("summing spend by key: %w", err)
	}
	return spend, nil
}
