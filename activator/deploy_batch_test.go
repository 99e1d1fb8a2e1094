package activator_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// batchAnswer is PUT /v1/deployments' answer, either way.
type batchAnswer struct {
	Data []struct {
		ID       string `json:"id"`
		Name     string `json:"name"`
		Parallel int    `json:"parallel"`
	} `json:"data"`
	Error  apiErrorBody `json:"error"`
	Errors []struct {
		Index int          `json:"index"`
		Name  string       `json:"name"`
		Error apiErrorBody `json:"error"`
	} `json:"errors"`
}

func (h *harness) putBatch(key, body string) (int, batchAnswer) {
	h.t.Helper()
	resp := h.doAs(key, http.MethodPut, "/v1/deployments", body)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out batchAnswer
	if err := json.Unmarshal(b, &out); err != nil {
		h.t.Fatalf("PUT /v1/deployments answered %d %.300s", resp.StatusCode, b)
	}
	return resp.StatusCode, out
}

// batchOf is a PUT /v1/deployments body of the named deployments, each
// with extra's fields.
func batchOf(sha string, extra string, names ...string) string {
	items := make([]string, len(names))
	for i, n := range names {
		items[i] = fmt.Sprintf(`{"name":%q,"artifact":%q%s}`, n, sha, extra)
	}
	return `{"deployments":[` + strings.Join(items, ",") + `]}`
}

// TestPutDeploymentsBatch creates and updates deployments many at a time:
// all are saved, in order, in one request; one refused item (a bad name, a
// name twice, a bad setting, a field of the wrong type, an unknown
// artifact) refuses the batch, every
// refused item is named with its index and field, and nothing is saved;
// the tenant's deployment quota counts the batch's new deployments
// together; only admin keys may send one.
func TestPutDeploymentsBatch(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	sha := h.art.SHA256

	names := make([]string, 250)
	for i := range names {
		names[i] = fmt.Sprintf("batch-%03d", i)
	}
	code, out := h.putBatch(adminKey, batchOf(sha, `,"parallel":2`, names...))
	if code != http.StatusOK || len(out.Data) != len(names) {
		t.Fatalf("batch of %d: %d, %d saved, %+v", len(names), code, len(out.Data), out.Error)
	}
	for i, d := range out.Data {
		if d.Name != names[i] || d.Parallel != 2 || d.ID == "" {
			t.Fatalf("item %d: %+v", i, d)
		}
	}
	stored, err := h.store.GetDeployments(ctx, h.tenant, names)
	if err != nil || len(stored) != len(names) {
		t.Fatalf("stored: %d, %v", len(stored), err)
	}
	// Updating: fields left out keep their values, the IDs stay.
	code, out = h.putBatch(adminKey, `{"deployments":[{"name":"batch-000","max_runners":3},{"name":"batch-001","parallel":4}]}`)
	if code != http.StatusOK || out.Data[0].ID != stored["batch-000"].ID || out.Data[1].Parallel != 4 {
		t.Fatalf("update: %d %+v", code, out)
	}
	if d, _ := h.store.GetDeployment(ctx, h.tenant, "batch-000"); d.MaxRunners != 3 || d.Parallel != 2 {
		t.Errorf("batch-000 after update: max_runners %d parallel %d, want 3 and 2", d.MaxRunners, d.Parallel)
	}

	// Refused items: each named; nothing saved, not even the good ones.
	code, out = h.putBatch(adminKey, `{"deployments":[
		{"name":"fresh-ok","artifact":"`+sha+`"},
		{"name":"Bad Name!","artifact":"`+sha+`"},
		{"name":"fresh-ok","artifact":"`+sha+`"},
		{"name":"fresh-2","artifact":"`+sha+`","parallel":-1},
		{"name":"fresh-3","artifact":"`+strings.Repeat("ab", 32)+`"},
		{"name":"fresh-4"},
		{"name":"batch-002","parallel":0},
		{"name":"fresh-5","artifact":"`+sha+`","min_runners":"2"}]}`)
	if code != http.StatusBadRequest || out.Error.Param != "deployments" {
		t.Fatalf("refused batch: %d %+v", code, out.Error)
	}
	want := []struct {
		index int
		param string
	}{{1, "deployments[1].name"}, {2, "deployments[2].name"}, {3, "deployments[3].parallel"}, {4, "deployments[4].artifact"}, {5, "deployments[5].artifact"}, {6, "deployments[6].parallel"}, {7, "deployments[7].min_runners"}}
	if len(out.Errors) != len(want) {
		t.Fatalf("refused items: %+v, want %v", out.Errors, want)
	}
	for i, w := range want {
		if e := out.Errors[i]; e.Index != w.index || e.Error.Param != w.param || e.Error.Message == "" {
			t.Errorf("refused item %d: %+v, want index %d param %s", i, e, w.index, w.param)
		}
	}
	if _, err := h.store.GetDeployment(ctx, h.tenant, "fresh-ok"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("fresh-ok of a refused batch: %v, want not saved", err)
	}
	if code, out := h.putBatch(adminKey, `{"deployments":[]}`); code != http.StatusBadRequest || out.Error.Param != "deployments" {
		t.Errorf("empty batch: %d %+v", code, out.Error)
	}
	over := make([]string, registry.MaxDeploymentBatch+1)
	for i := range over {
		over[i] = fmt.Sprintf("o-%d", i)
	}
	if code, out := h.putBatch(adminKey, batchOf(sha, "", over...)); code != http.StatusBadRequest || out.Error.Param != "deployments" {
		t.Errorf("batch of %d: %d %+v", len(over), code, out.Error)
	}

	// The quota counts the batch's new deployments together; updates of
	// existing ones are not new.
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	ten := h.newTenantWith(adminKey, `{"name":"batchquota","quotas":{"max_deployments":3}}`)
	tsha := h.uploadAs(ten.AdminKey, model)
	if code, out := h.putBatch(ten.AdminKey, batchOf(tsha, "", "q-1", "q-2")); code != http.StatusOK || len(out.Data) != 2 {
		t.Fatalf("2 of a quota of 3: %d %+v", code, out.Error)
	}
	code, out = h.putBatch(ten.AdminKey, batchOf(tsha, "", "q-1", "q-3", "q-4"))
	if code != http.StatusForbidden || out.Error.Param != "max_deployments" {
		t.Errorf("2 more past a quota of 3: %d %+v, want 403 max_deployments", code, out.Error)
	}
	if ds, _ := h.store.GetDeployments(ctx, ten.ID, []string{"q-3", "q-4"}); len(ds) != 0 {
		t.Errorf("saved past the quota: %v", ds)
	}
	if code, out := h.putBatch(ten.AdminKey, batchOf(tsha, `,"max_runners":2`, "q-1", "q-2", "q-3")); code != http.StatusOK || len(out.Data) != 3 {
		t.Errorf("1 new and 2 updated at a quota of 3: %d %+v", code, out.Error)
	}

	// A user key may not.
	_, user := h.newKey(adminKey, `{"name":"batch-user","role":"user"}`)
	if code, _ := h.putBatch(user, batchOf(sha, "", "by-user")); code != http.StatusForbidden {
		t.Errorf("user key: %d, want 403", code)
	}
}
