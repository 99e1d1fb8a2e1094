package activator_test

import (
	"bufio"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// lineStream is a streamed reply read line by line while the test plays
// the other side (a runner's phases, a driver's heartbeats).
type lineStream struct {
	t     testing.TB
	lines chan string
}

// stream posts body to path with the admin key and returns the reply's
// non-empty lines as they arrive. The request is cancelled when the test
// ends: one still waiting on a cold start would otherwise hold the
// server's Close until its queue timeout.
func (h *harness) stream(t testing.TB, path, body string) *lineStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &lineStream{t: t, lines: make(chan string, 256)}
	t.Cleanup(func() {
		cancel()
		for range s.lines {
		}
	})
	go func() {
		defer close(s.lines)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, h.url+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+adminKey)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				t.Error(err)
			}
			return
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() != "" {
				s.lines <- sc.Text()
			}
		}
	}()
	return s
}

// expect reads the stream up to the line want and returns the lines it
// skipped on the way.
func (s *lineStream) expect(want string) []string {
	s.t.Helper()
	var skipped []string
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("the stream ended before %q; it had %q", want, skipped)
			}
			if l == want {
				return skipped
			}
			skipped = append(skipped, l)
		case <-deadline:
			s.t.Fatalf("no %q within 20 s; the stream had %q", want, skipped)
		}
	}
}
