// Package natsconn holds what the components share about their NATS
// connection itself, as opposed to what they send over it.
package natsconn

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Uptime tells since when a connection has been up without a break, so
// that silence on it (a runner's missing heartbeats) is judged only over
// time it could have been heard: during an outage nobody hears anyone, and
// right after one nobody has had the time to.
//
// It polls the connection's status and reconnect count rather than
// installing handlers, which belong to whoever made the connection; a
// reconnect is noticed at the first call after it, which only ever makes
// the stretch look shorter than it is.
type Uptime struct {
	nc *nats.Conn

	mu         sync.Mutex
	since      time.Time
	reconnects uint64
}

// NewUptime starts counting now.
func NewUptime(nc *nats.Conn) *Uptime {
	return &Uptime{nc: nc, since: time.Now(), reconnects: nc.Stats().Reconnects}
}

// Since returns the start of the connection's current unbroken stretch, as
// of now: now itself while it is down or if it came back since the last
// call.
func (u *Uptime) Since(now time.Time) time.Time {
	connected := u.nc.Status() == nats.CONNECTED
	reconnects := u.nc.Stats().Reconnects
	u.mu.Lock()
	defer u.mu.Unlock()
	if !connected || reconnects != u.reconnects {
		u.since, u.reconnects = now, reconnects
	}
	return u.since
}

// Silent reports whether something last heard at last has been silent for
// longer than d of a stretch of hearing that began at since (what
// Uptime.Since returned): a caller judging many takes Since once.
func Silent(last, since time.Time, d time.Duration, now time.Time) bool {
	if last.After(since) {
		since = last
	}
	return now.Sub(since) > d
}
