package activator_test

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/infer-run/infer/internal/ggufgen"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/registry"
	"github.com/infer-run/infer/runner"
)

// embeddingsBody is POST /v1/embeddings' answer.
type embeddingsBody struct {
	Object string `json:"object"`
	Data   []struct {
		Object    string          `json:"object"`
		Index     int             `json:"index"`
		Embedding json.RawMessage `json:"embedding"`
	} `json:"data"`
	Model string `json:"model"`
	Usage struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

func (b embeddingsBody) floats(t *testing.T, i int) []float32 {
	t.Helper()
	raw := b.Data[i].Embedding
	if len(raw) > 0 && raw[0] == '"' {
		var s string
		json.Unmarshal(raw, &s)
		data, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(data)%4 != 0 {
			t.Fatalf("embedding %d: bad base64 (%v, %d bytes)", i, err, len(data))
		}
		v := make([]float32, len(data)/4)
		for j := range v {
			v[j] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*j:]))
		}
		return v
	}
	var v []float32
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("embedding %d: %v", i, err)
	}
	return v
}

// embedError is an error answer.
type embedError struct {
	Error struct {
		Message string `json:"message"`
		Param   string `json:"param"`
		Code    string `json:"code"`
	} `json:"error"`
}

func (h *harness) embed(body string) (int, embeddingsBody, embedError) {
	h.t.Helper()
	resp := h.do(http.MethodPost, "/v1/embeddings", body)
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var ok embeddingsBody
	var bad embedError
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(data, &ok); err != nil {
			h.t.Fatalf("embeddings body: %v\n%s", err, data)
		}
	} else {
		json.Unmarshal(data, &bad)
	}
	return resp.StatusCode, ok, bad
}

func l2(v []float32) float64 {
	var s float64
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

func sameVector(t *testing.T, what string, a, b []float32, tol float64) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d and %d dimensions", what, len(a), len(b))
	}
	for i := range a {
		if math.Abs(float64(a[i]-b[i])) > tol {
			t.Fatalf("%s: value %d is %v and %v", what, i, a[i], b[i])
		}
	}
}

// TestEmbeddings runs /v1/embeddings end to end on stories260K (a decoder
// LLM: last-token vectors): shapes, determinism, batching, base64, token
// input, usage records, and the errors.
func TestEmbeddings(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2, "context_length": 64})
	h.startRunner("stories", 2, 64)
	usage := h.usageRecords("stories")

	code, one, bad := h.embed(`{"model":"stories","input":"Once upon a time"}`)
	if code != 200 {
		t.Fatalf("embeddings: %d %+v", code, bad)
	}
	if one.Object != "list" || len(one.Data) != 1 || one.Data[0].Object != "embedding" || one.Data[0].Index != 0 || one.Model != "stories" {
		t.Fatalf("answer: %+v", one)
	}
	v := one.floats(t, 0)
	if len(v) != 64 { // stories260K's n_embd
		t.Fatalf("%d dimensions, want 64", len(v))
	}
	if n := l2(v); math.Abs(n-1) > 1e-5 {
		t.Fatalf("norm %v, want 1", n)
	}
	if one.Usage.PromptTokens < 2 || one.Usage.TotalTokens != one.Usage.PromptTokens {
		t.Fatalf("usage %+v", one.Usage)
	}
	select {
	case rec := <-usage:
		if rec.PromptTokens != one.Usage.PromptTokens || rec.CompletionTokens != 0 || rec.Status != "ok" || !strings.HasPrefix(rec.RequestID, "embd-") {
			t.Fatalf("usage record %+v, want %d prompt tokens", rec, one.Usage.PromptTokens)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no usage record")
	}

	// The same input again, and in a batch with others: the same vector.
	_, again, _ := h.embed(`{"model":"stories","input":"Once upon a time"}`)
	sameVector(t, "the same input twice", v, again.floats(t, 0), 0)
	code, batch, bad := h.embed(`{"model":"stories","input":["The cat","Once upon a time","A dog ran"]}`)
	if code != 200 || len(batch.Data) != 3 {
		t.Fatalf("batch: %d %+v %+v", code, bad, batch)
	}
	for i, d := range batch.Data {
		if d.Index != i {
			t.Fatalf("item %d has index %d", i, d.Index)
		}
	}
	sameVector(t, "an input alone and in a batch", v, batch.floats(t, 1), 1e-4)
	_, cat, _ := h.embed(`{"model":"stories","input":"The cat"}`)
	sameVector(t, "another input alone and in a batch", cat.floats(t, 0), batch.floats(t, 0), 1e-4)
	if batch.Usage.PromptTokens <= one.Usage.PromptTokens {
		t.Fatalf("batch usage %d, not more than one input's %d", batch.Usage.PromptTokens, one.Usage.PromptTokens)
	}

	// base64: the same floats, bit for bit.
	_, b64, _ := h.embed(`{"model":"stories","input":"Once upon a time","encoding_format":"base64"}`)
	if b64.Data[0].Embedding[0] != '"' {
		t.Fatalf("base64 answer is %s", b64.Data[0].Embedding[:20])
	}
	sameVector(t, "base64 and float", v, b64.floats(t, 0), 0)

	// Token IDs: the tokens the text is (as the runner's tokenizer makes
	// them) give the text's vector.
	eng, err := runner.LoadEngine(slog.New(slog.DiscardHandler), runner.EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 1, Context: 64}, nil)
	if err != nil {
		t.Fatal(err)
	}
	toks, err := eng.EmbedTokenize([]string{"Once upon a time"})
	eng.Close()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := json.Marshal(toks[0])
	code, byIDs, bad := h.embed(`{"model":"stories","input":` + string(ids) + `}`)
	if code != 200 {
		t.Fatalf("token input: %d %+v", code, bad)
	}
	sameVector(t, "token IDs and text", v, byIDs.floats(t, 0), 1e-6)
	nested, _ := json.Marshal([][]int{toks[0], toks[0]})
	_, byNested, _ := h.embed(`{"model":"stories","input":` + string(nested) + `}`)
	sameVector(t, "arrays of token IDs and text", v, byNested.floats(t, 1), 1e-4)

	// dimensions: the first 16, normalised again.
	_, short, _ := h.embed(`{"model":"stories","input":"Once upon a time","dimensions":16}`)
	sv := short.floats(t, 0)
	if len(sv) != 16 || math.Abs(l2(sv)-1) > 1e-5 {
		t.Fatalf("dimensions 16: %d values, norm %v", len(sv), l2(sv))
	}
	scale := l2(v[:16])
	for j := range sv {
		if math.Abs(float64(sv[j])-float64(v[j])/scale) > 1e-5 {
			t.Fatalf("dimensions 16: value %d is %v, want %v", j, sv[j], float64(v[j])/scale)
		}
	}

	long := strings.Repeat("Once upon a time there was a cat. ", 20)
	for _, tc := range []struct {
		body, param, code string
	}{
		{`{"model":"stories","input":"hi","dimensions":65}`, "dimensions", ""},
		{`{"model":"stories","input":"hi","dimensions":0}`, "dimensions", ""},
		{`{"model":"stories","input":["ok","` + long + `"]}`, "input", "context_length_exceeded"},
		{`{"model":"stories","input":""}`, "input", ""},
		{`{"model":"stories","input":[]}`, "input", ""},
		{`{"model":"stories","input":["a",""]}`, "input", ""},
		{`{"model":"stories","input":[[]]}`, "input", ""},
		{`{"model":"stories","input":[1,-2]}`, "input", ""},
		{`{"model":"stories","input":[100000]}`, "input", ""},
		{`{"model":"stories","input":["a",1]}`, "input", ""},
		{`{"model":"stories"}`, "input", ""},
		{`{"model":"stories","input":"hi","encoding_format":"int8"}`, "encoding_format", ""},
		{`{"model":"stories","input":"hi","temperature":1}`, "temperature", "unsupported_parameter"},
		{`{"model":"stories","input":"hi","frobnicate":1}`, "frobnicate", "unsupported_parameter"},
	} {
		code, _, bad := h.embed(tc.body)
		if code != 400 || bad.Error.Param != tc.param || tc.code != "" && bad.Error.Code != tc.code {
			t.Errorf("%s: %d param %q code %q (%s); want 400 naming %s %s", tc.body, code, bad.Error.Param, bad.Error.Code, bad.Error.Message, tc.param, tc.code)
		}
	}
	// input on chat is refused, naming where it belongs.
	resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"stories","messages":[{"role":"user","content":"hi"}],"input":"x"}`)
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(data), "/v1/embeddings") {
		t.Errorf("input on chat: %d %s", resp.StatusCode, data)
	}

	// openai-go v3.
	c := h.client()
	ctx := context.Background()
	res, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "stories",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"The cat", "Once upon a time"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Data) != 2 || int(res.Usage.PromptTokens) <= one.Usage.PromptTokens || res.Usage.TotalTokens != res.Usage.PromptTokens {
		t.Fatalf("SDK answer %+v", res)
	}
	got := make([]float32, len(res.Data[1].Embedding))
	for i, x := range res.Data[1].Embedding {
		got[i] = float32(x)
	}
	sameVector(t, "openai-go's floats", v, got, 1e-4)
	res, err = c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "stories",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hi")}, Dimensions: openai.Int(1000)})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "dimensions" {
		t.Fatalf("dimensions 1000 through the SDK: %v", err)
	}
}

// TestEmbeddingModel deploys a random-weight llama whose GGUF declares mean
// pooling: it serves embeddings, and refuses chat and completions with a
// 400 that says where to go.
func TestEmbeddingModel(t *testing.T) {
	h := newHarness(t)
	c := ggufgen.Small
	c.Name = "ggufgen-small-embed"
	c.KV = map[string]any{"llama.pooling_type": uint32(1)}
	path := filepath.Join(t.TempDir(), "embed.gguf")
	if err := ggufgen.WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	resp := h.upload(adminKey, f, st.Size())
	f.Close()
	var art registry.Artifact
	json.NewDecoder(resp.Body).Decode(&art)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 || art.SHA256 == "" {
		t.Fatalf("upload: %d", resp.StatusCode)
	}
	resp = h.do(http.MethodPut, "/v1/deployments/embedder", `{"artifact":"`+art.SHA256+`","parallel":2,"context_length":128}`)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("deploy: %d", resp.StatusCode)
	}
	h.startRunnerWith(runner.Config{Deployment: "embedder", Artifact: runner.Artifact{SHA256: art.SHA256, ObjectKey: art.ObjectKey, Size: art.Size},
		Engine: runner.EngineConfig{Parallel: 2, Context: 128}})
	usage := h.usageRecords("embedder")

	code, batch, bad := h.embed(`{"model":"embedder","input":["alpha beta","gamma","alpha beta"]}`)
	if code != 200 {
		t.Fatalf("embeddings: %d %+v", code, bad)
	}
	a, g, a2 := batch.floats(t, 0), batch.floats(t, 1), batch.floats(t, 2)
	if len(a) != c.Embd || math.Abs(l2(a)-1) > 1e-5 {
		t.Fatalf("%d dimensions of norm %v; want %d of norm 1", len(a), l2(a), c.Embd)
	}
	sameVector(t, "one input twice in a batch", a, a2, 1e-6)
	diff := 0.0
	for i := range a {
		diff = max(diff, math.Abs(float64(a[i]-g[i])))
	}
	if diff < 1e-3 {
		t.Fatalf("different inputs, same vector (max difference %g)", diff)
	}
	select {
	case rec := <-usage:
		if rec.PromptTokens != batch.Usage.PromptTokens || rec.Status != "ok" {
			t.Fatalf("usage record %+v, want %d prompt tokens", rec, batch.Usage.PromptTokens)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no usage record")
	}

	// The upload recorded the model's pooling: the deployment says it
	// serves embeddings only, and the activator refuses chat and
	// completions itself, with no job queued for a runner.
	resp = h.do(http.MethodGet, "/v1/deployments/embedder", "")
	var view struct {
		EmbeddingOnly bool `json:"embedding_only"`
		Model         struct {
			Pooling string `json:"pooling"`
		} `json:"model"`
	}
	json.NewDecoder(resp.Body).Decode(&view)
	resp.Body.Close()
	if !view.EmbeddingOnly || view.Model.Pooling != "mean" {
		t.Errorf("deployment view %+v; want embedding_only and mean pooling", view)
	}
	for _, tc := range []struct{ path, body, param string }{
		{"/v1/chat/completions", `{"model":"embedder","messages":[{"role":"user","content":"hi"}]}`, "model"},
		{"/v1/completions", `{"model":"embedder","prompt":"hi"}`, "model"},
	} {
		resp := h.do(http.MethodPost, tc.path, tc.body)
		var e embedError
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Error.Param != tc.param || e.Error.Code != "model_not_supported" ||
			!strings.Contains(e.Error.Message, "/v1/embeddings") {
			t.Errorf("%s on an embedding model: %d %+v", tc.path, resp.StatusCode, e.Error)
		}
	}
	// No runner saw them: the next usage record is the next embeddings
	// request's, where a refusal by the runner would be recorded first.
	if code, _, bad := h.embed(`{"model":"embedder","input":"gamma"}`); code != 200 {
		t.Fatalf("embeddings after the refusals: %d %+v", code, bad)
	}
	select {
	case rec := <-usage:
		if rec.Status != "ok" || rec.PromptTokens == 0 {
			t.Errorf("usage record after the refusals: %+v; want the embeddings request's", rec)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no usage record")
	}
}
