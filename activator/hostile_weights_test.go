package activator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// TestUploadRefusesPoisonMetadata: a well-formed GGUF whose norm epsilon
// is NaN loads in llama.cpp and then aborts the runner on every request;
// it is refused at upload with a 400 naming the key, and nothing is
// registered.
func TestUploadRefusesPoisonMetadata(t *testing.T) {
	h := newHarness(t)
	c := ggufgen.Small
	c.KV = map[string]any{"llama.attention.layer_norm_rms_epsilon": float32(math.NaN())}
	var body bytes.Buffer
	if err := ggufgen.Write(&body, c); err != nil {
		t.Fatal(err)
	}
	resp := h.upload(adminKey, bytes.NewReader(body.Bytes()), int64(body.Len()))
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), `"invalid_request_error"`) ||
		!strings.Contains(string(b), "llama.attention.layer_norm_rms_epsilon is NaN") || !strings.Contains(string(b), `"param":"file"`) {
		t.Errorf("got %d %s; want 400 naming the NaN epsilon", resp.StatusCode, b)
	}
	var n int
	h.store.Pool().QueryRow(context.Background(), "SELECT count(*) FROM artifacts").Scan(&n)
	if n != 1 { // the test model uploaded by the harness
		t.Errorf("%d artifacts registered, want 1", n)
	}
}

// TestModelThatFailsToLoad: weights that pass the upload's checks but that
// llama.cpp refuses to load (here: no llama.embedding_length, which the
// check does not require) fail the cold start: after three runners failed
// to load them, a waiting request gets 503 deployment_unavailable saying
// why, in OpenAI's shape, naming the artifact and no server path.
func TestModelThatFailsToLoad(t *testing.T) {
	h := newHarness(t)
	c := ggufgen.Small
	c.KV = map[string]any{"llama.embedding_length": nil}
	var body bytes.Buffer
	if err := ggufgen.Write(&body, c); err != nil {
		t.Fatal(err)
	}
	resp := h.upload(adminKey, bytes.NewReader(body.Bytes()), int64(body.Len()))
	var art registry.Artifact
	json.NewDecoder(resp.Body).Decode(&art)
	resp.Body.Close()
	if resp.StatusCode != 200 && resp.StatusCode != 201 {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	art, err := h.store.GetArtifact(context.Background(), art.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	put := h.do(http.MethodPut, "/v1/deployments/unloadable", `{"artifact":"`+art.SHA256+`"}`)
	put.Body.Close()
	if put.StatusCode != 200 {
		t.Fatalf("deploy: %d", put.StatusCode)
	}
	h.failToStart("unloadable", runner.Artifact{SHA256: art.SHA256, ObjectKey: art.ObjectKey, Size: art.Size})
	resp = h.do(http.MethodPost, "/v1/chat/completions", `{"model":"unloadable","messages":[{"role":"user","content":"hi"}]}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("%d %s", resp.StatusCode, b)
	if resp.StatusCode != 503 || !strings.Contains(string(b), `"code":"deployment_unavailable"`) || !strings.Contains(string(b), art.SHA256) {
		t.Errorf("got %d %s; want 503 deployment_unavailable naming the artifact", resp.StatusCode, b)
	}
	if strings.Contains(string(b), os.TempDir()) || strings.Contains(string(b), ".gguf") {
		t.Errorf("the error names a server path: %s", b)
	}
}
