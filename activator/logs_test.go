package activator_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

// startLoggingRunner runs a real runner of deployment that logs at info
// (the test binary's default logger may be quieter), and returns its ID.
func (h *harness) startLoggingRunner(deployment string) string {
	h.t.Helper()
	cfg := runner.Config{ID: wire.NewID(4), Deployment: deployment, DeploymentID: h.depID(deployment),
		Artifact: runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
		Cache:    &runner.Cache{Dir: h.t.TempDir(), Blobs: h.blobs}, Engine: runner.EngineConfig{Parallel: 1, Context: 256}}
	r, err := runner.New(cfg, h.nc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nil); close(done) }()
	h.t.Cleanup(func() { cancel(); <-done })
	return cfg.ID
}

// readLogLines reads a logs response's JSON lines (skipping keep-alive
// empty lines), failing on one that is not a log line.
func readLogLines(t *testing.T, r io.Reader) []wire.LogLine {
	t.Helper()
	var out []wire.LogLine
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var l wire.LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func (h *harness) logs(key, query string) (int, []wire.LogLine) {
	h.t.Helper()
	resp := h.doAs(key, http.MethodGet, "/v1/deployments/logged/logs"+query, "")
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		h.t.Errorf("Content-Type %q", ct)
	}
	return resp.StatusCode, readLogLines(h.t.(*testing.T), resp.Body)
}

// followLogs opens a followed logs request and returns its lines as they
// arrive, until the test ends.
func (h *harness) followLogs(query string) <-chan wire.LogLine {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.url+"/v1/deployments/logged/logs"+query, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	ctx, cancel := context.WithCancel(context.Background())
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		cancel()
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { cancel(); resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		h.t.Fatalf("follow%s: %d", query, resp.StatusCode)
	}
	lines := make(chan wire.LogLine, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			var l wire.LogLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				lines <- l
			}
		}
	}()
	return lines
}

// waitLine waits for runnerID's line msg on a followed stream, failing
// on bad, a line that must not come first.
func waitLine(t *testing.T, lines <-chan wire.LogLine, runnerID, msg string, bad func(wire.LogLine) bool) {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("the followed stream ended")
			}
			if bad != nil && bad(l) {
				t.Errorf("followed line %+v", l)
			}
			if l.Runner == runnerID && l.Msg == msg {
				return
			}
		case <-timeout:
			t.Fatalf("runner %s's %q did not arrive on the followed stream within 60 s", runnerID, msg)
		}
	}
}

func hasMsg(ls []wire.LogLine, runnerID, msg string) bool {
	for _, l := range ls {
		if l.Runner == runnerID && l.Msg == msg {
			return true
		}
	}
	return false
}

// TestDeploymentLogs reads a real runner's log through the API: its
// start lines, the last N, since a time, one runner's, followed live as
// another runner starts, with server paths cut; and refuses bad
// parameters.
func TestDeploymentLogs(t *testing.T) {
	h := newHarness(t)
	h.deploy("logged", map[string]any{})
	// No runner has logged yet (the log stream does not exist): no lines.
	if code, none := h.logs(adminKey, ""); code != http.StatusOK || len(none) != 0 {
		t.Fatalf("logs before any runner: %d, %d lines", code, len(none))
	}
	// Following then waits (creating the stream) and gets the first
	// runner's lines as it writes them.
	early := h.followLogs("?follow=true")
	first := h.startLoggingRunner("logged")
	waitLine(t, early, first, "model ready", nil)

	var all []wire.LogLine
	deadline := time.Now().Add(60 * time.Second)
	for !hasMsg(all, first, "model ready") {
		if time.Now().After(deadline) {
			t.Fatalf("no \"model ready\" line of runner %s within 60 s: %+v", first, all)
		}
		time.Sleep(100 * time.Millisecond)
		_, all = h.logs(adminKey, "")
	}
	if !hasMsg(all, first, "runner starting") {
		t.Errorf("no \"runner starting\" line: %+v", all)
	}
	// The runner logs where it cached the weights; the API shows the
	// file's name only.
	paths := 0
	for _, l := range all {
		for _, a := range l.Attrs {
			if a.Key == "path" {
				paths++
				if strings.Contains(a.Value, "/") || a.Value == "" {
					t.Errorf("line %q shows path=%q; want the file name only", l.Msg, a.Value)
				}
			}
		}
	}
	if paths == 0 {
		t.Errorf("no line with a path attribute (\"weights ready\"): %+v", all)
	}
	if _, last := h.logs(adminKey, "?tail=1"); len(last) != 1 || last[0].Msg != all[len(all)-1].Msg {
		t.Errorf("tail=1: %+v; want the last of %d lines", last, len(all))
	}
	if _, none := h.logs(adminKey, "?tail=0"); len(none) != 0 {
		t.Errorf("tail=0: %d lines", len(none))
	}
	if _, recent := h.logs(adminKey, "?since=1h"); len(recent) != len(all) {
		t.Errorf("since=1h: %d lines, want all %d", len(recent), len(all))
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if _, later := h.logs(adminKey, "?since="+future); len(later) != 0 {
		t.Errorf("since an hour from now: %d lines", len(later))
	}
	if _, other := h.logs(adminKey, "?runner=nosuchrunner"); len(other) != 0 {
		t.Errorf("runner=nosuchrunner: %d lines", len(other))
	}

	// Follow: only new lines (tail=0), as a second runner starts.
	lines := h.followLogs("?follow=true&tail=0")
	second := h.startLoggingRunner("logged")
	waitLine(t, lines, second, "model ready", func(l wire.LogLine) bool { return l.Runner == first })
	if _, only := h.logs(adminKey, "?runner="+second); len(only) == 0 || !hasMsg(only, second, "runner starting") {
		t.Errorf("runner=%s: %+v", second, only)
	} else {
		for _, l := range only {
			if l.Runner != second {
				t.Errorf("runner=%s returned a line of %s", second, l.Runner)
			}
		}
	}

	for _, bad := range []struct{ query, param string }{
		{"?tail=-1", "tail"}, {"?tail=10001", "tail"}, {"?tail=x", "tail"},
		{"?since=yesterday", "since"}, {"?follow=maybe", "follow"}, {"?runner=a.b", "runner"},
	} {
		code, _, body := call(t, h.url, adminKey, http.MethodGet, "/v1/deployments/logged/logs"+bad.query, "")
		e, _ := body["error"].(map[string]any)
		if code != http.StatusBadRequest || e["param"] != bad.param {
			t.Errorf("%s: %d %v; want 400 naming %s", bad.query, code, body, bad.param)
		}
	}
	if code, _, _ := call(t, h.url, adminKey, http.MethodGet, "/v1/deployments/missing/logs", ""); code != http.StatusNotFound {
		t.Errorf("a missing deployment's logs: %d", code)
	}
}
