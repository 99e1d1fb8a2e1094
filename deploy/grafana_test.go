package deploy

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// metricName matches a metric name in Go source (prometheus.*Opts{Name: …})
// and in PromQL.
var (
	metricDecl = regexp.MustCompile(`Name:\s*"(infer_[a-z0-9_]+)"`)
	metricRef  = regexp.MustCompile(`\binfer_[a-z0-9_]+\b`)
)

// registeredMetrics scans the non-test Go source for metric declarations.
// A name in a dashboard that no code declares is a panel that stays empty
// forever, which nobody notices until they need it.
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	err := filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "vendor" || d.Name() == "node_modules") && path != repoRoot {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range metricDecl.FindAllStringSubmatch(string(data), -1) {
			names[m[1]] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// dashboardExprs returns every PromQL expression and template query in a
// Grafana dashboard, by panel title.
func dashboardExprs(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if dash.Title == "" || dash.UID == "" {
		t.Errorf("%s: dashboard needs a title and a uid", path)
	}
	out := map[string][]string{}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("%s: panel %q queries nothing", path, p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("%s: panel %q has an empty query", path, p.Title)
			}
			out[p.Title] = append(out[p.Title], tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if v.Definition != "" {
			out["variable "+v.Name] = append(out["variable "+v.Name], v.Definition)
		}
	}
	return out
}

func TestGrafanaDashboardQueriesRegisteredMetrics(t *testing.T) {
	registered := registeredMetrics(t)
	if len(registered) == 0 {
		t.Fatal("found no metric declarations in the Go source")
	}
	paths, err := filepath.Glob(filepath.Join("grafana", "*.json"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no dashboards under deploy/grafana: %v", err)
	}
	used := map[string]bool{}
	for _, path := range paths {
		for title, exprs := range dashboardExprs(t, path) {
			for _, e := range exprs {
				for _, ref := range metricRef.FindAllString(e, -1) {
					base := ref
					for _, suffix := range []string{"_bucket", "_sum", "_count"} {
						if b, ok := strings.CutSuffix(ref, suffix); ok && registered[b] {
							base = b
						}
					}
					if !registered[base] {
						t.Errorf("%s: panel %q queries %s, which no code registers", path, title, ref)
					}
					used[base] = true
				}
			}
		}
	}
	// What the service is operated by must be on the dashboard.
	for _, m := range []string{
		"infer_requests_total", "infer_time_to_first_token_seconds", "infer_time_per_output_token_seconds",
		"infer_e2e_request_latency_seconds", "infer_request_queue_time_seconds", "infer_prompt_tokens_total",
		"infer_generation_tokens_total", "infer_num_requests_waiting", "infer_num_requests_running",
		"infer_runners", "infer_cold_start_seconds",
	} {
		if !used[m] {
			t.Errorf("no dashboard shows %s", m)
		}
	}
}
