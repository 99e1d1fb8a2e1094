package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Lease decides which of several control planes acts. Every control plane
// listens to heartbeats, so its view of the runners stays warm; only the
// holder of the lease starts, stops and kills runners.
type Lease interface {
	// Hold reports whether this control plane may act now, acquiring the
	// lease if it is free. It is called before every action, so it must
	// notice a lost lease at once rather than at some later renewal.
	Hold(ctx context.Context) bool
	// Release gives the lease up so another control plane takes over
	// without waiting for this one's session to time out.
	Release()
}

// LeaseKey is the Postgres advisory lock all control planes of one
// database contend for ("infer.cp" in ASCII).
const LeaseKey int64 = 0x696e6665722e6370

// PostgresLease is a Lease held as a Postgres session advisory lock on one
// dedicated connection.
//
// Why Postgres and not a NATS KV entry with a TTL: the lock belongs to a
// server session, so there is no clock and no renewal in the argument. The
// lock is held exactly as long as Postgres considers the session alive,
// and the holder learns it lost the session by its connection failing,
// which it checks (a round trip) before every action. The failure modes:
//
//   - The leader process dies: the kernel closes its socket, Postgres ends
//     the session and frees the lock at once; a follower takes it at its
//     next tick.
//   - The leader's session is ended (pg_terminate_backend, Postgres
//     restart): its next check fails and it stops acting. A follower may
//     acquire the lock in the gap between the leader's last successful
//     check and its next one; Grace covers that gap: a new holder waits
//     Grace (longer than one action) before acting.
//   - A network partition between leader and Postgres: the leader's check
//     times out and it stops acting, while Postgres may still think the
//     session alive, so nobody acts until Postgres drops it. The
//     connection sets TCP keepalives and tcp_user_timeout on the server
//     side so that takes seconds (KeepAlive), not the kernel's two hours.
//     Safety is kept; availability waits for the server.
//   - Postgres is down: nobody acts. Runners keep serving; nothing scales
//     until it is back. The registry lives there too, so a control plane
//     could not read deployments anyway.
//
// A NATS KV lease would need the holder to renew before a TTL runs out and
// to stop acting before it could have run out by the follower's clock,
// which adds clock rate assumptions and a renewal loop to get wrong.
type PostgresLease struct {
	// ConnString is the database all control planes share.
	ConnString string
	// Key is the advisory lock; zero means LeaseKey.
	Key int64
	// Grace is how long a new holder waits before acting, so a leader
	// that lost its session without noticing yet finishes its last action
	// first; zero means 2 s.
	Grace time.Duration
	// Timeout bounds connecting and each check; zero means 2 s.
	Timeout time.Duration
	// KeepAlive is how soon Postgres gives up on a silent session (and
	// frees the lock); zero means 10 s.
	KeepAlive time.Duration
	Log       *slog.Logger

	mu    sync.Mutex
	conn  *pgx.Conn
	since time.Time // when the lock was acquired; zero when not held
}

func (l *PostgresLease) defaults() {
	if l.Key == 0 {
		l.Key = LeaseKey
	}
	if l.Grace <= 0 {
		l.Grace = 2 * time.Second
	}
	if l.Timeout <= 0 {
		l.Timeout = 2 * time.Second
	}
	if l.KeepAlive <= 0 {
		l.KeepAlive = 10 * time.Second
	}
	if l.Log == nil {
		l.Log = slog.Default()
	}
}

// Hold implements Lease.
func (l *PostgresLease) Hold(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.defaults()
	ctx, cancel := context.WithTimeout(ctx, l.Timeout)
	defer cancel()
	if l.conn != nil && !l.since.IsZero() {
		// Held: the session must still be alive right now.
		if err := l.conn.Ping(ctx); err != nil {
			l.Log.Error("lost the control plane lease: its Postgres session failed; no longer acting", "err", err)
			l.drop()
			return false
		}
		return time.Since(l.since) >= l.Grace
	}
	if l.conn == nil {
		conn, err := l.connect(ctx)
		if err != nil {
			l.Log.Warn("connecting for the control plane lease", "err", err)
			return false
		}
		l.conn = conn
	}
	var got bool
	if err := l.conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", l.Key).Scan(&got); err != nil {
		l.Log.Warn("trying the control plane lease", "err", err)
		l.drop()
		return false
	}
	if !got {
		return false
	}
	l.since = time.Now()
	l.Log.Info("acquired the control plane lease; acting after the grace period", "grace", l.Grace)
	return l.Grace <= 0
}

func (l *PostgresLease) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(l.ConnString)
	if err != nil {
		return nil, fmt.Errorf("parsing the database URL: %w", err)
	}
	ka := int(l.KeepAlive.Seconds())
	cfg.RuntimeParams["application_name"] = "infer-controlplane-lease"
	// Server side: a session whose peer went silent ends (and its lock
	// with it) within about KeepAlive.
	cfg.RuntimeParams["tcp_keepalives_idle"] = fmt.Sprint(max(1, ka/3))
	cfg.RuntimeParams["tcp_keepalives_interval"] = fmt.Sprint(max(1, ka/6))
	cfg.RuntimeParams["tcp_keepalives_count"] = "3"
	cfg.RuntimeParams["tcp_user_timeout"] = fmt.Sprint(l.KeepAlive.Milliseconds())
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to Postgres: %w", err)
	}
	return conn, nil
}

// drop closes the connection, which ends the session and frees the lock if
// Postgres still holds it for us.
func (l *PostgresLease) drop() {
	if l.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l.conn.Close(ctx)
		cancel()
	}
	l.conn, l.since = nil, time.Time{}
}

// Release implements Lease.
func (l *PostgresLease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.since.IsZero() {
		l.Log.Info("releasing the control plane lease")
	}
	l.drop()
}
