package registry

import (
	"math/big"
	"strings"
	"testing"
	"time"
)

// TestBillingArithmetic checks costs exactly: each request's cost is its
// tokens at the prices it carried (not the deployment's current ones), a
// runner's cost is its seconds at its price, reports add both, and storing
// a record twice counts it once.
func TestBillingArithmetic(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, _ := s.EnsureTenant(ctx, "billing")
	other, _ := s.EnsureTenant(ctx, "billing-other")
	art := putArtifact(t, s, strings.Repeat("b", 64))
	d := DefaultDeployment()
	d.TenantID, d.Name, d.ArtifactSHA256 = tenant.ID, "billed", art.SHA256
	d.Prices = Prices{PromptPerMTok: 99, CompletionPerMTok: 99, RunnerSecond: 99} // not what records carry
	if _, err := s.PutDeployment(ctx, d); err != nil {
		t.Fatal(err)
	}
	key, _, err := s.CreateKey(ctx, tenant.ID, "k", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	recs := []struct {
		id                 string
		prompt, completion int
		pp, cp             float64
		at                 time.Time
	}{
		{"r1", 1000, 250, 2.5, 10, day},
		{"r2", 7, 3, 0.1, 0.3, day.Add(time.Hour)},
		{"r3", 123456, 654321, 0.15, 0.6, day.Add(24 * time.Hour)},
	}
	// want is the exact total, in rationals.
	want := new(big.Rat)
	for _, r := range recs {
		ur := UsageRecord{RequestID: r.id, Deployment: "billed", KeyID: key.ID, PromptTokens: r.prompt,
			CompletionTokens: r.completion, Status: "ok", PromptPricePerMTok: r.pp, CompletionPricePerMTok: r.cp, CreatedAt: r.at}
		for range 2 { // the second insert is a redelivery
			if _, err := s.RecordUsage(ctx, ur); err != nil {
				t.Fatal(err)
			}
		}
		c := new(big.Rat).Mul(big.NewRat(int64(r.prompt), 1), ratOf(r.pp))
		c.Add(c, new(big.Rat).Mul(big.NewRat(int64(r.completion), 1), ratOf(r.cp)))
		c.Quo(c, big.NewRat(1_000_000, 1))
		want.Add(want, c)
		// Each stored record carries its own exact cost.
		var got string
		if err := s.pool.QueryRow(ctx, `SELECT cost_usd::text FROM usage WHERE request_id = $1`, r.id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if g, _ := new(big.Rat).SetString(got); g.Cmp(c) != 0 {
			t.Errorf("%s: cost %s, want %s", r.id, got, c.FloatString(9))
		}
	}
	// A runner that lived 90.5 s at $0.002/s, recorded twice.
	ru := RunnerUsage{RunnerID: "run1", Deployment: "billed", StartedAt: day, EndedAt: day.Add(90500 * time.Millisecond), PricePerSecond: 0.002}
	for i := range 2 {
		ins, err := s.RecordRunnerUsage(ctx, ru)
		if err != nil {
			t.Fatal(err)
		}
		if ins != (i == 0) {
			t.Errorf("runner record insert %d reported inserted=%v", i, ins)
		}
	}

	var sum string
	if err := s.pool.QueryRow(ctx, `SELECT sum(cost_usd)::text FROM usage WHERE deployment = 'billed'`).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if g, _ := new(big.Rat).SetString(sum); g.Cmp(want) != 0 {
		t.Errorf("sum of request costs %s, want %s", sum, want.FloatString(9))
	}

	byDep, err := s.UsageReport(ctx, UsageFilter{TenantID: tenant.ID}, GroupByDeployment)
	if err != nil {
		t.Fatal(err)
	}
	wantF, _ := want.Float64()
	if len(byDep) != 1 {
		t.Fatalf("by deployment: %+v", byDep)
	}
	g := byDep[0]
	if g.Group != "billed" || g.Requests != 3 || g.PromptTokens != 1000+7+123456 || g.CompletionTokens != 250+3+654321 ||
		g.RunnerSeconds != 90.5 || g.RunnerCostUSD != 0.181 || g.RequestCostUSD != wantF || g.CostUSD != wantF+0.181 {
		t.Errorf("by deployment: %+v; want request cost %v, runner cost 0.181", g, wantF)
	}

	byDay, err := s.UsageReport(ctx, UsageFilter{TenantID: tenant.ID}, GroupByDay)
	if err != nil {
		t.Fatal(err)
	}
	if len(byDay) != 2 || byDay[0].Group != "2026-03-04" || byDay[0].Requests != 2 || byDay[0].RunnerSeconds != 90.5 ||
		byDay[1].Group != "2026-03-05" || byDay[1].Requests != 1 || byDay[1].RunnerSeconds != 0 {
		t.Errorf("by day: %+v", byDay)
	}

	byKey, err := s.UsageReport(ctx, UsageFilter{TenantID: tenant.ID}, GroupByKey)
	if err != nil {
		t.Fatal(err)
	}
	if len(byKey) != 2 || byKey[0].Group != "" || byKey[0].Requests != 0 || byKey[0].RunnerSeconds != 90.5 ||
		byKey[1].Group != key.ID || byKey[1].Requests != 3 {
		t.Errorf("by key: %+v", byKey)
	}
	// Filtered by key, runner time (which belongs to no key) is left out.
	onlyKey, err := s.UsageReport(ctx, UsageFilter{TenantID: tenant.ID, KeyID: key.ID, Since: day.Add(time.Minute)}, GroupByDay)
	if err != nil {
		t.Fatal(err)
	}
	if len(onlyKey) != 2 || onlyKey[0].Requests != 1 || onlyKey[0].RunnerSeconds != 0 {
		t.Errorf("one key since 10:01: %+v", onlyKey)
	}

	// Another tenant sees nothing.
	if g, err := s.UsageReport(ctx, UsageFilter{TenantID: other.ID}, GroupByDeployment); err != nil || len(g) != 0 {
		t.Errorf("other tenant's report: %+v, %v", g, err)
	}
	if _, err := s.UsageReport(ctx, UsageFilter{}, "week"); err == nil {
		t.Error("grouping by week worked")
	}
}

// TestKeyLimits checks that a key's restrictions are stored, returned and
// seen by the cache, and that spend is summed for budgeted keys only.
func TestKeyLimits(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, _ := s.EnsureTenant(ctx, "limits")
	budget := 1.25
	k, secret, err := s.CreateLimitedKey(ctx, tenant.ID, "lim", RoleUser,
		Limits{Deployments: []string{"a", "b"}, RequestsPerMinute: 5, TokensPerMinute: 100, BudgetUSD: &budget})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.AuthenticateKey(ctx, secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []APIKey{k, got} {
		if len(g.Deployments) != 2 || g.RequestsPerMinute != 5 || g.TokensPerMinute != 100 || g.BudgetUSD == nil || *g.BudgetUSD != 1.25 {
			t.Errorf("key limits %+v", g.Limits)
		}
	}
	if !got.Allows("a") || got.Allows("c") || !(Limits{}).Allows("c") {
		t.Error("Allows is wrong")
	}
	if _, _, err := s.CreateLimitedKey(ctx, tenant.ID, "bad", RoleUser, Limits{RequestsPerMinute: -1}); err == nil {
		t.Error("negative rpm accepted")
	}
	plain, _, err := s.CreateKey(ctx, tenant.ID, "plain", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	for i, kid := range []string{k.ID, k.ID, plain.ID} {
		if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "lim" + string(rune('0'+i)), Deployment: "a", KeyID: kid,
			PromptTokens: 1_000_000, PromptPricePerMTok: 0.5}); err != nil {
			t.Fatal(err)
		}
	}
	spend, err := s.SpendByKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if spend[k.ID] != 1 {
		t.Errorf("spend of budgeted key = %v, want 1", spend[k.ID])
	}
	if _, ok := spend[plain.ID]; ok {
		t.Error("spend is summed for a key without a budget")
	}
}

func ratOf(f float64) *big.Rat {
	// The decimal a price is written as, as Postgres reads a float8.
	r, _ := new(big.Rat).SetString(big.NewFloat(f).Text('g', 15))
	return r
}
