package activator_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/registry"
)

// page is a list page as the API answers it.
type page struct {
	Object  string            `json:"object"`
	Data    []json.RawMessage `json:"data"`
	FirstID *string           `json:"first_id"`
	LastID  *string           `json:"last_id"`
	HasMore bool              `json:"has_more"`
}

// getPage GETs a list page with key and fails the test unless it is 200.
func (h *harness) getPage(key, path string) page {
	h.t.Helper()
	resp := h.doAs(key, http.MethodGet, path, "")
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p page
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &p) != nil || p.Object != "list" {
		h.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	return p
}

// walk follows a list's pages from path (which has a query) and returns
// the items' id field and the page sizes.
func (h *harness) walk(key, path, idField string) (ids []string, sizes []int) {
	h.t.Helper()
	after := ""
	for range 50 {
		p := h.getPage(key, path+"&after="+after)
		sizes = append(sizes, len(p.Data))
		var first, last string
		for i, raw := range p.Data {
			var item map[string]any
			json.Unmarshal(raw, &item)
			id, _ := item[idField].(string)
			ids = append(ids, id)
			if i == 0 {
				first = id
			}
			last = id
		}
		if len(p.Data) > 0 && (p.FirstID == nil || *p.FirstID != first || p.LastID == nil || *p.LastID != last) {
			h.t.Errorf("GET %s: first_id %v last_id %v; want %s and %s", path, p.FirstID, p.LastID, first, last)
		}
		if len(p.Data) == 0 && (p.FirstID != nil || p.LastID != nil) {
			h.t.Errorf("GET %s: an empty page with first_id %v last_id %v; want null", path, p.FirstID, p.LastID)
		}
		if !p.HasMore {
			return ids, sizes
		}
		after = last
	}
	h.t.Fatalf("GET %s never ended", path)
	return nil, nil
}

// TestListPaging pages GET /v1/deployments, /v1/models and /v1/usage as
// OpenAI's lists do (limit, after=last_id, has_more), for an admin key and
// for a key limited to some deployments, and refuses bad paging values
// with 400 naming the parameter.
func TestListPaging(t *testing.T) {
	h := newHarness(t)
	var names []string
	for i := range 5 {
		name := fmt.Sprintf("page-%d", 4-i)
		h.deploy(name, map[string]any{"idle_timeout": "90s", "queue_timeout": 30})
		names = append(names, name)
	}
	slices.Sort(names)

	for _, list := range []string{"/v1/deployments", "/v1/models"} {
		field := "name"
		if list == "/v1/models" {
			field = "id"
		}
		ids, sizes := h.walk(adminKey, list+"?limit=2", field)
		if !slices.Equal(ids, names) || !slices.Equal(sizes, []int{2, 2, 1}) {
			t.Errorf("%s by 2: %v in pages %v; want %v in [2 2 1]", list, ids, sizes, names)
		}
		// The default page holds them all.
		if p := h.getPage(adminKey, list); len(p.Data) != 5 || p.HasMore {
			t.Errorf("%s: %d items, has_more %v; want 5, false", list, len(p.Data), p.HasMore)
		}
		limited := h.createKey(`{"name":"two","role":"user","deployments":["page-3","page-1"]}`)
		if ids, _ := h.walk(limited, list+"?limit=1", field); !slices.Equal(ids, []string{"page-1", "page-3"}) {
			t.Errorf("%s for a key limited to page-1 and page-3: %v", list, ids)
		}
		for _, q := range []string{"limit=0", "limit=1001", "limit=x", "limit=-3", "after=%01"} {
			resp := h.do(http.MethodGet, list+"?"+q, "")
			e := decodeError(t, resp)
			param := strings.Split(q, "=")[0]
			if resp.StatusCode != http.StatusBadRequest || e.Param != param || e.Type != "invalid_request_error" {
				t.Errorf("GET %s?%s: %d %+v; want 400 naming %s", list, q, resp.StatusCode, e, param)
			}
		}
	}

	// Durations are seconds, as PUT takes them.
	var d map[string]any
	json.Unmarshal(h.getPage(adminKey, "/v1/deployments?limit=1").Data[0], &d)
	if d["idle_timeout"] != 90.0 || d["queue_timeout"] != 30.0 {
		t.Errorf("idle_timeout %v, queue_timeout %v; want 90 and 30 (seconds)", d["idle_timeout"], d["queue_timeout"])
	}

	// Usage: records of the harness tenant, written as the control plane
	// writes them, several in one instant.
	at := time.Now().Add(-time.Minute).Truncate(time.Second)
	var reqs []string
	for i := range 5 {
		r := registry.UsageRecord{RequestID: fmt.Sprintf("paged-%d", i), Deployment: "page-0", TenantID: h.tenant, Status: "ok", CreatedAt: at.Add(time.Duration(i/2) * time.Second)}
		if _, err := h.store.RecordUsage(t.Context(), r); err != nil {
			t.Fatal(err)
		}
		reqs = append([]string{r.RequestID}, reqs...)
	}
	ids, sizes := h.walk(adminKey, "/v1/usage?deployment=page-0&limit=2", "request_id")
	if !slices.Equal(ids, reqs) || !slices.Equal(sizes, []int{2, 2, 1}) {
		t.Errorf("usage by 2: %v in pages %v; want %v in [2 2 1]", ids, sizes, reqs)
	}
	for _, q := range []string{"limit=0", "limit=1001", "after=no-such-request", "group_by=day&limit=5", "group_by=day&after=paged-1"} {
		resp := h.do(http.MethodGet, "/v1/usage?"+q, "")
		e := decodeError(t, resp)
		param := "limit"
		if strings.Contains(q, "after") {
			param = "after"
		}
		if resp.StatusCode != http.StatusBadRequest || e.Param != param {
			t.Errorf("GET /v1/usage?%s: %d %+v; want 400 naming %s", q, resp.StatusCode, e, param)
		}
	}
}

// apiErrorBody is the error object of an OpenAI-shaped error answer.
type apiErrorBody struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   string `json:"param"`
}

// decodeError reads an error answer's error object and closes the body.
func decodeError(t *testing.T, resp *http.Response) apiErrorBody {
	t.Helper()
	defer resp.Body.Close()
	var body struct {
		Error apiErrorBody `json:"error"`
	}
	b, _ := io.ReadAll(resp.Body)
	json.Unmarshal(b, &body)
	return body.Error
}

// TestMaxTokensBeyondDeploymentContext checks that a max_tokens the
// deployment's context_length cannot hold is refused at once, by the
// activator: no runner exists, so nothing else could answer.
func TestMaxTokensBeyondDeploymentContext(t *testing.T) {
	h := newHarness(t)
	h.deploy("short", map[string]any{"context_length": 64, "queue_timeout": "2s"})
	start := time.Now()
	resp := h.do(http.MethodPost, "/v1/completions", `{"model":"short","prompt":"Once upon a time","max_tokens":64}`)
	e := decodeError(t, resp)
	if resp.StatusCode != http.StatusBadRequest || e.Param != "max_tokens" || !strings.Contains(e.Message, "64 tokens") {
		t.Errorf("max_tokens 64 with a context of 64: %d %+v; want 400 naming max_tokens", resp.StatusCode, e)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("refused after %s; want at once, not after the queue timeout", d)
	}
}
