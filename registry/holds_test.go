package registry

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestHoldBudgetConcurrent: fifty holds race for a budget that fits
// three; exactly three are taken. A stored usage record ends its request's
// hold and counts as spend instead, once, and a released or expired hold
// frees its share.
func TestHoldBudgetConcurrent(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, _ := s.EnsureTenant(ctx, "holds")
	budget := 0.01
	key, _, err := s.CreateLimitedKey(ctx, tenant.ID, "k", RoleUser, Limits{BudgetUSD: &budget})
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []string
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("req-%d", i)
			h, err := s.HoldBudget(ctx, key.ID, id, 0.003, later)
			if err != nil {
				t.Error(err)
				return
			}
			if h.Held {
				mu.Lock()
				held = append(held, id)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(held) != 3 {
		t.Fatalf("%d holds of $0.003 taken on a $0.01 budget, want 3", len(held))
	}

	// The first request finished and cost $0.002: its usage record ends
	// the hold and becomes spend (a redelivery counts once).
	rec := UsageRecord{RequestID: held[0], Deployment: "d", KeyID: key.ID, PromptTokens: 1000, CompletionTokens: 100,
		Status: "ok", PromptPricePerMTok: 1, CompletionPricePerMTok: 10}
	for range 2 {
		if _, err := s.RecordUsage(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.HoldBudget(ctx, key.ID, "after-usage", 0.003, later)
	if err != nil {
		t.Fatal(err)
	}
	// $0.002 spent + $0.006 held + $0.003 > $0.01.
	if h.Held || h.SpentUSD != 0.002 || h.HeldUSD != 0.006 {
		t.Fatalf("got %+v, want refused at $0.002 spent and $0.006 held", h)
	}
	// Settling to the real cost frees the rest at once.
	if err := s.SettleBudget(ctx, held[1], ptr(0.001), later); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.HoldBudget(ctx, key.ID, "after-settle", 0.003, later); !h.Held {
		t.Fatalf("refused after settling: %+v", h)
	}
	// Released and expired holds count no more.
	if err := s.ReleaseBudget(ctx, "after-settle"); err != nil {
		t.Fatal(err)
	}
	if err := s.SettleBudget(ctx, held[2], nil, time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	h, err = s.HoldBudget(ctx, key.ID, "last", 0.007, later)
	if err != nil {
		t.Fatal(err)
	}
	// $0.002 + $0.001 + $0.007 = $0.01: exactly the budget.
	if !h.Held || h.HeldUSD != 0.001 {
		t.Fatalf("got %+v, want held with only $0.001 held before", h)
	}
}

func ptr[T any](v T) *T { return &v }
