package runner

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

func TestAdmit(t *testing.T) {
	shared := &wire.Hold{Runner: "r2"}
	alone := &wire.Hold{Runner: "r3", Alone: true, Deaths: 1}
	for _, c := range []struct {
		name      string
		delivered uint64
		prev      *wire.Hold
		holder    holderState
		want      admission
	}{
		{"first delivery: nothing recorded, side by side", 1, nil, holderNone, admission{}},
		// The first delivery's runner was frozen (SIGSTOP, a paused VM),
		// cut off from NATS, drained with an async job handed back, or
		// died: nothing tells which, so the job runs as usual, recorded.
		{"first redelivery", 2, nil, holderNone, admission{track: true}},
		{"holder alive: it woke up, or came back after a NATS outage", 3, shared, holderAlive, admission{track: true}},
		{"holder silent: frozen, or its host is gone without a word", 3, shared, holderSilent, admission{track: true}},
		{"holder died: the job is a suspect and runs alone", 3, shared, holderDead, admission{track: true, alone: true, deaths: 1}},
		{"suspect's holder alive: still a suspect", 4, alone, holderAlive, admission{track: true, alone: true, deaths: 1}},
		{"suspect's holder silent: no proof, alone again", 4, alone, holderSilent, admission{track: true, alone: true, deaths: 1}},
		{"suspect's holder died running it alone: refused", 4, alone, holderDead, admission{track: true, alone: true, refuse: true, deaths: 2}},
		{"refused on the last delivery too", 5, &wire.Hold{Runner: "r4", Alone: true, Deaths: 2}, holderDead, admission{track: true, alone: true, refuse: true, deaths: 3}},
		// A job handed back by a runner that stopped (drained, say)
		// keeps what earlier deliveries came to.
		{"handed back, no holder", 3, &wire.Hold{}, holderNone, admission{track: true}},
		{"suspect handed back", 4, &wire.Hold{Deaths: 1}, holderNone, admission{track: true, alone: true, deaths: 1}},
		// A suspect whose runner died while it waited for its turn (or
		// before it could record that it ran alone) is not refused.
		{"suspect's holder died before it ran alone", 4, &wire.Hold{Runner: "r3", Deaths: 1}, holderDead, admission{track: true, alone: true, deaths: 2}},
		{"suspect waiting, holder alive", 4, &wire.Hold{Runner: "r3", Deaths: 1}, holderAlive, admission{track: true, alone: true, deaths: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := admit(c.delivered, c.prev, c.holder); got != c.want {
				t.Errorf("admit(%d, %+v, %d) = %+v; want %+v", c.delivered, c.prev, c.holder, got, c.want)
			}
		})
	}
}

// TestGate: a suspect waits for the jobs running, and jobs taken after it
// wait for it.
func TestGate(t *testing.T) {
	var g gate
	ctx := context.Background()
	if err := g.enter(ctx, false, func() {}); err != nil {
		t.Fatal(err)
	}
	entered := func(alone bool) chan struct{} {
		c := make(chan struct{})
		go func() {
			if err := g.enter(ctx, alone, func() {}); err == nil {
				close(c)
			}
		}()
		return c
	}
	waits := func(c chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
			t.Fatalf("%s went in", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
	goes := func(c chan struct{}, what string) {
		t.Helper()
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s never went in", what)
		}
	}
	suspect := entered(true)
	waits(suspect, "the suspect, beside a running job,")
	later := entered(false)
	waits(later, "a job taken after the suspect")
	g.leave(false)
	goes(suspect, "the suspect, once alone,")
	waits(later, "a job beside the suspect")
	g.leave(true)
	goes(later, "the job after the suspect")

	// A suspect given up while it waits lets the jobs behind it go.
	wctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- g.enter(wctx, true, func() {}) }()
	time.Sleep(50 * time.Millisecond)
	behind := entered(false)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("a suspect given up: %v", err)
	}
	goes(behind, "a job behind a suspect that gave up")
}

// TestAdmitJobAsksTheHolder runs the admission of redelivered jobs against
// real NATS: the hold bucket, and holders that answer, stay silent, or are
// gone (nobody subscribes to their hold subject, as after their process
// exited).
func TestAdmitJobAsksTheHolder(t *testing.T) {
	ctx := context.Background()
	nc, js := testenv.JetStream(t)
	r, err := New(Config{ID: "me-" + wire.NewID(4), DeploymentID: "dep_d", Deployment: "d"}, nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if r.holds, err = queue.EnsureHolds(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	alive := "alive-" + wire.NewID(4)
	sub, err := nc.Subscribe(wire.HoldSubject(alive), func(m *nats.Msg) { m.Respond([]byte(wire.HoldFree)) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	silent := "silent-" + wire.NewID(4)
	quiet, err := nc.Subscribe(wire.HoldSubject(silent), func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Unsubscribe()
	dead := "dead-" + wire.NewID(4)

	hold := func(id string) *wire.Hold {
		t.Helper()
		e, err := r.holds.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		var h wire.Hold
		if err := json.Unmarshal(e.Value(), &h); err != nil {
			t.Fatal(err)
		}
		return &h
	}
	put := func(id string, h wire.Hold) {
		t.Helper()
		data, _ := json.Marshal(h)
		if _, err := r.holds.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
	}

	// A first delivery is not recorded.
	if a, rev := r.admitJob(ctx, "cmpl-first", 1, r.log); a != (admission{}) || rev != 0 || hold("cmpl-first") != nil {
		t.Errorf("first delivery: %+v, rev %d, hold %+v", a, rev, hold("cmpl-first"))
	}
	// A first redelivery is, and released when the job ends.
	a, rev := r.admitJob(ctx, "cmpl-second", 2, r.log)
	if a != (admission{track: true}) || rev == 0 {
		t.Errorf("first redelivery: %+v, rev %d", a, rev)
	}
	if h := hold("cmpl-second"); h == nil || h.Runner != r.cfg.ID || h.Alone {
		t.Errorf("first redelivery recorded %+v; want this runner, side by side", h)
	}
	r.releaseHold("cmpl-second", rev, a, true)
	if h := hold("cmpl-second"); h != nil {
		t.Errorf("released hold of an acknowledged job still there: %+v", h)
	}
	// A job handed back keeps its record, without a holder.
	a, rev = r.admitJob(ctx, "cmpl-back", 2, r.log)
	r.releaseHold("cmpl-back", rev, admission{track: true, deaths: 1}, false)
	if h := hold("cmpl-back"); h == nil || *h != (wire.Hold{Deaths: 1}) {
		t.Errorf("hold of a job handed back: %+v; want no holder, its deaths kept", h)
	}
	if a, _ := r.admitJob(ctx, "cmpl-back", 3, r.log); a != (admission{track: true, alone: true, deaths: 1}) {
		t.Errorf("the job handed back taken again: %+v", a)
	}

	for _, c := range []struct {
		name   string
		prev   wire.Hold
		want   admission
		record *wire.Hold // what the bucket holds after; nil: as before
	}{
		{"holder alive", wire.Hold{Runner: alive}, admission{track: true}, &wire.Hold{}},
		{"holder silent", wire.Hold{Runner: silent}, admission{track: true}, &wire.Hold{}},
		{"holder is this runner", wire.Hold{Runner: r.cfg.ID, Alone: true, Deaths: 1}, admission{track: true, alone: true, deaths: 1}, &wire.Hold{Deaths: 1}},
		{"holder dead", wire.Hold{Runner: dead}, admission{track: true, alone: true, deaths: 1}, &wire.Hold{Deaths: 1}},
		{"holder dead running it alone", wire.Hold{Runner: dead, Alone: true, Deaths: 1}, admission{track: true, alone: true, refuse: true, deaths: 2}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			id := "cmpl-" + wire.NewID(6)
			put(id, c.prev)
			a, rev := r.admitJob(ctx, id, 3, r.log)
			if a != c.want {
				t.Errorf("admission %+v; want %+v", a, c.want)
			}
			h := hold(id)
			switch {
			case c.record == nil:
				if rev == 0 || h == nil || *h != c.prev {
					t.Errorf("refused job: rev %d, hold %+v; want the old one %+v, to release", rev, h, c.prev)
				}
				r.releaseHold(id, rev, a, true)
				if h := hold(id); h != nil {
					t.Errorf("a refused job's hold is still there: %+v", h)
				}
			default:
				want := *c.record
				want.Runner = r.cfg.ID
				if rev == 0 || h == nil || *h != want {
					t.Errorf("hold %+v (rev %d); want %+v", h, rev, want)
				}
				if a.alone {
					// Recorded as alone once it runs alone.
					if rev = r.markAlone(id, a, rev); rev == 0 {
						t.Fatal("markAlone lost the revision")
					}
					want.Alone = true
					if h := hold(id); h == nil || *h != want {
						t.Errorf("hold once running alone %+v; want %+v", h, want)
					}
				}
				// A release by a runner whose hold was replaced since
				// leaves the new one alone.
				put(id, wire.Hold{Runner: "next"})
				r.releaseHold(id, rev, a, true)
				if h := hold(id); h == nil || h.Runner != "next" {
					t.Errorf("a stale release removed the next holder's hold: %+v", h)
				}
			}
		})
	}
}
