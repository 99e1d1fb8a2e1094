package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"
)

// TestInvoiceTotalsAreTheSumOfRows fills a month with request and runner
// records at awkward prices, plus records of the month before and after and
// of another tenant, and checks that each invoice line and the total equal
// the exact sums of the month's rows (read back from Postgres and added as
// rationals here, not by the invoice's own query).
func TestInvoiceTotalsAreTheSumOfRows(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, _, _, err := s.CreateTenant(ctx, "invoiced", Quotas{})
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := s.CreateTenant(ctx, "not-invoiced", Quotas{})
	if err != nil {
		t.Fatal(err)
	}
	month := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	prices := []float64{0.1, 0.3, 2.5, 0.15, 0.6, 1.0 / 3, 7e-9}
	n := 0
	for i, at := range []time.Time{month.Add(-time.Nanosecond * 1000), month, month.Add(15 * 24 * time.Hour), month.AddDate(0, 1, 0).Add(-time.Millisecond), month.AddDate(0, 1, 0)} {
		for j, tn := range []string{tenant.ID, other.ID} {
			for k := range 3 {
				n++
				dep := fmt.Sprintf("dep-%d", k%2)
				if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: fmt.Sprintf("r-%d-%d-%d", i, j, k), Deployment: dep, DeploymentID: "id-" + dep,
					TenantID: tn, KeyID: "key", PromptTokens: 1000*i + 7*k + 1, CompletionTokens: 333*k + i,
					PromptPricePerMTok: prices[(i+k)%len(prices)], CompletionPricePerMTok: prices[(i+2*k+1)%len(prices)], Status: "ok", CreatedAt: at}); err != nil {
					t.Fatal(err)
				}
				if _, err := s.RecordRunnerUsage(ctx, RunnerUsage{RunnerID: fmt.Sprintf("run-%d-%d-%d", i, j, k), Deployment: dep, DeploymentID: "id-" + dep,
					TenantID: tn, StartedAt: at.Add(-time.Duration(1000+137*n) * time.Millisecond), EndedAt: at,
					PricePerSecond: prices[(i+k+3)%len(prices)]}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	inv, err := s.Invoice(ctx, tenant.ID, month)
	if err != nil {
		t.Fatal(err)
	}
	if len(inv.Lines) != 2 {
		t.Fatalf("invoice has %d lines, want 2 (one per deployment): %+v", len(inv.Lines), inv.Lines)
	}
	// The expected sums, from the rows themselves.
	sumOf := func(query string, args ...any) *big.Rat {
		t.Helper()
		rows, err := s.pool.Query(ctx, query, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		sum := new(big.Rat)
		for rows.Next() {
			var v string
			if err := rows.Scan(&v); err != nil {
				t.Fatal(err)
			}
			r, ok := new(big.Rat).SetString(v)
			if !ok {
				t.Fatalf("%q is not a decimal", v)
			}
			sum.Add(sum, r)
		}
		return sum
	}
	from, to := month, month.AddDate(0, 1, 0)
	check := func(what, got string, want *big.Rat) {
		t.Helper()
		g, ok := new(big.Rat).SetString(got)
		if !ok || g.Cmp(want) != 0 {
			t.Errorf("%s = %s, want the sum of the rows %s", what, got, want.FloatString(9))
		}
	}
	wantAll := new(big.Rat)
	for _, l := range inv.Lines {
		req := sumOf(`SELECT cost_usd::text FROM usage WHERE tenant_id = $1 AND deployment_id = $2 AND created_at >= $3 AND created_at < $4`, tenant.ID, l.DeploymentID, from, to)
		run := sumOf(`SELECT cost_usd::text FROM runner_usage WHERE tenant_id = $1 AND deployment_id = $2 AND ended_at >= $3 AND ended_at < $4`, tenant.ID, l.DeploymentID, from, to)
		secs := sumOf(`SELECT seconds::text FROM runner_usage WHERE tenant_id = $1 AND deployment_id = $2 AND ended_at >= $3 AND ended_at < $4`, tenant.ID, l.DeploymentID, from, to)
		check(l.Deployment+" request cost", l.RequestCostUSD, req)
		check(l.Deployment+" runner cost", l.RunnerCostUSD, run)
		check(l.Deployment+" runner seconds", l.RunnerSeconds, secs)
		check(l.Deployment+" cost", l.CostUSD, new(big.Rat).Add(req, run))
		wantAll.Add(wantAll, req).Add(wantAll, run)
	}
	check("total cost", inv.Total.CostUSD, wantAll)
	check("total runner seconds", inv.Total.RunnerSeconds,
		sumOf(`SELECT seconds::text FROM runner_usage WHERE tenant_id = $1 AND ended_at >= $2 AND ended_at < $3`, tenant.ID, from, to))
	var tokens, requests int64
	if err := s.pool.QueryRow(ctx, `SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), count(*) FROM usage
		WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3`, tenant.ID, from, to).Scan(&tokens, &requests); err != nil {
		t.Fatal(err)
	}
	if inv.Total.PromptTokens+inv.Total.CompletionTokens != tokens || inv.Total.Requests != requests {
		t.Errorf("total %d tokens in %d requests, want %d in %d", inv.Total.PromptTokens+inv.Total.CompletionTokens, inv.Total.Requests, tokens, requests)
	}
	// Three of the five instants fall in the month, three requests each.
	if requests != 9 || wantAll.Sign() <= 0 {
		t.Errorf("the month holds %d requests costing %s; the test's data is wrong", requests, wantAll.FloatString(9))
	}
	// The per-month totals the triggers keep (what monthly budgets are
	// checked against) are the invoices' totals to the last digit, for
	// this month and the ones either side.
	for _, m := range []time.Time{month.AddDate(0, -1, 0), month, month.AddDate(0, 1, 0)} {
		minv, err := s.Invoice(ctx, tenant.ID, m)
		if err != nil {
			t.Fatal(err)
		}
		var kept string
		if err := s.pool.QueryRow(ctx, `SELECT coalesce((SELECT spent_usd FROM tenant_month_spend WHERE tenant_id = $1 AND month = $2::date), 0)::text`,
			tenant.ID, m).Scan(&kept); err != nil {
			t.Fatal(err)
		}
		check(m.Format("2006-01")+" tenant_month_spend", kept, func() *big.Rat { r, _ := new(big.Rat).SetString(minv.Total.CostUSD); return r }())
	}
	if _, err := s.SetTenantQuotas(ctx, tenant.ID, Quotas{MonthlyBudgetUSD: new(float64)}); err != nil {
		t.Fatal(err)
	}
	spend, err := s.TenantMonthSpend(ctx, month.Add(20*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := spend[other.ID]; ok || len(spend) == 0 {
		t.Errorf("TenantMonthSpend lists %v; want only the budgeted tenant", spend)
	}
	if got := new(big.Rat).SetFloat64(spend[tenant.ID]); new(big.Rat).Sub(got, wantAll).Abs(new(big.Rat).Sub(got, wantAll)).Cmp(big.NewRat(1, 1e9)) > 0 {
		t.Errorf("TenantMonthSpend = %v, want %s", spend[tenant.ID], wantAll.FloatString(9))
	}

	// An empty month is a zero invoice, not an error.
	empty, err := s.Invoice(ctx, tenant.ID, month.AddDate(-5, 0, 0))
	if err != nil || len(empty.Lines) != 0 || empty.Total.CostUSD != "0.000000000" {
		t.Errorf("empty month: %+v, %v", empty, err)
	}
}

// TestSuspendReachesOtherCaches suspends a tenant through one store and
// checks that another activator's cache (its own Postgres connection and
// notification listener) sees the key's tenant suspended within 1 s, and
// resumed again.
func TestSuspendReachesOtherCaches(t *testing.T) {
	s, dsn := openStore(t)
	ctx := t.Context()
	tenant, _, secret, err := s.CreateTenant(ctx, "suspendable", Quotas{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	c := NewCache(other, slog.Default())
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "initial load", func() bool {
		c.mu.RLock()
		defer c.mu.RUnlock()
		return c.loaded
	})
	for _, suspend := range []bool{true, false} {
		start := time.Now()
		if _, err := s.SuspendTenant(ctx, tenant.ID, suspend); err != nil {
			t.Fatal(err)
		}
		for {
			k, err := c.AuthenticateKey(ctx, secret)
			if err != nil {
				t.Fatal(err)
			}
			if k.Tenant.Suspended == suspend {
				t.Logf("suspended=%v seen by the other cache after %v", suspend, time.Since(start))
				break
			}
			if time.Since(start) > time.Second {
				t.Fatalf("suspended=%v not seen by the other cache within 1 s", suspend)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// The operator's tenant is never suspended, and a tenant with
	// deployments is not deleted.
	op, err := s.EnsureTenant(ctx, OperatorTenant)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.SuspendTenant(ctx, op.ID, true); !errors.Is(err, ErrOperatorTenant) {
		t.Errorf("suspending the operator's tenant: %v, want ErrOperatorTenant", err)
	}
	if err := s.DeleteTenant(ctx, op.ID); !errors.Is(err, ErrOperatorTenant) {
		t.Errorf("deleting the operator's tenant: %v, want ErrOperatorTenant", err)
	}
	art := putArtifact(t, s, strings.Repeat("c", 64))
	d := DefaultDeployment()
	d.TenantID, d.Name, d.ArtifactSHA256 = tenant.ID, "live", art.SHA256
	if _, err := s.PutDeployment(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, tenant.ID); !errors.Is(err, ErrTenantNotEmpty) {
		t.Errorf("deleting a tenant with a deployment: %v, want ErrTenantNotEmpty", err)
	}
	if err := s.DeleteDeployment(ctx, tenant.ID, "live"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTenant(ctx, tenant.ID); err != nil {
		t.Errorf("deleting an empty tenant: %v", err)
	}
	if _, err := c.Store.GetTenant(ctx, tenant.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted tenant: %v, want ErrNotFound", err)
	}
}

func TestQuotasValidate(t *testing.T) {
	neg, huge := -1.0, 2e9
	for _, tc := range []struct {
		q     Quotas
		field string
	}{
		{Quotas{}, ""},
		{Quotas{MaxDeployments: 3, MaxRunners: 2, MaxArtifactBytes: 1 << 40, RequestsPerMinute: 60, TokensPerMinute: 1000}, ""},
		{Quotas{MaxDeployments: -1}, "max_deployments"},
		{Quotas{MaxRunners: -2}, "max_runners"},
		{Quotas{MaxArtifactBytes: -1}, "max_artifact_bytes"},
		{Quotas{TokensPerMinute: -1}, "tokens_per_minute"},
		{Quotas{MonthlyBudgetUSD: &neg}, "monthly_budget_usd"},
		{Quotas{MonthlyBudgetUSD: &huge}, "monthly_budget_usd"},
	} {
		err := tc.q.Validate()
		var fe *FieldError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%+v: %v", tc.q, err)
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
			t.Errorf("%+v: %v, want an error on %s", tc.q, err, tc.field)
		}
	}
}
