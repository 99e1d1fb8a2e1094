package main

import (
	"errors"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	v := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	tests := []struct {
		p    float64
		want float64
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {1, 1}}
	for _, tt := range tests {
		if got := pct(v, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
	if pct(nil, 50) != 0 {
		t.Error("empty input")
	}
}

func TestSummarize(t *testing.T) {
	results := []benchResult{
		{ttft: 10 * time.Millisecond, total: 100 * time.Millisecond, tokens: 10, itl: []time.Duration{2 * time.Millisecond, 4 * time.Millisecond}},
		{ttft: 30 * time.Millisecond, total: 300 * time.Millisecond, tokens: 30},
		{err: errors.New("boom")},
	}
	r := summarize(2, results, 2*time.Second)
	if r.Errors != 1 || r.FirstError != "boom" || r.OutputTokens != 40 || r.TokensPerSec != 20 || r.RequestsPerS != 1 || r.ITLmeanms != 3 || r.TTFTp50ms != 10 || r.E2Ep99ms != 300 {
		t.Errorf("summary %+v", r)
	}
}
