package activator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
)

// apiErr is an error response in OpenAI's shape.
type apiErr struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

// wantError checks a response's status and OpenAI error fields; an empty
// param or code must be null.
func wantError(t *testing.T, what string, resp *http.Response, status int, param, code string) {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e apiErr
	if err := json.Unmarshal(b, &e); err != nil || resp.StatusCode != status || e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
		t.Errorf("%s: %d %s; want %d in OpenAI's shape", what, resp.StatusCode, b, status)
		return
	}
	if got := deref(e.Error.Param); got != param {
		t.Errorf("%s: param %q, want %q (%s)", what, got, param, b)
	}
	if got := deref(e.Error.Code); got != code {
		t.Errorf("%s: code %q, want %q (%s)", what, got, code, b)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// objects lists the files in the harness's object store.
func (h *harness) objects() []string {
	h.t.Helper()
	var out []string
	filepath.WalkDir(h.blobDir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// chunked hides a body's length, so the request is sent chunked.
type chunked struct{ io.Reader }

// TestUploadLimit: a weights upload above --max-upload-bytes gets 413 in
// OpenAI's shape, at once when its Content-Length says so and midway when
// it is sent without one, and leaves neither a record nor an object.
func TestUploadLimit(t *testing.T) {
	model, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	// Another file than the harness's, so nothing deduplicates.
	model[len(model)-1] ^= 0xff
	h := newHarnessWith(t, activator.Config{MaxUploadBytes: int64(len(model)) - 1})
	before := h.objects()
	post := func(body io.Reader, size int64) *http.Response { return h.upload(adminKey, body, size) }
	// With a Content-Length over the limit the server answers before
	// reading the body (it then closes the connection).
	wantError(t, "announced too large", post(bytes.NewReader(model), int64(len(model))), 413, "file", "upload_too_large")
	wantError(t, "chunked too large", post(chunked{bytes.NewReader(model)}, -1), 413, "file", "upload_too_large")

	var n int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM artifacts").Scan(&n)
	if n != 1 { // the harness's
		t.Errorf("%d artifacts registered after refused uploads, want 1", n)
	}
	if after := h.objects(); len(after) != len(before) {
		t.Errorf("objects after refused uploads: %q, before: %q", after, before)
	}

	// Exactly at the limit is fine.
	h2 := newHarnessWith(t, activator.Config{MaxUploadBytes: int64(len(model))})
	for _, body := range []io.Reader{chunked{bytes.NewReader(model)}, bytes.NewReader(model)} {
		size := int64(len(model))
		if _, ok := body.(chunked); ok {
			size = -1
		}
		resp := h2.upload(adminKey, body, size)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			t.Errorf("upload at the limit: %d %s", resp.StatusCode, b)
		}
	}
}

// TestManagementBodyLimit: the JSON bodies of the management API are
// capped at 1 MiB with a 413 in OpenAI's shape, whether the size is
// announced or not, and nothing is stored; smaller bodies work.
func TestManagementBodyLimit(t *testing.T) {
	h := newHarness(t)
	pad := func(n int, obj string) string {
		// Valid JSON of about n bytes: the object, then white space.
		return obj[:len(obj)-1] + strings.Repeat(" ", n) + "}"
	}
	deploy := `{"artifact":"` + h.art.SHA256 + `"}`
	for _, r := range []struct{ method, path, body string }{
		{http.MethodPut, "/v1/deployments/big", deploy},
		{http.MethodPost, "/v1/keys", `{"name":"big"}`},
	} {
		for _, announced := range []bool{true, false} {
			var body io.Reader = strings.NewReader(pad(2<<20, r.body))
			if !announced {
				body = chunked{body}
			}
			req, _ := http.NewRequest(r.method, h.url+r.path, body)
			req.Header.Set("Authorization", "Bearer "+adminKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			wantError(t, fmt.Sprintf("%s %s of 2 MiB (announced %v)", r.method, r.path, announced), resp, 413, "", "request_too_large")
		}
	}
	var deps, keys int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM deployments").Scan(&deps)
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM api_keys WHERE name = 'big'").Scan(&keys)
	if deps != 0 || keys != 0 {
		t.Errorf("%d deployments and %d keys stored from oversized bodies", deps, keys)
	}
	for _, r := range []struct {
		method, path, body string
		want               int
	}{
		{http.MethodPut, "/v1/deployments/big", pad(512<<10, deploy), 200},
		{http.MethodPost, "/v1/keys", pad(512<<10, `{"name":"big"}`), 201},
	} {
		resp := h.do(r.method, r.path, r.body)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != r.want {
			t.Errorf("%s %s of 512 KiB: %d %s, want %d", r.method, r.path, resp.StatusCode, b, r.want)
		}
	}
}

// TestKeyNames: POST /v1/keys refuses names with control or formatting
// characters (NUL used to reach Postgres and come back as a 503) or too
// long, with 400 param "name".
func TestKeyNames(t *testing.T) {
	h := newHarness(t)
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"ci", true},
		{"", true},
		{"équipe données", true},
		{strings.Repeat("n", registry.MaxKeyNameLen), true},
		{strings.Repeat("n", registry.MaxKeyNameLen+1), false},
		{"a\x00b", false},
		{"a\nb", false},
		{"\x1b[2J", false},
		{"a\u202eb", false},
		{"a\u0085b", false},
	} {
		body, _ := json.Marshal(map[string]string{"name": tt.name})
		resp := h.do(http.MethodPost, "/v1/keys", string(body))
		if tt.ok {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 201 {
				t.Errorf("key name %q: %d %s, want 201", tt.name, resp.StatusCode, b)
			}
			continue
		}
		wantError(t, fmt.Sprintf("key name %q", tt.name), resp, 400, "name", "")
	}
}

// TestForeignArtifact: an admin of another tenant who knows an artifact's
// digest cannot deploy it (it is reported missing, as a digest nobody
// uploaded is) until they upload the same bytes themselves, which stores
// nothing new.
func TestForeignArtifact(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	tenant, err := h.store.EnsureTenant(ctx, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	_, foreign, err := h.store.CreateKey(ctx, tenant.ID, "intruder-admin", registry.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	deploy := `{"artifact":"` + h.art.SHA256 + `"}`
	wantError(t, "deploying another tenant's artifact", h.doAs(foreign, http.MethodPut, "/v1/deployments/stolen", deploy), 400, "artifact", "")
	missing := `{"artifact":"` + strings.Repeat("0", 64) + `"}`
	wantError(t, "deploying a missing artifact", h.doAs(foreign, http.MethodPut, "/v1/deployments/stolen", missing), 400, "artifact", "")
	var n int
	h.store.Pool().QueryRow(ctx, "SELECT count(*) FROM deployments").Scan(&n)
	if n != 0 {
		t.Fatalf("%d deployments stored", n)
	}
	// The owner's tenant deploys it; the intruder still may not point a
	// deployment of its own at it.
	h.deploy("mine", map[string]any{})
	wantError(t, "after the owner deployed it", h.doAs(foreign, http.MethodPut, "/v1/deployments/stolen", deploy), 400, "artifact", "")

	// Having the bytes is what counts.
	objects := h.objects()
	f, err := os.Open(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	resp := h.upload(foreign, f, -1)
	var a registry.Artifact
	json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if resp.StatusCode != 201 || a.SHA256 != h.art.SHA256 {
		t.Fatalf("uploading the same bytes: %d %+v", resp.StatusCode, a)
	}
	if got := h.objects(); len(got) != len(objects) {
		t.Errorf("objects after a duplicate upload: %q, before %q", got, objects)
	}
	resp = h.doAs(foreign, http.MethodPut, "/v1/deployments/theirs", deploy)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("deploying uploaded weights: %d %s", resp.StatusCode, b)
	}
}
