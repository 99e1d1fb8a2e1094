package controlplane

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/infer-run/infer/registry"
)

// changeSource is a registry in Postgres the control plane can listen to:
// every change to deployments raises a notification on
// registry.ChangesChannel (registry.Store has Pool). With it the
// deployment list is read when it changed, plus once per SweepEvery in
// case a notification was lost; without it (a registry in memory), every
// tick. With 10,000 deployments the list is a 10,000-row query, which
// read every second would cost more than everything else idle
// deployments cost (BenchmarkIdleDeployments logs what one read takes).
type changeSource interface {
	Pool() *pgxpool.Pool
}

// watchChanges signals cp.changed for every change to deployments until
// ctx is done, and after every (re)connection, since changes made while
// it was not listening were not heard.
func (cp *ControlPlane) watchChanges(ctx context.Context, src changeSource) {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := cp.listenChanges(ctx, src.Pool())
		if ctx.Err() != nil {
			return
		}
		cp.log.Warn("registry change notifications lost; reconnecting (the deployment list is read every sweep meanwhile)", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func (cp *ControlPlane) listenChanges(ctx context.Context, pool *pgxpool.Pool) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	// The connection is left in LISTEN state: destroy it instead of
	// returning it to the pool.
	defer func() {
		conn.Conn().Close(context.Background())
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+registry.ChangesChannel); err != nil {
		return fmt.Errorf("listening: %w", err)
	}
	cp.signalChanged()
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("waiting for changes: %w", err)
		}
		if n.Payload == "deployments" {
			cp.signalChanged()
		}
	}
}
