package testenv_test

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/testenv"
)

func TestPostgres(t *testing.T) {
	var dbURL string
	// A subtest so its cleanup (the DROP) has run when we check for it.
	ok := t.Run("use", func(t *testing.T) {
		dbURL = testenv.Postgres(t)
		ctx := t.Context()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		// conn is left open on purpose: dropping the database must cope
		// with sessions the code under test forgot to close.

		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil {
			t.Fatalf("count tables: %v", err)
		}
		if n != 0 {
			t.Fatalf("new database has %d tables, want 0", n)
		}
		if _, err := conn.Exec(ctx, "CREATE TABLE kv (k text PRIMARY KEY, v int NOT NULL)"); err != nil {
			t.Fatalf("create table: %v", err)
		}
		if _, err := conn.Exec(ctx, "INSERT INTO kv VALUES ($1, $2)", "answer", 42); err != nil {
			t.Fatalf("insert: %v", err)
		}
		var v int
		if err := conn.QueryRow(ctx, "SELECT v FROM kv WHERE k = $1", "answer").Scan(&v); err != nil {
			t.Fatalf("select: %v", err)
		}
		if v != 42 {
			t.Fatalf("got %d, want 42", v)
		}
	})
	if !ok {
		return
	}

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	if !strings.HasPrefix(name, "infer_test_") {
		t.Fatalf("database %q lacks the infer_test_ prefix", name)
	}
	admin := *u
	admin.Path = "/postgres"
	conn, err := pgx.Connect(t.Context(), admin.String())
	if err != nil {
		t.Fatalf("connect admin: %v", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(t.Context(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		t.Fatalf("query pg_database: %v", err)
	}
	if exists {
		t.Fatalf("database %s still exists after the test ended", name)
	}
}

func TestNATS(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, js := testenv.JetStream(t)
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := js.Publish(ctx, "t.hello", []byte("world")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	if msg.Subject() != "t.hello" || string(msg.Data()) != "world" {
		t.Fatalf("got %s %q, want t.hello \"world\"", msg.Subject(), msg.Data())
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
}

func TestFreePort(t *testing.T) {
	if p := testenv.FreePort(t); p <= 0 || p > 65535 {
		t.Fatalf("FreePort = %d", p)
	}
}

func TestModelPath(t *testing.T) {
	root := testenv.RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("RepoRoot %s: %v", root, err)
	}
	p := testenv.ModelPath(t)
	fi, err := os.Stat(p)
	if err != nil || fi.Size() == 0 {
		t.Fatalf("ModelPath %s: %v", p, err)
	}
}
