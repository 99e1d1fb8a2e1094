package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// A runner publishes its own log to NATS (wire.LogSubject), so that the
// API can serve it whatever driver started the runner: the local driver
// keeps a file per runner on its host, Kubernetes keeps pod logs until the
// pod is deleted, and neither reaches an activator.
//
// Logging must never wait for NATS: a log line is written from the decode
// loop's goroutines (a failed decode, a grown KV cache) and from job
// handlers that hold a slot. So the handler only renders the line and
// pushes it on a bounded queue that drops its oldest line when full; a
// goroutine of its own publishes what is queued. Rendering and queueing
// cost ~1.6 µs a line on top of the ~0.8 µs of writing it to stderr
// (BenchmarkLogLine, a shared 2-vCPU host), and a runner logs a few lines
// per request at most (none for a request that succeeds).

// logQueueLines is how many lines wait for NATS at most. A runner logs ~10
// lines when it starts and a few per failed request; 1024 lines ride out a
// NATS reconnect (250 ms apart) at any rate a runner logs at short of a
// flood, which loses its oldest lines and says how many.
const logQueueLines = 1024

// logRing is a bounded queue of rendered log lines that never blocks its
// writer: when full, a push drops the oldest line and counts it.
type logRing struct {
	mu      sync.Mutex
	lines   [][]byte
	head, n int
	dropped uint64
	// wake has a token when lines wait.
	wake chan struct{}
}

func newLogRing(size int) *logRing {
	return &logRing{lines: make([][]byte, size), wake: make(chan struct{}, 1)}
}

// push queues a line, dropping the oldest one if the queue is full.
func (q *logRing) push(line []byte) {
	q.mu.Lock()
	if q.n == len(q.lines) {
		q.lines[q.head] = nil
		q.head = (q.head + 1) % len(q.lines)
		q.n--
		q.dropped++
	}
	q.lines[(q.head+q.n)%len(q.lines)] = line
	q.n++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take appends every queued line to dst, oldest first, and empties the
// queue; it also returns how many lines were dropped since the last take.
func (q *logRing) take(dst [][]byte) ([][]byte, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for ; q.n > 0; q.n-- {
		dst = append(dst, q.lines[q.head])
		q.lines[q.head] = nil
		q.head = (q.head + 1) % len(q.lines)
	}
	d := q.dropped
	q.dropped = 0
	return dst, d
}

// logPublisher sends a runner's queued log lines to its log subject.
type logPublisher struct {
	q       *logRing
	subject string
	// publish sends one line (core NATS: no round trip per line).
	publish func(subject string, data []byte) error
	// ensure creates the log stream; lines wait in q until it succeeds.
	ensure func(context.Context) error
	// flush waits until what was published reached the server.
	flush func(time.Duration) error
	// dropped counts lines lost in all (the queue's and failed publishes).
	dropped uint64
}

// run publishes queued lines until ctx is done, then publishes what is
// left (the runner's last words: why it stopped) and flushes.
func (p *logPublisher) run(ctx context.Context) {
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		if err := p.ensure(ctx); err == nil {
			break
		}
		select {
		case <-ctx.Done():
			// The runner stops before the stream was made: it failed at
			// once, or NATS never answered. Try once more, briefly and
			// past the cancellation, so its last words (why it stopped)
			// are kept; the stream may be there anyway.
			ectx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			p.ensure(ectx)
			cancel()
			p.send()
			p.flush(time.Second)
			return
		case <-time.After(backoff):
		}
	}
	for {
		select {
		case <-ctx.Done():
			p.send()
			p.flush(2 * time.Second)
			return
		case <-p.q.wake:
			p.send()
		}
	}
}

func (p *logPublisher) send() {
	lines, dropped := p.q.take(nil)
	if dropped > 0 {
		p.dropped += dropped
		line, _ := json.Marshal(wire.LogLine{Time: time.Now(), Level: slog.LevelWarn.String(),
			Msg: fmt.Sprintf("%d log lines dropped: the runner logged faster than NATS took them", dropped)})
		p.publish(p.subject, line)
	}
	for _, l := range lines {
		if err := p.publish(p.subject, l); err != nil {
			p.dropped++
		}
	}
}

// teeHandler writes each record with the runner's own handler (stderr)
// and queues it, rendered as a wire.LogLine, for its logPublisher.
type teeHandler struct {
	inner slog.Handler
	q     *logRing
	// attrs are those of With, with their groups' prefix.
	attrs  []wire.LogAttr
	prefix string
}

// Attributes the log subject says already: not repeated on every line.
var subjectAttrs = map[string]bool{"runner": true, "deployment": true, "deployment_id": true}

func (h *teeHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *teeHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.inner.Handle(ctx, r)
	line := wire.LogLine{Time: r.Time, Level: r.Level.String(), Msg: r.Message}
	if n := len(h.attrs) + r.NumAttrs(); n > 0 {
		line.Attrs = make([]wire.LogAttr, 0, n)
	}
	line.Attrs = append(line.Attrs, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		line.Attrs = appendAttr(line.Attrs, h.prefix, a)
		return true
	})
	h.q.push(renderLogLine(line))
	return err
}

func (h *teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.inner = h.inner.WithAttrs(as)
	c.attrs = append([]wire.LogAttr(nil), h.attrs...)
	for _, a := range as {
		if h.prefix == "" && subjectAttrs[a.Key] {
			continue
		}
		c.attrs = appendAttr(c.attrs, h.prefix, a)
	}
	return &c
}

func (h *teeHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.inner = h.inner.WithGroup(name)
	c.prefix = h.prefix + name + "."
	return &c
}

// appendAttr renders one attribute (a group's members as group.key).
func appendAttr(dst []wire.LogAttr, prefix string, a slog.Attr) []wire.LogAttr {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			dst = appendAttr(dst, p, g)
		}
		return dst
	}
	if a.Key == "" {
		return dst
	}
	key := prefix + a.Key
	val := v.String()
	if secretAttr(a.Key) {
		val = "[redacted]"
	}
	return append(dst, wire.LogAttr{Key: key, Value: val})
}

// secretAttr reports whether an attribute's key names something a log
// read through the API must not show, should a runner ever log one: a
// request's text (prompt, messages, content: a tenant's users' data, and
// the logs are read by its admins) or a credential. The runner logs none
// of these today (requests by ID only); this keeps a later slip out of
// the API.
func secretAttr(key string) bool {
	k := strings.ToLower(key)
	switch k {
	case "prompt", "messages", "message_content", "content", "text", "input", "output", "completion",
		"key", "api_key", "authorization", "password", "secret", "token", "credentials":
		return true
	}
	for _, s := range []string{"password", "secret", "_key", "_token", "authorization"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}

// renderLogLine encodes a line as JSON within queue.LogMaxLine bytes: a
// longer one has its message and attributes cut, and says so.
func renderLogLine(l wire.LogLine) []byte {
	b, err := json.Marshal(l)
	if err == nil && len(b) <= queue.LogMaxLine {
		return b
	}
	const each = 512
	l.Msg = truncateUTF8(l.Msg, 2*each)
	for i := range l.Attrs {
		l.Attrs[i].Value = truncateUTF8(l.Attrs[i].Value, each)
	}
	if len(l.Attrs) > 8 {
		l.Attrs = l.Attrs[:8]
	}
	l.Attrs = append(l.Attrs, wire.LogAttr{Key: "truncated", Value: "true"})
	b, _ = json.Marshal(l)
	return b
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
