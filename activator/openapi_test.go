package activator

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"

	"github.com/infer-run/infer/internal/testenv"
)

// echoParam matches echo's path parameters (":name"), which OpenAPI writes
// as "{name}".
var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// TestOpenAPIMatchesRoutes checks the API reference against the routes the
// server really registers, both ways, so a new route cannot ship
// undocumented and a removed one cannot stay documented. It also checks
// that the served /openapi.json is a valid OpenAPI 3 document.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	nc, err := nats.Connect(testenv.NATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv, err := New(Config{NATS: nc, Logger: slog.Default()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)

	// Served without a key, as JSON.
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	resp, err := http.Get(hs.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !json.Valid(body) {
		t.Fatal("GET /openapi.json is not JSON")
	}

	doc, err := openapi3.NewLoader().LoadFromData(body)
	if err != nil {
		t.Fatalf("loading the served document: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.yaml is not valid OpenAPI 3: %v", err)
	}

	documented := map[string]bool{} // "GET /v1/models/{name}"
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	registered := map[string]bool{}
	for _, r := range srv.echo.Routes() {
		// Catch-all and not-found routes are not API routes, nor are the
		// web console's pages.
		if strings.Contains(r.Path, "*") || r.Method == echo.RouteNotFound || isConsoleRoute(r.Path) {
			continue
		}
		registered[r.Method+" "+echoParam.ReplaceAllString(r.Path, "{$1}")] = true
	}
	for _, k := range sortedKeys(registered) {
		if !documented[k] {
			t.Errorf("route %s is registered but not in activator/openapi.yaml", k)
		}
	}
	for _, k := range sortedKeys(documented) {
		if !registered[k] {
			t.Errorf("activator/openapi.yaml documents %s, which the server does not register", k)
		}
	}
}

func sortedKeys(m map[string]bool) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
