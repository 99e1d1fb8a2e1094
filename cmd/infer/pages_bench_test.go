package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/testenv"
)

// BenchmarkListPages measures a page of each list with 10,000 deployments
// and 100,000 usage records in one tenant, on a real `infer dev`: GET
// /v1/models (from the activator's cache), GET /v1/deployments (Postgres
// plus a queue-depth lookup per deployment that has a queue), GET
// /v1/usage at the first page and deep in the list (keyset: the same
// cost), and `infer ls` as a user runs it (a process: its start
// included). The first 100 deployments by name, the first page, are made
// through the API and given queues, as deployments that once had work
// have (the worst case for a page); the other 9,900 are inserted in SQL in
// one statement, which makes setting up 10,000 take seconds (creating
// them through the API: BenchmarkPutDeploymentsBatch in activator/), and
// have none, as deployments that never had work. Target: every page
// under 100 ms.
//
//	go test -run '^$' -bench ListPages -benchtime 20x ./cmd/infer
func BenchmarkListPages(b *testing.B) {
	natsURL := testenv.NATS(b)
	p := startPlatformWith(b, platformOptions{localBlobs: true, nats: natsURL})
	var d map[string]any
	deploy := exec.Command(p.bin, "deploy", "a-000", "--weights", testenv.ModelPath(b), "--json")
	deploy.Env = p.env
	out, err := deploy.Output()
	if err != nil {
		b.Fatalf("deploy: %v %s", err, out)
	}
	if err := json.Unmarshal(out, &d); err != nil {
		b.Fatalf("deploy printed %s", out)
	}
	tenant, sha := d["tenant_id"].(string), d["artifact_sha256"].(string)
	for i := 1; i < 100; i++ {
		if code, _, body := p.do(http.MethodPut, fmt.Sprintf("/v1/deployments/a-%03d", i), p.key, `{"artifact":"`+sha+`"}`); code != 200 {
			b.Fatalf("PUT: %d %s", code, body)
		}
	}
	ctx := b.Context()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		d := p.page(b, fmt.Sprintf("/v1/deployments?limit=1&after=a-%03d", i-1))
		if i == 0 {
			d = p.page(b, "/v1/deployments?limit=1")
		}
		var dep struct {
			ID string `json:"id"`
		}
		json.Unmarshal(d.Data[0], &dep)
		if _, err := queue.Ensure(ctx, js, dep.ID, queue.DeploymentLimits(100, time.Minute, 1)); err != nil {
			b.Fatal(err)
		}
	}
	conn, err := pgx.Connect(ctx, p.dbURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO deployments (id, tenant_id, name, artifact_sha256)
		SELECT 'dep_bench' || lpad(i::text, 17, '0'), $1, 'z-' || lpad(i::text, 5, '0'), $2
		FROM generate_series(1, 9900) AS i`, tenant, sha); err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO usage (request_id, deployment, deployment_id, tenant_id, key_id, status, created_at)
		SELECT 'req-' || i, 'a-000', '', $1, '', 'ok', now() - i * interval '1 second'
		FROM generate_series(1, 100000) AS i`, tenant); err != nil {
		b.Fatal(err)
	}
	conn.Exec(ctx, "ANALYZE")
	// The activator's cache reloads the deployments on the change
	// notification.
	waitFor(b, 30*time.Second, "10,000 models listed", func() bool {
		return len(p.page(b, "/v1/models?after=z-09899").Data) == 1
	})

	for _, path := range []string{
		"/v1/models?limit=1", // what any authenticated request costs
		"/v1/models?limit=100",
		"/v1/models",                         // the default page: 1,000
		"/v1/models?after=z-05000&limit=100", // deep
		"/v1/deployments",                    // 100, each with a queue: a depth lookup each
		"/v1/deployments?after=z-05000",      // deep: 100 without queues, no lookup
		"/v1/usage",                          // 100 newest of 100,000
		"/v1/usage?after=req-90000",          // deep
	} {
		first := p.page(b, path)
		b.Run("GET "+path, func(b *testing.B) {
			for b.Loop() {
				if pg := p.page(b, path); len(pg.Data) != len(first.Data) {
					b.Fatalf("%d items, then %d", len(first.Data), len(pg.Data))
				}
			}
			b.ReportMetric(float64(len(first.Data)), "items/page")
		})
	}
	for _, args := range [][]string{{"ls"}, {"ls", "--after", "z-05000"}} {
		b.Run("infer "+strings.Join(args, " "), func(b *testing.B) {
			for b.Loop() {
				cmd := exec.Command(p.bin, args...)
				cmd.Env = p.env
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("infer ls: %v\n%s", err, out)
				}
			}
		})
	}
}

// listPage is a page of a list as the API answers it.
type listPage struct {
	Data    []json.RawMessage `json:"data"`
	HasMore bool              `json:"has_more"`
}

// page GETs a list page with the admin key.
func (p *platform) page(tb testing.TB, path string) listPage {
	tb.Helper()
	req, _ := http.NewRequest(http.MethodGet, p.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+p.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var pg listPage
	if resp.StatusCode != 200 || json.Unmarshal(body, &pg) != nil {
		tb.Fatalf("GET %s: %d %.300s", path, resp.StatusCode, body)
	}
	return pg
}
