package natsconn

import (
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
)

// silent is whether lastHeard is silent for over 10 ms, judged now.
func silent(u *Uptime, lastHeard time.Time) bool {
	now := time.Now()
	return Silent(lastHeard, u.Since(now), 10*time.Millisecond, now)
}

// TestUptime restarts a real NATS server under a connection: the stretch
// holds while connected, restarts while the server is down, and starts
// after the reconnect once it is back, so silence from before the outage
// does not count.
func TestUptime(t *testing.T) {
	ns := testenv.StartRestartableNATS(t, server.Options{})
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", ns.Port()), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	u := NewUptime(nc)
	began := u.Since(time.Now())
	lastHeard := time.Now()
	time.Sleep(20 * time.Millisecond)
	if got := u.Since(time.Now()); !got.Equal(began) {
		t.Fatalf("connected throughout: Since moved from %v to %v", began, got)
	}
	if !silent(u, lastHeard) {
		t.Error("20 ms of silence on an unbroken connection is not silence over 10 ms")
	}

	ns.Stop()
	for deadline := time.Now().Add(5 * time.Second); nc.Status() == nats.CONNECTED; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not notice the server go")
		}
	}
	down := time.Now()
	time.Sleep(20 * time.Millisecond)
	if silent(u, lastHeard) {
		t.Error("silence during an outage counted")
	}
	if got := u.Since(time.Now()); got.Before(down) {
		t.Errorf("while down, Since is %v, before the outage began at %v", got, down)
	}

	ns.Start()
	for deadline := time.Now().Add(10 * time.Second); nc.Status() != nats.CONNECTED; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not reconnect")
		}
	}
	back := u.Since(time.Now())
	if back.Before(down) {
		t.Errorf("after the reconnect, Since is %v, before the outage", back)
	}
	time.Sleep(20 * time.Millisecond)
	if got := u.Since(time.Now()); !got.Equal(back) {
		t.Errorf("connected again: Since moved from %v to %v", back, got)
	}
	if !silent(u, lastHeard) {
		t.Error("20 ms of silence after the reconnect is not silence over 10 ms")
	}

	// An outage between two calls is seen by the reconnect count.
	before := time.Now()
	ns.Stop()
	ns.Start()
	for deadline := time.Now().Add(10 * time.Second); nc.Stats().Reconnects < 2 || nc.Status() != nats.CONNECTED; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the client did not reconnect a second time")
		}
	}
	if got := u.Since(time.Now()); got.Before(before) {
		t.Errorf("an outage no call saw: Since is %v, before it began at %v", got, before)
	}
}
