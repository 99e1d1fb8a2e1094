package registry

import (
	"context"
	"fmt"
	"time"
)

// BudgetHold is the outcome of asking to hold part of a key's budget.
type BudgetHold struct {
	// Held says the hold was taken; otherwise it would have exceeded the
	// budget.
	Held bool
	// BudgetUSD, SpentUSD and HeldUSD are the key's budget, what its
	// recorded requests cost, and what its other requests in flight hold,
	// just before this hold.
	BudgetUSD, SpentUSD, HeldUSD float64
}

// HoldBudget holds usd of the key's budget for a request until expires,
// unless the key's spend, its other holds and usd together exceed its
// budget. It is atomic across every caller of one Postgres: concurrent
// requests on one key are decided one after another. The hold ends when
// the request's usage record is stored (RecordUsage), when it is released,
// or at expires, whichever comes first.
func (s *Store) HoldBudget(ctx context.Context, keyID, requestID string, usd float64, expires time.Time) (BudgetHold, error) {
	var h BudgetHold
	var budget *float64
	err := s.pool.QueryRow(ctx, `
		SELECT held, budget::float8, spent::float8, holding::float8
		FROM infer_hold_budget($1, $2, $3::float8::numeric, $4)`,
		keyID, requestID, usd, expires).Scan(&h.Held, &budget, &h.SpentUSD, &h.HeldUSD)
	if err != nil {
		return BudgetHold{}, fmt.Errorf("holding budget of key %s: %w", keyID, err)
	}
	if budget != nil {
		h.BudgetUSD = *budget
	}
	return h, nil
}

// Holds are committed without waiting for the disk flush
// (synchronous_commit off for their transactions only): a Postgres crash
// may forget the last few milliseconds of them, letting those requests
// overspend once, which is worth a hold costing a round trip rather than a
// flush. Measured here (shared 2-core machine, local Postgres, 500 calls
// each, 550 live holds on the key at the end): a hold 4.6 ms with the
// flush, 0.3 to 1.2 ms without over three runs; a settle 2.4 ms and
// 0.25 ms; a SELECT 1 0.1 to 0.17 ms.

// SettleBudget sets a request's hold to what the request really cost (nil:
// keep what it holds), until its usage record is stored or expires. A hold
// already ended is left ended.
func (s *Store) SettleBudget(ctx context.Context, requestID string, usd *float64, expires time.Time) error {
	_, err := s.pool.Exec(ctx, `
		WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
		UPDATE budget_holds SET usd = coalesce($2::float8::numeric, usd), expires_at = $3
		FROM async WHERE request_id = $1`,
		requestID, usd, expires)
	if err != nil {
		return fmt.Errorf("settling budget hold of request %s: %w", requestID, err)
	}
	return nil
}

// ReleaseBudget ends a request's hold: the request never ran.
func (s *Store) ReleaseBudget(ctx context.Context, requestID string) error {
	if _, err := s.pool.Exec(ctx, `
		WITH async AS (SELECT set_config('synchronous_commit', 'off', true))
		DELETE FROM budget_holds USING async WHERE request_id = $1`, requestID); err != nil {
		return fmt.Errorf("releasing budget hold of request %s: %w", requestID, err)
	}
	return nil
}
