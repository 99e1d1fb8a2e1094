package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

// pageNames walks a deployment list page by page (as a client following
// last_id does) and returns the names in order and the page sizes.
func pageNames(t *testing.T, list func(after string) ([]Deployment, bool, error)) (names []string, sizes []int) {
	t.Helper()
	after := ""
	for range 100 {
		deps, more, err := list(after)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(deps))
		for _, d := range deps {
			names = append(names, d.Name)
		}
		if !more {
			return names, sizes
		}
		after = deps[len(deps)-1].Name
	}
	t.Fatal("the list never ended")
	return nil, nil
}

// TestListDeploymentsPage pages a tenant's deployments from Postgres and
// from the cache, with and without a key's restriction to some names, and
// checks every deployment comes once, in name order, in full pages, and
// that another tenant's never do.
func TestListDeploymentsPage(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme")
	other, _ := s.EnsureTenant(ctx, "globex")
	art := putArtifact(t, s, strings.Repeat("2", 64))
	var want []string
	for i := range 7 {
		d := DefaultDeployment()
		d.TenantID, d.Name, d.ArtifactSHA256 = acme.ID, fmt.Sprintf("dep-%02d", 6-i), art.SHA256
		if _, err := s.PutDeployment(ctx, d); err != nil {
			t.Fatal(err)
		}
		want = append(want, d.Name)
		d.TenantID = other.ID // the same names in another tenant
		if _, err := s.PutDeployment(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	c := NewCache(s, slog.Default())
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, "the cache loading", func() bool {
		deps, _ := c.ListDeployments(ctx, acme.ID)
		return len(deps) == 7
	})

	for _, src := range []struct {
		name string
		page func(ctx context.Context, tenantID string, only []string, after string, limit int) ([]Deployment, bool, error)
	}{{"store", s.ListDeploymentsPage}, {"cache", c.ListDeploymentsPage}} {
		for _, tc := range []struct {
			limit     int
			only      []string
			want      []string
			wantSizes []int
		}{
			{3, nil, want, []int{3, 3, 1}},
			{7, nil, want, []int{7}},
			{1000, nil, want, []int{7}},
			{2, []string{"dep-05", "dep-01", "missing"}, []string{"dep-01", "dep-05"}, []int{2}},
			{1, []string{"dep-05", "dep-01"}, []string{"dep-01", "dep-05"}, []int{1, 1}},
		} {
			names, sizes := pageNames(t, func(after string) ([]Deployment, bool, error) {
				return src.page(ctx, acme.ID, tc.only, after, tc.limit)
			})
			if !slices.Equal(names, tc.want) || !slices.Equal(sizes, tc.wantSizes) {
				t.Errorf("%s: limit %d only %v: names %v in pages %v; want %v in %v", src.name, tc.limit, tc.only, names, sizes, tc.want, tc.wantSizes)
			}
		}
		// A cursor between names (a deployment deleted meanwhile) still
		// continues in order.
		deps, more, err := src.page(ctx, acme.ID, nil, "dep-025", 2)
		if err != nil || more != true || len(deps) != 2 || deps[0].Name != "dep-03" {
			t.Errorf("%s: after a name that is not there: %v, %v, %v", src.name, deps, more, err)
		}
		for _, bad := range []int{0, -1, MaxPageLimit + 1} {
			if _, _, err := src.page(ctx, acme.ID, nil, "", bad); !errors.Is(err, ErrBadPage) {
				t.Errorf("%s: limit %d = %v, want ErrBadPage", src.name, bad, err)
			}
		}
	}
}

// TestListUsagePage pages usage records newest first, records of the same
// instant included (the request ID breaks the tie), and refuses a cursor
// that is not one of the tenant's records.
func TestListUsagePage(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	acme, _ := s.EnsureTenant(ctx, "acme")
	other, _ := s.EnsureTenant(ctx, "globex")
	key, _, err := s.CreateKey(ctx, acme.ID, "my-app", RoleUser)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	var want []string
	for i := range 9 {
		// Three records share each second.
		r := UsageRecord{RequestID: fmt.Sprintf("req-%d", i), Deployment: "stories", TenantID: acme.ID, KeyID: key.ID,
			Status: "ok", CreatedAt: t0.Add(time.Duration(i/3) * time.Second)}
		if _, err := s.RecordUsage(ctx, r); err != nil {
			t.Fatal(err)
		}
		want = append(want, r.RequestID)
	}
	if _, err := s.RecordUsage(ctx, UsageRecord{RequestID: "theirs", Deployment: "stories", TenantID: other.ID, Status: "ok", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	// Newest first; within a second, the larger request ID first.
	slices.Reverse(want)

	var got []string
	var sizes []int
	f := UsageFilter{TenantID: acme.ID, Limit: 4}
	for range 10 {
		recs, more, err := s.ListUsagePage(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		sizes = append(sizes, len(recs))
		for _, r := range recs {
			got = append(got, r.RequestID)
			if r.KeyName != "my-app" {
				t.Errorf("record %s: key name %q, want my-app", r.RequestID, r.KeyName)
			}
		}
		if !more {
			break
		}
		f.After = recs[len(recs)-1].RequestID
	}
	if !slices.Equal(got, want) || !slices.Equal(sizes, []int{4, 4, 1}) {
		t.Errorf("pages of 4: %v in %v; want %v in [4 4 1]", got, sizes, want)
	}
	// Filters still apply with a cursor.
	recs, _, err := s.ListUsagePage(ctx, UsageFilter{TenantID: acme.ID, After: "req-7", Since: t0.Add(time.Second), Limit: 10})
	if err != nil || len(recs) != 4 || recs[0].RequestID != "req-6" || recs[3].RequestID != "req-3" {
		t.Errorf("after req-7 since t0+1s: %+v, %v; want req-6…req-3", recs, err)
	}
	for _, after := range []string{"no-such-request", "theirs"} {
		if _, _, err := s.ListUsagePage(ctx, UsageFilter{TenantID: acme.ID, After: after, Limit: 10}); !errors.Is(err, ErrNotFound) {
			t.Errorf("after %q = %v, want ErrNotFound", after, err)
		}
	}
	if _, _, err := s.ListUsagePage(ctx, UsageFilter{TenantID: acme.ID, Limit: 0}); !errors.Is(err, ErrBadPage) {
		t.Errorf("limit 0 = %v, want ErrBadPage", err)
	}
}
