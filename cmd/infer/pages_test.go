package main

import (
	"testing"
	"time"
)

// TestParseWhen checks the times and ages --since and --until take.
func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{"2026-01-02T15:04:05Z", time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC), false},
		{"90m", now.Add(-90 * time.Minute), false},
		{"24h", now.Add(-24 * time.Hour), false},
		{"7d", time.Date(2026, 3, 3, 12, 0, 0, 0, time.UTC), false},
		{"2w", time.Date(2026, 2, 24, 12, 0, 0, 0, time.UTC), false},
		{"0d", now, false},
		{"7x", time.Time{}, true},
		{"-3h", time.Time{}, true},
		{"d", time.Time{}, true},
		{"-1d", time.Time{}, true},
		{"2026-01-02", time.Time{}, true},
		{"", time.Time{}, true},
	} {
		got, err := parseWhen(tc.in, now)
		if (err != nil) != tc.wantErr || !got.Equal(tc.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v (error: %v)", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestAllFailed checks when a benchmark is a failure: some level with
// requests had none succeed.
func TestAllFailed(t *testing.T) {
	for _, tc := range []struct {
		name string
		rows []benchRow
		want bool
	}{
		{"all fine", []benchRow{{Concurrency: 1, Requests: 4}}, false},
		{"some errors", []benchRow{{Concurrency: 1, Requests: 4, Errors: 3}}, false},
		{"one level all failed", []benchRow{{Concurrency: 1, Requests: 4}, {Concurrency: 4, Requests: 4, Errors: 4, FirstError: "boom"}}, true},
		{"cold burst failed", []benchRow{{Concurrency: 2, Cold: true, Requests: 2, Errors: 2}}, true},
		{"no requests", []benchRow{{Concurrency: 1}}, false},
	} {
		if err := allFailed(tc.rows); (err != nil) != tc.want {
			t.Errorf("%s: %v, want failure %v", tc.name, err, tc.want)
		}
	}
}
