package activator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// GET /v1/deployments/{name}/logs: the deployment's runners' log lines,
// as each runner published them to the log stream (runner/logs.go), as
// JSON lines (application/x-ndjson): one wire.LogLine per line, with the
// runner's ID. JSON lines rather than plain text, because a line's
// attributes stay fields a script or the console can use (the CLI prints
// them as text); rather than server-sent events, because EventSource
// cannot send the API key, so the console reads the stream with fetch
// either way, and a line-per-record body is what curl, jq and every
// language read without an SSE parser. ?follow=true keeps the response
// open and sends each new line as it arrives, with an empty line every
// logKeepAlive so proxies do not close a quiet stream (jq and JSON-lines
// readers skip whitespace).

const (
	// DefaultLogTail is how many of the last lines a request gets
	// without ?tail.
	DefaultLogTail = 100
	// MaxLogTail bounds ?tail: ten runners' worth of start logs many
	// times over, and still a response of at most a few MB.
	MaxLogTail = 10000
	// logKeepAlive is how often a followed stream with nothing to say
	// sends an empty line: under the 60 s idle timeout of common proxies
	// (nginx's proxy_read_timeout).
	logKeepAlive = 15 * time.Second
	// logFetchBatch is how many stored lines one fetch asks for.
	logFetchBatch = 500
)

// logQuery is what a logs request asks for.
type logQuery struct {
	tail   int
	since  time.Time // zero: from the oldest line kept
	follow bool
	runner string // empty: every runner
	// from, when set, is the stream sequence to follow from (after the
	// lines of the tail).
	from uint64
}

// parseLogQuery reads ?tail=, ?since= (an RFC 3339 time, or a duration
// before now: 10m, 2h), ?follow= and ?runner=.
func parseLogQuery(q url.Values, now time.Time) (logQuery, error) {
	lq := logQuery{tail: DefaultLogTail}
	if v := q.Get("tail"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > MaxLogTail {
			return lq, errInvalid("tail", "tail must be a number of lines from 0 to %d", MaxLogTail)
		}
		lq.tail = n
	}
	if v := q.Get("since"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			lq.since = t
		} else if d, err := time.ParseDuration(v); err == nil && d > 0 {
			lq.since = now.Add(-d)
		} else {
			return lq, errInvalid("since", "since must be an RFC 3339 time such as 2026-01-02T15:04:05Z or a duration such as 10m")
		}
	}
	switch v := q.Get("follow"); v {
	case "", "false", "0":
	case "true", "1":
		lq.follow = true
	default:
		return lq, errInvalid("follow", "follow must be true or false")
	}
	if v := q.Get("runner"); v != "" {
		if !wire.ValidKey(v) {
			return lq, errInvalid("runner", "runner must be a runner ID (a-z, 0-9, '_' and '-')")
		}
		lq.runner = v
	}
	return lq, nil
}

// mayReadLogs reports whether key may read a deployment's runner logs:
// only its tenant's admin keys. A log is the operator's view of every
// request on the deployment (request IDs of every key, their failures),
// where a user key sees only its own requests' usage and jobs.
func mayReadLogs(key registry.APIKey) error {
	if key.Role != registry.RoleAdmin {
		return errStatus(http.StatusForbidden, "invalid_request_error", "permission_denied",
			"runner logs are read with an admin key: they show every key's requests")
	}
	return nil
}

func (s *Server) deploymentLogs(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := mayReadLogs(key); err != nil {
		return err
	}
	if err := textParam("name", c.Param("name")); err != nil {
		return err
	}
	lq, err := parseLogQuery(c.QueryParams(), time.Now())
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	d, err := s.deployment(ctx, key, c.Param("name"))
	if err != nil {
		return err
	}
	if !key.Allows(d.Name) {
		return errDeploymentDenied(d.Name)
	}
	cons, err := s.logConsumer(ctx, d.ID, lq)
	if err != nil {
		s.log.Error("opening runner logs", "deployment", d.Name, "err", err)
		return errStatus(http.StatusServiceUnavailable, "server_error", "logs_unavailable", "could not read the runner logs; try again")
	}
	res := c.Response()
	res.Header().Set(echo.HeaderContentType, "application/x-ndjson")
	res.Header().Set("Cache-Control", "no-store")
	// Nginx buffers responses unless told not to; a followed log must
	// arrive line by line.
	res.Header().Set("X-Accel-Buffering", "no")
	res.WriteHeader(http.StatusOK)
	var (
		tail    []jetstream.Msg
		lastSeq uint64 // the stream sequence of the last line read
	)
	if cons != nil {
		if tail, lastSeq, err = readLogTail(ctx, cons, lq.tail); err != nil {
			s.log.Warn("reading runner logs", "deployment", d.Name, "err", err)
			return nil // the status is sent: the body ends short
		}
	}
	enc := json.NewEncoder(res)
	for _, m := range tail {
		writeLogLine(enc, m)
	}
	res.Flush()
	if !lq.follow || cons == nil {
		return nil
	}
	// An ordered consumer that fetched cannot consume: another one picks
	// up after the last line read (or where this one began, if it read
	// none: then nothing was there to read).
	if lastSeq > 0 {
		lq.since, lq.tail, lq.from = time.Time{}, 0, lastSeq+1
	}
	if cons, err = s.logConsumer(ctx, d.ID, lq); err != nil {
		s.log.Warn("following runner logs", "deployment", d.Name, "err", err)
		return nil
	}
	return s.followLogs(ctx, cons, enc, res)
}

// logConsumer opens an ordered consumer of the deployment's lines (from
// lq.since, of lq.runner). With no log stream yet (no runner has started
// since NATS lost its state, or ever) it is nil, unless the request
// follows: then the stream is created, to wait on.
func (s *Server) logConsumer(ctx context.Context, deploymentID string, lq logQuery) (jetstream.Consumer, error) {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{wire.LogFilter(deploymentID, lq.runner)},
		// The server drops it this long after its reader went away,
		// rather than after the default 5 minutes: each request has one.
		InactiveThreshold: 30 * time.Second}
	if !lq.since.IsZero() {
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &lq.since
	}
	if lq.follow && lq.tail == 0 {
		cfg.DeliverPolicy = jetstream.DeliverNewPolicy
		cfg.OptStartTime = nil
	}
	if lq.from > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = lq.from
	}
	c, err := s.js.OrderedConsumer(ctx, wire.LogStream, cfg)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if !lq.follow {
			return nil, nil
		}
		if _, err = queue.EnsureLogs(ctx, s.js, s.replicas); err == nil {
			c, err = s.js.OrderedConsumer(ctx, wire.LogStream, cfg)
		}
	}
	return c, err
}

// readLogTail reads the lines stored now and returns the last n. JetStream
// cannot read a filtered stream backwards, so it reads them all and keeps
// the last n: at most queue.LogMaxPerRunner lines per runner of the
// deployment, ~10 ms per 10000 lines here.
func readLogTail(ctx context.Context, c jetstream.Consumer, n int) ([]jetstream.Msg, uint64, error) {
	if n == 0 {
		return nil, 0, nil
	}
	var lastSeq uint64
	ring := make([]jetstream.Msg, 0, min(n, logFetchBatch))
	start := 0 // ring[start] is the oldest kept once the ring is full
	for {
		if ctx.Err() != nil {
			return nil, 0, ctx.Err()
		}
		b, err := c.FetchNoWait(logFetchBatch)
		if err != nil {
			return nil, 0, err
		}
		got, last := 0, false
		for m := range b.Messages() {
			got++
			if len(ring) < n {
				ring = append(ring, m)
			} else {
				ring[start] = m
				start = (start + 1) % n
			}
			if md, err := m.Metadata(); err == nil {
				lastSeq = md.Sequence.Stream
				last = md.NumPending == 0
			}
		}
		if err := b.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, 0, err
		}
		if got == 0 || last {
			return append(ring[start:], ring[:start]...), lastSeq, nil
		}
	}
}

// followLogs sends each new line as it arrives until the client leaves or
// the activator shuts down.
func (s *Server) followLogs(ctx context.Context, c jetstream.Consumer, enc *json.Encoder, res *echo.Response) error {
	lines := make(chan jetstream.Msg, 64)
	cc, err := c.Consume(func(m jetstream.Msg) {
		select {
		case lines <- m:
		case <-ctx.Done():
		}
	})
	if err != nil {
		s.log.Warn("following runner logs", "err", err)
		return nil
	}
	defer cc.Stop()
	keepAlive := time.NewTicker(logKeepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.draining:
			return nil
		case m := <-lines:
			writeLogLine(enc, m)
			// Whatever else arrived with it goes in the same write.
			for more := true; more; {
				select {
				case m := <-lines:
					writeLogLine(enc, m)
				default:
					more = false
				}
			}
			res.Flush()
		case <-keepAlive.C:
			if _, err := res.Write([]byte("\n")); err != nil {
				return nil
			}
			res.Flush()
		}
	}
}

// writeLogLine writes one stored line as the API shows it: with its
// runner's ID, and server file paths cut to their last element (the
// runner logs where its weights are cached; like a runner's failure
// detail, that layout is none of a client's business).
func writeLogLine(enc *json.Encoder, m jetstream.Msg) {
	var l wire.LogLine
	if err := json.Unmarshal(m.Data(), &l); err != nil {
		return // not a runner's line
	}
	l.Runner = wire.LogRunner(m.Subject())
	l.Msg = redactPaths(l.Msg)
	for i := range l.Attrs {
		l.Attrs[i].Value = redactPaths(l.Attrs[i].Value)
	}
	enc.Encode(l)
}
