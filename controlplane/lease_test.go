package controlplane

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// staticRegistry serves fixed deployments; leadership is what is tested,
// not the registry.
type staticRegistry struct{ deps []registry.Deployment }

func (r staticRegistry) ListDeployments(context.Context, string) ([]registry.Deployment, error) {
	return r.deps, nil
}

func (r staticRegistry) GetArtifact(_ context.Context, sha string) (registry.Artifact, error) {
	return registry.Artifact{SHA256: sha, ObjectKey: "blobs/" + sha, Size: 1}, nil
}

// cluster is a driver shared by several control planes, like a Kubernetes
// namespace: every control plane sees every runner. It records who acted
// and when.
type cluster struct {
	mu      sync.Mutex
	runners map[string]RunnerRef
	starts  map[string]int // deployment → Start calls
	actors  []string       // control plane of each action, in order
}

// clusterView is one control plane's handle on the cluster.
type clusterView struct {
	c    *cluster
	name string
}

func (v clusterView) act() { v.c.actors = append(v.c.actors, v.name) }

func (v clusterView) Start(_ context.Context, s RunnerSpec) error {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	v.act()
	v.c.starts[s.Deployment]++
	v.c.runners[s.ID] = RunnerRef{ID: s.ID, DeploymentID: s.DeploymentID, Deployment: s.Deployment, Artifact: s.Artifact, StartedAt: time.Now()}
	return nil
}

func (v clusterView) Stop(_ context.Context, id string) error {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	v.act()
	if r, ok := v.c.runners[id]; ok {
		r.Stopping = true
		v.c.runners[id] = r
	}
	return nil
}

func (v clusterView) Kill(_ context.Context, id string) error {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	v.act()
	delete(v.c.runners, id)
	return nil
}

// Runners counts as acting: only reconcile lists runners on a tick.
func (v clusterView) Runners(context.Context) ([]RunnerRef, error) {
	v.c.mu.Lock()
	defer v.c.mu.Unlock()
	v.act()
	var rs []RunnerRef
	for _, r := range v.c.runners {
		rs = append(rs, r)
	}
	return rs, nil
}

func (c *cluster) snapshot() (map[string]int, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	starts := map[string]int{}
	for k, v := range c.starts {
		starts[k] = v
	}
	return starts, append([]string(nil), c.actors...)
}

// TestLeaderFailover runs three control planes against real Postgres (the
// lease) and real NATS (queues, heartbeats) with a shared recording driver:
// one acts at a time, a follower takes over within seconds when the leader
// stops or its session is killed, and the new leader adopts the runners
// it finds instead of starting duplicates.
func TestLeaderFailover(t *testing.T) {
	db := testenv.Postgres(t)
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx := t.Context()

	deps := []registry.Deployment{
		{ID: "dep_warm", Name: "warm", ArtifactSHA256: "aaaa", MinRunners: 2, MaxRunners: 3, Parallel: 1, IdleTimeout: time.Hour},
		{ID: "dep_cold", Name: "cold", ArtifactSHA256: "bbbb", MinRunners: 1, MaxRunners: 1, Parallel: 1, IdleTimeout: time.Hour},
	}
	c := &cluster{runners: map[string]RunnerRef{}, starts: map[string]int{}}
	// A key of this test's own: tests of other packages share the server.
	key := rand.Int64N(1<<62) + 1

	type plane struct {
		lease  *PostgresLease
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(name string) plane {
		lease := &PostgresLease{ConnString: db, Key: key, Grace: 300 * time.Millisecond, Log: slog.Default().With("cp", name)}
		cp, err := New(Config{
			Registry:     staticRegistry{deps},
			Driver:       clusterView{c, name},
			NATS:         nc,
			Logger:       slog.Default().With("cp", name),
			Tick:         100 * time.Millisecond,
			StartTimeout: time.Hour, // the recorded runners never heartbeat
			DeadAfter:    time.Hour,
			Lease:        lease,
		})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			cp.Run(runCtx)
		}()
		return plane{lease, cancel, done}
	}
	waitActor := func(name string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			_, actors := c.snapshot()
			if len(actors) > 0 && actors[len(actors)-1] == name {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("control plane %s did not take over within 30s", name)
	}

	a := start("a")
	waitActor("a")
	b := start("b")
	time.Sleep(time.Second) // b stands by for several ticks

	// The leader stops (as on SIGTERM): b takes over.
	stopped := time.Now()
	a.cancel()
	<-a.done
	waitActor("b")
	t.Logf("b took over %s after a stopped", time.Since(stopped).Round(time.Millisecond))

	// The leader's Postgres session dies under it (as when Postgres
	// restarts or a network fault ends it): b must notice and stop acting,
	// and c takes over.
	cpl := start("c")
	defer func() { cpl.cancel(); <-cpl.done }()
	time.Sleep(time.Second)
	admin, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var n int
	err = admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND classid = ($1::bigint >> 32)::oid AND objid = ($1::bigint & 4294967295)::oid`, key).Scan(&n)
	if err != nil || n != 1 {
		t.Fatalf("terminating the leader's session: %d sessions, %v", n, err)
	}
	killed := time.Now()
	waitActor("c")
	t.Logf("c took over %s after b's session was killed", time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second)
	b.cancel()
	<-b.done

	starts, actors := c.snapshot()
	for _, d := range deps {
		if starts[d.Name] != d.MinRunners {
			t.Errorf("deployment %s: %d runners started, want %d (no duplicates across the handovers)", d.Name, starts[d.Name], d.MinRunners)
		}
	}
	// Leadership passed a → b → c, each acting only in its own turn.
	seq := []string{}
	for _, who := range actors {
		if len(seq) == 0 || seq[len(seq)-1] != who {
			seq = append(seq, who)
		}
	}
	if len(seq) != 3 || seq[0] != "a" || seq[1] != "b" || seq[2] != "c" {
		t.Errorf("control planes acted in turns %v, want [a b c]", seq)
	}
}
