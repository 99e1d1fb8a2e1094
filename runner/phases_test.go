package runner

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// slowStore serves a real store's objects at a bounded rate, as a store
// across a slow link would.
type slowStore struct {
	blob.Store
	chunk int
	pause time.Duration
}

func (s slowStore) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	rc, n, err := s.Store.Open(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return &slowReader{ReadCloser: rc, s: s}, n, nil
}

type slowReader struct {
	io.ReadCloser
	s slowStore
}

func (r *slowReader) Read(p []byte) (int, error) {
	time.Sleep(r.s.pause)
	return r.ReadCloser.Read(p[:min(len(p), r.s.chunk)])
}

// storedModel puts the test model into a new object store, as an upload
// does, and returns its artifact.
func storedModel(t *testing.T) (Artifact, *blob.Dir) {
	t.Helper()
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(model)
	dir, err := blob.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const key = "uploads/model.gguf"
	if err := dir.Put(context.Background(), key, bytes.NewReader(model), int64(len(model))); err != nil {
		t.Fatal(err)
	}
	return Artifact{SHA256: hex.EncodeToString(sum[:]), ObjectKey: key, Size: int64(len(model))}, dir
}

// runRunner runs a runner until the test ends.
func runRunner(t *testing.T, cfg Config, nc *nats.Conn) {
	t.Helper()
	r, err := New(cfg, nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// watchHeartbeats starts a runner with engine settings e, its weights in
// a new store (seen through wrap when not nil), and returns its
// heartbeats.
func watchHeartbeats(t *testing.T, e EngineConfig, wrap func(*blob.Dir) Blobs) <-chan wire.Heartbeat {
	t.Helper()
	art, dir := storedModel(t)
	var store Blobs = dir
	if wrap != nil {
		store = wrap(dir)
	}
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	deployment, id := "beats-"+wire.NewID(4), wire.NewID(4)
	beats := make(chan wire.Heartbeat, 1024)
	sub, err := nc.Subscribe(wire.HeartbeatSubject(deployment, id), func(m *nats.Msg) {
		var hb wire.Heartbeat
		if json.Unmarshal(m.Data, &hb) == nil {
			beats <- hb
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	runRunner(t, Config{ID: id, DeploymentID: deployment, Deployment: deployment, Artifact: art, Cache: &Cache{Dir: t.TempDir(), Blobs: store}, Engine: e}, nc)
	return beats
}

// TestColdStartPhasesPublished: a starting runner reports each phase in
// its heartbeats as it begins — fetching with the share of the weights
// downloaded so far, then loading, then ready — which the activator turns
// into the comments waiting streams see.
func TestColdStartPhasesPublished(t *testing.T) {
	// ~1.2 MB in 32 KiB reads 50 ms apart: about two seconds of fetching,
	// so the 250 ms progress reports fall between 0 and 100%.
	beats := watchHeartbeats(t, EngineConfig{Parallel: 1, Context: 256}, func(d *blob.Dir) Blobs {
		return slowStore{Store: d, chunk: 32 << 10, pause: 50 * time.Millisecond}
	})

	var seen []string // phase, or phase and detail, each change once
	deadline := time.After(60 * time.Second)
	for ready := false; !ready; {
		select {
		case hb := <-beats:
			s := string(hb.Phase)
			if hb.Detail != "" {
				s += " " + hb.Detail
			}
			if len(seen) == 0 || seen[len(seen)-1] != s {
				seen = append(seen, s)
			}
			ready = hb.Phase == wire.PhaseReady
			if hb.Phase == wire.PhaseFailed {
				t.Fatalf("runner failed to start: %s", hb.Detail)
			}
		case <-deadline:
			t.Fatalf("runner not ready within 60 s; phases %q", seen)
		}
	}
	t.Logf("phases: %q", seen)
	at := func(s string) int {
		return slices.IndexFunc(seen, func(p string) bool { return strings.HasPrefix(p, s) })
	}
	partial := slices.IndexFunc(seen, func(p string) bool {
		pct, ok := strings.CutPrefix(p, string(wire.PhaseFetching)+" fetching weights ")
		return ok && pct != "0%" && pct != "100%" && strings.HasSuffix(pct, "%")
	})
	full, loading, ready := at(string(wire.PhaseFetching)+" fetching weights 100%"), at(string(wire.PhaseLoading)), at(string(wire.PhaseReady))
	if partial < 0 || full < partial || loading < full || ready < loading {
		t.Errorf("phases %q; want fetching with a share between 0 and 100%%, then 100%%, loading, ready", seen)
	}
}
