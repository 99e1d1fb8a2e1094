package registry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// UsageRecord is one finished request, successful or not.
type UsageRecord struct {
	RequestID    string `json:"request_id"`
	Deployment   string `json:"deployment"`
	DeploymentID string `json:"deployment_id"`
	TenantID     string `json:"tenant_id"`
	KeyID        string `json:"key_id"`
	// KeyName is the key's name when listed (empty for a deleted key);
	// RecordUsage ignores it.
	KeyName          string  `json:"key_name"`
	RunnerID         string  `json:"runner_id"`
	PromptTokens     int     `json:"prompt_tokens"`
	CompletionTokens int     `json:"completion_tokens"`
	QueueWaitMS      float64 `json:"queue_wait_ms"`
	TTFTMS           float64 `json:"ttft_ms"`
	DurationMS       float64 `json:"duration_ms"`
	ColdStart        bool    `json:"cold_start"`
	Status           string  `json:"status"`
	FinishReason     string  `json:"finish_reason"`
	// Prices in force when the request ran, and what it cost at them.
	PromptPricePerMTok     float64   `json:"prompt_price_per_mtok"`
	CompletionPricePerMTok float64   `json:"completion_price_per_mtok"`
	CostUSD                float64   `json:"cost_usd"`
	CreatedAt              time.Time `json:"created_at"`
}

// UsageFilter selects usage records. Zero fields do not filter.
type UsageFilter struct {
	// TenantID limits records to one tenant; empty means all tenants.
	TenantID string
	// Deployment limits records to one deployment name.
	Deployment string
	// KeyID limits request records to one key's (runner records, which
	// belong to no key, are then left out).
	KeyID string
	// Since and Until bound CreatedAt: Since <= CreatedAt < Until.
	Since, Until time.Time
	// Limit caps how many records ListUsage returns (the newest); 0 means
	// no cap.
	Limit int
	// After, a request ID, starts the list after that record (keyset
	// paging: see ListUsagePage); empty starts at the newest.
	After string
}

// DeploymentUsage totals one deployment's usage records.
type DeploymentUsage struct {
	Deployment       string `json:"deployment"`
	Requests         int64  `json:"requests"`
	PromptTokens     int64  `json:"prompt_tokens"`
	CompletionTokens int64  `json:"completion_tokens"`
	ColdStarts       int64  `json:"cold_starts"`
}

// RecordUsage stores r unless a record with its request ID exists, and
// reports whether it was inserted. Usage arrives at least once from
// JetStream, so a redelivered record must not count twice. A missing
// tenant is filled in from the deployment the record names (see
// deploymentOfRecord); a missing CreatedAt becomes now.
func (s *Store) RecordUsage(ctx context.Context, r UsageRecord) (bool, error) {
	if r.RequestID == "" {
		return false, errors.New("usage record has no request ID")
	}
	var createdAt *time.Time
	if !r.CreatedAt.IsZero() {
		createdAt = &r.CreatedAt
	}
	tag, err := s.pool.Exec(ctx, `
		INSERT INTO usage (request_id, deployment, deployment_id, tenant_id, key_id, prompt_tokens,
			completion_tokens, queue_wait_ms, ttft_ms, duration_ms, cold_start, status, finish_reason,
			runner_id, created_at, price_prompt_per_mtok, price_completion_per_mtok, cost_usd)
		SELECT $1::text, $2::text,
			coalesce(nullif($3::text, ''), d.id, ''),
			coalesce(nullif($4::text, ''), d.tenant_id, ''),
			$5, $6, $7, $8, $9, $10, $11, $12, $13, $14, coalesce($15::timestamptz, now()),
			$16::float8::numeric, $17::float8::numeric,
			($6::int * $16::float8::numeric + $7::int * $17::float8::numeric) / 1000000
		FROM (SELECT 1) AS one
		LEFT JOIN LATERAL (`+deploymentOfRecord+`) d ON true
		ON CONFLICT (request_id) DO NOTHING`,
		r.RequestID, r.Deployment, r.DeploymentID, r.TenantID, r.KeyID, r.PromptTokens,
		r.CompletionTokens, r.QueueWaitMS, r.TTFTMS, r.DurationMS, r.ColdStart, r.Status, r.FinishReason,
		r.RunnerID, createdAt, r.PromptPricePerMTok, r.CompletionPricePerMTok)
	if err != nil {
		return false, fmt.Errorf("recording usage of request %s: %w", r.RequestID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// deploymentOfRecord finds the deployment a usage record ($2 name, $3 ID,
// $4 tenant) belongs to, to fill in what the record lacks: by ID when it
// has one, which is every record written since names became per tenant.
// A record from before carries only a name, which then still belonged to
// one deployment; it is attributed by name only when exactly one
// deployment (of the record's tenant, when it names one) has that name,
// never to whichever tenant holds the name now among several.
const deploymentOfRecord = `
	SELECT id, tenant_id FROM deployments
	WHERE CASE WHEN $3::text <> '' THEN id = $3::text
		ELSE name = $2::text AND ($4::text = '' OR tenant_id = $4::text)
			AND (SELECT count(*) FROM deployments x WHERE x.name = $2::text
				AND ($4::text = '' OR x.tenant_id = $4::text)) = 1
	END`

// usageWhere is the WHERE clause for a UsageFilter; its arguments are
// usageArgs(f).
const usageWhere = `
	WHERE ($1::text = '' OR tenant_id = $1)
	  AND ($2::text = '' OR deployment = $2)
	  AND ($3::timestamptz IS NULL OR created_at >= $3)
	  AND ($4::timestamptz IS NULL OR created_at < $4)
	  AND ($5::text = '' OR key_id = $5)`

func usageArgs(f UsageFilter) []any {
	optTime := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	return []any{f.TenantID, f.Deployment, optTime(f.Since), optTime(f.Until), f.KeyID}
}

// ListUsage returns the records f selects, newest first.
func (s *Store) ListUsage(ctx context.Context, f UsageFilter) ([]UsageRecord, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("usage limit %d is negative", f.Limit)
	}
	args := usageArgs(f)
	var limit *int
	if f.Limit > 0 {
		limit = &f.Limit
	}
	args = append(args, limit, f.After)
	// The cursor's (created_at, request_id) bounds the page; the plain
	// created_at <= lets the (…, created_at) indexes bound the scan.
	rows, err := s.pool.Query(ctx, `
		WITH cursor AS (SELECT created_at, request_id FROM usage
			WHERE request_id = $7 AND ($1::text = '' OR tenant_id = $1))
		SELECT request_id, deployment, deployment_id, tenant_id, key_id,
			coalesce((SELECT name FROM api_keys k WHERE k.id = usage.key_id), ''), runner_id, prompt_tokens,
			completion_tokens, queue_wait_ms, ttft_ms, duration_ms, cold_start, status, finish_reason, created_at,
			price_prompt_per_mtok::float8, price_completion_per_mtok::float8, cost_usd::float8
		FROM usage`+usageWhere+`
		  AND ($7::text = '' OR (created_at <= (SELECT created_at FROM cursor)
			AND (created_at, request_id) < (SELECT created_at, request_id FROM cursor)))
		ORDER BY created_at DESC, request_id DESC
		LIMIT $6`, args...)
	if err != nil {
		return nil, fmt.Errorf("listing usage: %w", err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (UsageRecord, error) {
		var r UsageRecord
		err := row.Scan(&r.RequestID, &r.Deployment, &r.DeploymentID, &r.TenantID, &r.KeyID, &r.KeyName, &r.RunnerID, &r.PromptTokens,
			&r.CompletionTokens, &r.QueueWaitMS, &r.TTFTMS, &r.DurationMS, &r.ColdStart, &r.Status, &r.FinishReason, &r.CreatedAt,
			&r.PromptPricePerMTok, &r.CompletionPricePerMTok, &r.CostUSD)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("listing usage: %w", err)
	}
	return recs, nil
}

// UsageSummary totals the records f selects per deployment, by name. Limit
// is ignored.
func (s *Store) UsageSummary(ctx context.Context, f UsageFilter) ([]DeploymentUsage, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT deployment, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0),
			count(*) FILTER (WHERE cold_start)
		FROM usage`+usageWhere+`
		GROUP BY deployment
		ORDER BY deployment`, usageArgs(f)...)
	if err != nil {
		return nil, fmt.Errorf("summarising usage: %w", err)
	}
	sums, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeploymentUsage, error) {
		var u DeploymentUsage
		err := row.Scan(&u.Deployment, &u.Requests, &u.PromptTokens, &u.CompletionTokens, &u.ColdStarts)
		return u, err
	})
	if err != nil {
		return nil, fmt.Errorf("summarising usage: %w", err)
	}
	return sums, nil
}
