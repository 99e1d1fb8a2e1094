package activator_test

import (
	"bytes"
	"context"
	"io"
	"math"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/ggufgen"
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
