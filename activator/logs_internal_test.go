package activator

import (
	"net/url"
	"testing"
	"time"
)

func TestParseLogQuery(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		query string
		want  logQuery
		param string // the parameter a 400 names
	}{
		{"", logQuery{tail: DefaultLogTail}, ""},
		{"tail=0&follow=true", logQuery{tail: 0, follow: true}, ""},
		{"tail=10000&follow=1&runner=a1b2c3", logQuery{tail: 10000, follow: true, runner: "a1b2c3"}, ""},
		{"since=10m", logQuery{tail: DefaultLogTail, since: now.Add(-10 * time.Minute)}, ""},
		{"since=2026-12-04T11:00:00.5Z", logQuery{tail: DefaultLogTail, since: time.Date(2026, 12, 4, 11, 0, 0, 5e8, time.UTC)}, ""},
		{"follow=false", logQuery{tail: DefaultLogTail}, ""},
		{"tail=10001", logQuery{}, "tail"},
		{"tail=-1", logQuery{}, "tail"},
		{"tail=1e3", logQuery{}, "tail"},
		{"since=-10m", logQuery{}, "since"},
		{"since=0s", logQuery{}, "since"},
		{"since=7d", logQuery{}, "since"},
		{"follow=yes", logQuery{}, "follow"},
		{"runner=*", logQuery{}, "runner"},
		{"runner=a.b", logQuery{}, "runner"},
		{"runner=A", logQuery{}, "runner"},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseLogQuery(q, now)
		if tc.param != "" {
			ae, ok := err.(*apiError)
			if !ok || ae.Status != 400 || ae.Param == nil || *ae.Param != tc.param {
				t.Errorf("%q: %v; want a 400 naming %s", tc.query, err, tc.param)
			}
			continue
		}
		if err != nil || got.tail != tc.want.tail || got.follow != tc.want.follow || got.runner != tc.want.runner || !got.since.Equal(tc.want.since) {
			t.Errorf("%q: %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}
