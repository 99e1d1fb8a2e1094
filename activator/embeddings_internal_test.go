package activator

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// TestEmbedReplyBody: floats read back as the same float32s, base64 is
// the bytes, items come in input order, and a missing vector is an error.
func TestEmbedReplyBody(t *testing.T) {
	vals := []float32{0.1, -1e-7, 1, 3.4028235e38, 1.0e-45, 0.33333334}
	for _, b64 := range []bool{false, true} {
		r := &embedReply{n: 2, base64: b64}
		r.add(&wire.Embedding{Index: 1, Vector: f32bytes(vals[3:]...)})
		r.add(&wire.Embedding{Index: 0, Vector: f32bytes(vals[:3]...)})
		r.add(&wire.Embedding{Index: 5, Vector: f32bytes(1)}) // out of range: ignored
		body, err := r.body("m\"x", wire.Usage{PromptTokens: 7})
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			Object string `json:"object"`
			Data   []struct {
				Object    string          `json:"object"`
				Index     int             `json:"index"`
				Embedding json.RawMessage `json:"embedding"`
			} `json:"data"`
			Model string         `json:"model"`
			Usage map[string]int `json:"usage"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		if got.Object != "list" || got.Model != "m\"x" || got.Usage["prompt_tokens"] != 7 || got.Usage["total_tokens"] != 7 || len(got.Data) != 2 {
			t.Fatalf("body %s", body)
		}
		var all []float32
		for i, d := range got.Data {
			if d.Index != i || d.Object != "embedding" {
				t.Fatalf("item %d: %+v", i, d)
			}
			if b64 {
				var s string
				json.Unmarshal(d.Embedding, &s)
				raw, err := base64.StdEncoding.DecodeString(s)
				if err != nil {
					t.Fatal(err)
				}
				for j := 0; j < len(raw); j += 4 {
					all = append(all, math.Float32frombits(binary.LittleEndian.Uint32(raw[j:])))
				}
			} else {
				var v []float32
				if err := json.Unmarshal(d.Embedding, &v); err != nil {
					t.Fatal(err)
				}
				all = append(all, v...)
			}
		}
		for i := range vals {
			if all[i] != vals[i] {
				t.Errorf("base64 %v: value %d reads back as %v, want %v", b64, i, all[i], vals[i])
			}
		}
	}
	r := &embedReply{n: 2}
	r.add(&wire.Embedding{Index: 0, Vector: f32bytes(1)})
	if _, err := r.body("m", wire.Usage{}); err == nil {
		t.Error("a reply missing input 1 made a body")
	}
	r.reset()
	var nilReply *embedReply
	nilReply.add(&wire.Embedding{}) // a completion's relay: no-op
	nilReply.reset()
}

// TestEmbedPromptBound: a text's bytes plus BOS and EOS, token arrays by
// length, each at most the context.
func TestEmbedPromptBound(t *testing.T) {
	job := wire.Job{Kind: wire.KindEmbedding, Inputs: []string{"abc", string(make([]byte, 5000))}}
	if got := embedPromptBound(job, 4096); got != 5+4096 {
		t.Errorf("texts: %d, want %d", got, 5+4096)
	}
	job = wire.Job{Kind: wire.KindEmbedding, InputTokens: [][]int{{1, 2, 3}, {4}}}
	if got := embedPromptBound(job, 2); got != 3 {
		t.Errorf("tokens: %d, want 3", got)
	}
}

// TestDecodeEmbeddingRequest: the input shapes OpenAI takes.
func TestDecodeEmbeddingRequest(t *testing.T) {
	for _, tt := range []struct {
		body   string
		texts  int
		tokens int
		param  string
	}{
		{`{"model":"m","input":"a"}`, 1, 0, ""},
		{`{"model":"m","input":["a","b"]}`, 2, 0, ""},
		{`{"model":"m","input":[1,2,3]}`, 0, 1, ""},
		{`{"model":"m","input":[[1],[2,3]]}`, 0, 2, ""},
		{`{"model":"m","input":[1.5]}`, 0, 0, "input"},
		{`{"model":"m","input":{"a":1}}`, 0, 0, "input"},
		{`{"model":"m","input":[["a"]]}`, 0, 0, "input"},
		{`{"model":"m","input":"a","encoding_format":null,"dimensions":null}`, 1, 0, ""},
		{`{"input":"a"}`, 0, 0, "model"},
	} {
		req, e := decodeEmbeddingRequest([]byte(tt.body))
		switch {
		case tt.param != "" && (e == nil || deref(e.Param) != tt.param):
			t.Errorf("%s: %v, want a 400 naming %s", tt.body, e, tt.param)
		case tt.param == "" && e != nil:
			t.Errorf("%s: %v", tt.body, e)
		case tt.param == "" && (len(req.texts) != tt.texts || len(req.tokens) != tt.tokens):
			t.Errorf("%s: %d texts, %d token inputs", tt.body, len(req.texts), len(req.tokens))
		}
	}
	many := `{"model":"m","input":["a"`
	for range maxEmbedInputs {
		many += `,"a"`
	}
	if _, e := decodeEmbeddingRequest([]byte(many + `]}`)); e == nil || deref(e.Param) != "input" {
		t.Errorf("%d inputs: %v, want a 400 naming input", maxEmbedInputs+1, e)
	}
}
