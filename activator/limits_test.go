package activator

import (
	"net/http"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

type fakeSpend struct {
	usd float64
	at  time.Time
}

func (f *fakeSpend) Spend(string) (float64, time.Time) { return f.usd, f.at }

func TestLimiter(t *testing.T) {
	budget := 0.001
	type step struct {
		advance time.Duration
		charge  *wire.Usage // charge instead of admitting
		want    string      // error code, "" for admitted
		retry   int         // Retry-After when refused
	}
	cases := []struct {
		name  string
		key   registry.APIKey
		spend *fakeSpend
		steps []step
	}{
		{"unlimited", registry.APIKey{ID: "k"}, nil, []step{{}, {}, {}}},
		{"requests per minute", registry.APIKey{ID: "k", Limits: registry.Limits{RequestsPerMinute: 2}}, nil, []step{
			{}, {}, {want: "rate_limit_exceeded", retry: 30},
			{advance: 29 * time.Second, want: "rate_limit_exceeded", retry: 1},
			{advance: time.Second}, {want: "rate_limit_exceeded"},
		}},
		{"tokens per minute are charged when a request finishes", registry.APIKey{ID: "k", Limits: registry.Limits{TokensPerMinute: 60}}, nil, []step{
			{}, {charge: &wire.Usage{PromptTokens: 50, CompletionTokens: 70}},
			// 60 - 120 = -60: one token back takes 61 s.
			{want: "rate_limit_exceeded", retry: 61},
			{advance: 60 * time.Second, want: "rate_limit_exceeded"},
			{advance: 2 * time.Second},
		}},
		{"budget from this activator's charges", registry.APIKey{ID: "k", Limits: registry.Limits{BudgetUSD: &budget}}, &fakeSpend{}, []step{
			{}, {charge: &wire.Usage{PromptTokens: 100, CompletionTokens: 50}}, // $0.0007
			{}, {charge: &wire.Usage{PromptTokens: 100, CompletionTokens: 50}}, // $0.0014
			{want: "insufficient_quota"},
		}},
		{"budget from the registry's spend", registry.APIKey{ID: "k", Limits: registry.Limits{BudgetUSD: &budget}}, &fakeSpend{usd: 0.001}, []step{
			{want: "insufficient_quota"},
		}},
		{"zero budget", registry.APIKey{ID: "k", Limits: registry.Limits{BudgetUSD: new(float64)}}, &fakeSpend{}, []step{
			{want: "insufficient_quota"},
		}},
	}
	prices := wire.Prices{PromptPerMTok: 2, CompletionPerMTok: 10}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			l := newLimiter()
			l.now = func() time.Time { return now }
			var sp spender
			if tc.spend != nil {
				sp = tc.spend
			}
			for i, st := range tc.steps {
				now = now.Add(st.advance)
				if st.charge != nil {
					l.charge(tc.key, *st.charge, prices)
					continue
				}
				e := l.admit(tc.key, sp)
				switch {
				case st.want == "" && e != nil:
					t.Fatalf("step %d: refused: %v", i, e.Message)
				case st.want != "" && e == nil:
					t.Fatalf("step %d: admitted, want %s", i, st.want)
				case e != nil:
					if deref(e.Code) != st.want || e.Status != http.StatusTooManyRequests {
						t.Errorf("step %d: %d %s, want 429 %s", i, e.Status, deref(e.Code), st.want)
					}
					if st.retry != 0 && e.RetryAfter != st.retry {
						t.Errorf("step %d: Retry-After %d, want %d", i, e.RetryAfter, st.retry)
					}
				}
			}
		})
	}
}

// TestLimiterForgetsChargesTheRegistryHas checks that local charges older
// than the cache's spend are not counted twice.
func TestLimiterForgetsChargesTheRegistryHas(t *testing.T) {
	budget := 1.0
	key := registry.APIKey{ID: "k", Limits: registry.Limits{BudgetUSD: &budget}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter()
	l.now = func() time.Time { return now }
	sp := &fakeSpend{}
	l.charge(key, wire.Usage{PromptTokens: 600_000}, wire.Prices{PromptPerMTok: 1}) // $0.60
	now = now.Add(time.Second)
	// The registry now has that request, and another activator's $0.30.
	sp.usd, sp.at = 0.9, now
	if e := l.admit(key, sp); e != nil {
		t.Fatalf("refused at $0.90 of $1: %s", e.Message)
	}
	now = now.Add(time.Second)
	l.charge(key, wire.Usage{PromptTokens: 100_000}, wire.Prices{PromptPerMTok: 1})
	if e := l.admit(key, sp); e == nil {
		t.Fatal("admitted at $1.00 of $1")
	}
}

// TestRateHeaders checks the x-ratelimit-* headers against a fake clock:
// the limit, what is left after each request or charge, and how long until
// the bucket is full again; none for a kind of limit the key lacks.
func TestRateHeaders(t *testing.T) {
	key := registry.APIKey{ID: "k", Limits: registry.Limits{RequestsPerMinute: 6, TokensPerMinute: 600}}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter()
	l.now = func() time.Time { return now }
	type want struct{ limReq, remReq, resetReq, limTok, remTok, resetTok string }
	headers := func() want {
		h := http.Header{}
		l.setRateHeaders(key, h)
		return want{h.Get("x-ratelimit-limit-requests"), h.Get("x-ratelimit-remaining-requests"), h.Get("x-ratelimit-reset-requests"),
			h.Get("x-ratelimit-limit-tokens"), h.Get("x-ratelimit-remaining-tokens"), h.Get("x-ratelimit-reset-tokens")}
	}
	steps := []struct {
		name    string
		advance time.Duration
		admit   bool
		tokens  int
		want    want
	}{
		{"untouched", 0, false, 0, want{"6", "6", "0s", "600", "600", "0s"}},
		// 6 a minute refill one every 10 s.
		{"one request", 0, true, 0, want{"6", "5", "10s", "600", "600", "0s"}},
		{"two more", 0, true, 0, want{"6", "4", "20s", "600", "600", "0s"}},
		{"250 tokens charged", 0, false, 250, want{"6", "4", "20s", "600", "350", "25s"}},
		{"5 s later", 5 * time.Second, false, 0, want{"6", "4", "15s", "600", "400", "20s"}},
		{"a minute later", time.Minute, false, 0, want{"6", "6", "0s", "600", "600", "0s"}},
	}
	for _, st := range steps {
		now = now.Add(st.advance)
		if st.admit {
			if e := l.admit(key, nil); e != nil {
				t.Fatalf("%s: refused: %s", st.name, e.Message)
			}
		}
		if st.tokens > 0 {
			l.charge(key, wire.Usage{PromptTokens: st.tokens}, wire.Prices{})
		}
		if got := headers(); got != st.want {
			t.Errorf("%s: %+v, want %+v", st.name, got, st.want)
		}
	}
	// A key with only a request limit gets only those headers; one with
	// none gets none.
	h := http.Header{}
	l.setRateHeaders(registry.APIKey{ID: "r", Limits: registry.Limits{RequestsPerMinute: 2}}, h)
	if h.Get("x-ratelimit-limit-requests") != "2" || h.Get("x-ratelimit-limit-tokens") != "" {
		t.Errorf("request limit only: %v", h)
	}
	h = http.Header{}
	l.setRateHeaders(registry.APIKey{ID: "none"}, h)
	if len(h) != 0 {
		t.Errorf("no limits: %v", h)
	}
}

func TestMonthSpend(t *testing.T) {
	dec1 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	local := func() []spent {
		return []spent{
			{at: dec1.Add(-time.Second), usd: 1},  // November
			{at: dec1.Add(time.Minute), usd: 2},   // December, before the load
			{at: dec1.Add(time.Hour), usd: 4},     // December, after the load
			{at: dec1.Add(2 * time.Hour), usd: 8}, // December, after the load
		}
	}
	for _, c := range []struct {
		name     string
		base     float64
		asOf     time.Time
		now      time.Time
		want     float64
		wantKept int
	}{
		{"loaded this month: base plus what finished since", 100, dec1.Add(30 * time.Minute), dec1.Add(3 * time.Hour), 112, 2},
		{"never loaded: every cost of this month", 0, time.Time{}, dec1.Add(3 * time.Hour), 14, 3},
		{"loaded last month: its figure is worth nothing", 100, dec1.Add(-time.Minute), dec1.Add(3 * time.Hour), 14, 3},
		{"loaded after everything", 100, dec1.Add(3 * time.Hour), dec1.Add(4 * time.Hour), 100, 0},
		{"a new month starts from nothing", 100, dec1.Add(3 * time.Hour), dec1.AddDate(0, 1, 0), 0, 0},
		{"other time zones are the same instant", 100, dec1.Add(30 * time.Minute).In(time.FixedZone("x", -8*3600)), dec1.Add(3 * time.Hour).In(time.FixedZone("y", 9*3600)), 112, 2},
	} {
		got, kept := monthSpend(c.base, c.asOf, local(), c.now)
		if got != c.want || len(kept) != c.wantKept {
			t.Errorf("%s: monthSpend = %v keeping %d, want %v keeping %d", c.name, got, len(kept), c.want, c.wantKept)
		}
	}
}

type fakeTenantSpend struct {
	usd float64
	at  time.Time
}

func (f *fakeTenantSpend) TenantSpend(string) (float64, time.Time) { return f.usd, f.at }

// BenchmarkAdmitTenantBudget is the monthly budget's cost per request: a
// tenant under its budget, the cache's figure loaded a moment ago and ten
// of this activator's own costs since.
func BenchmarkAdmitTenantBudget(b *testing.B) {
	now := time.Now()
	l := newLimiter()
	l.now = func() time.Time { return now }
	budget := 100.0
	key := registry.APIKey{ID: "key_a", TenantID: "tnt_a", Tenant: registry.TenantState{MonthlyBudgetUSD: &budget}}
	ts := &fakeTenantSpend{usd: 12, at: now.Add(-time.Second)}
	for range 10 {
		l.chargeTenant(key, wire.Usage{PromptTokens: 100, CompletionTokens: 100}, wire.Prices{PromptPerMTok: 1, CompletionPerMTok: 2})
	}
	b.ReportAllocs()
	for b.Loop() {
		if e := l.admitTenant(key, ts); e != nil {
			b.Fatal(e)
		}
	}
}
