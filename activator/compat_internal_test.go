package activator

import (
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/openai/openai-go/v3"

	"github.com/infer-run/infer/internal/wire"
)

// TestCompatTableMatchesDocs: docs/api.md's compatibility table is the
// one compatTable renders.
func TestCompatTableMatchesDocs(t *testing.T) {
	doc, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- compat:begin -->\n", "<!-- compat:end -->"
	_, rest, ok := strings.Cut(string(doc), begin)
	table, _, ok2 := strings.Cut(rest, end)
	if !ok || !ok2 {
		t.Fatalf("docs/api.md has no table between %q and %q", begin, end)
	}
	if want := compatMarkdown(); table != want {
		t.Errorf("docs/api.md's compatibility table differs from compatTable; it should be:\n%s", want)
	}
}

// TestCompatCoversSDK: every field of openai-go v3's request parameters
// has a row, for the endpoint that takes it, so none is accepted or
// refused by accident.
func TestCompatCoversSDK(t *testing.T) {
	for _, tt := range []struct {
		kind   wire.Kind
		params any
	}{
		{wire.KindChat, openai.ChatCompletionNewParams{}},
		{wire.KindCompletion, openai.CompletionNewParams{}},
		{wire.KindEmbedding, openai.EmbeddingNewParams{}},
	} {
		typ := reflect.TypeOf(tt.params)
		for i := range typ.NumField() {
			name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			if compatRule(name, tt.kind, false) == nil {
				t.Errorf("%s: the SDK's field %q has no row in compatTable", tt.kind, name)
			}
		}
	}
}

// TestCheckFields: what is refused, naming the field, and what passes.
func TestCheckFields(t *testing.T) {
	const chat, comp = wire.KindChat, wire.KindCompletion
	for _, tt := range []struct {
		name  string
		kind  wire.Kind
		async bool
		body  string
		param string // "" accepted
	}{
		{"unknown", chat, false, `{"model":"m","frobnicate":1}`, "frobnicate"},
		{"embeddings: unknown", wire.KindEmbedding, false, `{"model":"m","input":"a","frobnicate":1}`, "frobnicate"},
		{"embeddings: a sampling field", wire.KindEmbedding, false, `{"model":"m","input":"a","temperature":1}`, "temperature"},
		{"embeddings: all of its own", wire.KindEmbedding, false, `{"model":"m","input":"a","encoding_format":"base64","dimensions":8,"user":"u"}`, ""},
		{"input on chat", chat, false, `{"model":"m","input":"a"}`, "input"},
		{"n 2", chat, false, `{"model":"m","n":2}`, ""},
		{"best_of n", comp, false, `{"model":"m","n":2,"best_of":2}`, ""},
		{"n 1", chat, false, `{"model":"m","n":1}`, ""},
		{"n null", chat, false, `{"model":"m","n":null}`, ""},
		{"best_of 1", comp, false, `{"model":"m","best_of":1}`, ""},
		{"suffix", comp, false, `{"model":"m","suffix":"end"}`, ""}, // the runner knows whether the model has FIM tokens
		{"empty suffix", comp, false, `{"model":"m","suffix":""}`, ""},
		{"echo on chat", chat, false, `{"model":"m","echo":true}`, "echo"},
		{"echo", comp, false, `{"model":"m","echo":true}`, ""},
		{"audio", chat, false, `{"model":"m","audio":{"voice":"alloy","format":"mp3"}}`, "audio"},
		{"modalities audio", chat, false, `{"model":"m","modalities":["text","audio"]}`, "modalities"},
		{"modalities text", chat, false, `{"model":"m","modalities":["text"]}`, ""},
		{"store true", chat, false, `{"model":"m","store":true}`, "store"},
		{"store false", chat, false, `{"model":"m","store":false}`, ""},
		{"metadata", chat, false, `{"model":"m","metadata":{"a":"b"}}`, "metadata"},
		{"service_tier flex", chat, false, `{"model":"m","service_tier":"flex"}`, "service_tier"},
		{"service_tier auto", chat, false, `{"model":"m","service_tier":"auto"}`, ""},
		{"reasoning_effort", chat, false, `{"model":"m","reasoning_effort":"low"}`, "reasoning_effort"},
		{"functions", chat, false, `{"model":"m","functions":[]}`, "functions"},
		{"prediction", chat, false, `{"model":"m","prediction":{"type":"content","content":"x"}}`, "prediction"},
		{"webhook on sync", chat, false, `{"model":"m","webhook":"https://example.com"}`, "webhook"},
		{"webhook on async", chat, true, `{"model":"m","webhook":"https://example.com"}`, ""},
		{"obfuscation", chat, false, `{"model":"m","stream_options":{"include_obfuscation":true}}`, "stream_options.include_obfuscation"},
		{"unknown stream option", chat, false, `{"model":"m","stream_options":{"include_everything":true}}`, "stream_options.include_everything"},
		{"include_usage", chat, false, `{"model":"m","stream_options":{"include_usage":true,"include_obfuscation":false}}`, ""},
		{"top_logprobs on completions", comp, false, `{"model":"m","top_logprobs":2}`, "top_logprobs"},
		// The tools work's fields pass here; it renders them.
		{"tools", chat, false, `{"model":"m","tools":[],"tool_choice":"auto","parallel_tool_calls":true}`, ""},
		{"extensions", chat, false, `{"model":"m","top_k":4,"min_p":0.1,"repetition_penalty":1.1,"user":"u","safety_identifier":"s","prompt_cache_key":"k"}`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := checkFields([]byte(tt.body), tt.kind, tt.async)
			switch {
			case tt.param == "" && e != nil:
				t.Errorf("refused: %s", e.Message)
			case tt.param != "" && e == nil:
				t.Errorf("accepted; want a 400 naming %s", tt.param)
			case e != nil && (e.Status != http.StatusBadRequest || deref(e.Param) != tt.param || !strings.Contains(e.Message, tt.param)):
				t.Errorf("got %d param %q (%s); want 400 naming %s", e.Status, deref(e.Param), e.Message, tt.param)
			}
		})
	}
}

// TestDecodeSamplingFields: logprobs, top_logprobs, logit_bias, echo and
// repetition_penalty as each endpoint spells them, and their limits.
func TestDecodeSamplingFields(t *testing.T) {
	const chat, comp = wire.KindChat, wire.KindCompletion
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	for _, tt := range []struct {
		name  string
		kind  wire.Kind
		async bool
		body  string
		param string
		check func(wire.Job) bool
	}{
		{"chat logprobs", chat, false, `{"model":"m",` + msgs + `,"logprobs":true,"top_logprobs":3}`, "",
			func(j wire.Job) bool { return j.Logprobs && j.TopLogprobs == 3 }},
		{"chat logprobs false", chat, false, `{"model":"m",` + msgs + `,"logprobs":false}`, "",
			func(j wire.Job) bool { return !j.Logprobs }},
		{"top_logprobs without logprobs", chat, false, `{"model":"m",` + msgs + `,"top_logprobs":3}`, "top_logprobs", nil},
		{"top_logprobs 21", chat, false, `{"model":"m",` + msgs + `,"logprobs":true,"top_logprobs":21}`, "top_logprobs", nil},
		{"chat logprobs 3", chat, false, `{"model":"m",` + msgs + `,"logprobs":3}`, "logprobs", nil},
		{"completion logprobs", comp, false, `{"model":"m","prompt":"hi","logprobs":2}`, "",
			func(j wire.Job) bool { return j.Logprobs && j.TopLogprobs == 2 }},
		{"completion logprobs 0", comp, false, `{"model":"m","prompt":"hi","logprobs":0}`, "",
			func(j wire.Job) bool { return j.Logprobs && j.TopLogprobs == 0 }},
		{"completion logprobs 6", comp, false, `{"model":"m","prompt":"hi","logprobs":6}`, "logprobs", nil},
		{"completion logprobs true", comp, false, `{"model":"m","prompt":"hi","logprobs":true}`, "logprobs", nil},
		{"async logprobs", chat, true, `{"model":"m",` + msgs + `,"logprobs":true}`, "",
			func(j wire.Job) bool { return j.Logprobs }},
		{"n 3", chat, false, `{"model":"m",` + msgs + `,"n":3}`, "",
			func(j wire.Job) bool { return j.N == 3 }},
		{"n 1", comp, false, `{"model":"m","prompt":"hi","n":1,"best_of":1}`, "",
			func(j wire.Job) bool { return j.N == 0 }},
		{"n 17", chat, false, `{"model":"m",` + msgs + `,"n":17}`, "n", nil},
		{"n 0", comp, false, `{"model":"m","prompt":"hi","n":0}`, "n", nil},
		{"best_of 3", comp, false, `{"model":"m","prompt":"hi","best_of":3}`, "best_of", nil},
		{"best_of beyond n", comp, false, `{"model":"m","prompt":"hi","n":2,"best_of":3}`, "best_of", nil},
		{"suffix", comp, false, `{"model":"m","prompt":"def f(","suffix":"\n    return x"}`, "",
			func(j wire.Job) bool { return j.Prompt == "def f(" && j.Suffix == "\n    return x" }},
		{"logit_bias", chat, false, `{"model":"m",` + msgs + `,"logit_bias":{"42":-100,"7":5.5}}`, "",
			func(j wire.Job) bool { return j.Sampling.LogitBias[42] == -100 && j.Sampling.LogitBias[7] == 5.5 }},
		{"logit_bias word key", chat, false, `{"model":"m",` + msgs + `,"logit_bias":{"cat":1}}`, "logit_bias", nil},
		{"logit_bias 101", chat, false, `{"model":"m",` + msgs + `,"logit_bias":{"1":101}}`, "logit_bias", nil},
		{"echo with logprobs", comp, false, `{"model":"m","prompt":"hi","echo":true,"logprobs":1}`, "echo", nil},
		{"async echo", comp, true, `{"model":"m","prompt":"hi","echo":true}`, "echo", nil},
		{"repetition_penalty", chat, false, `{"model":"m",` + msgs + `,"repetition_penalty":1.3}`, "",
			func(j wire.Job) bool { return j.Sampling.RepeatPenalty != nil && *j.Sampling.RepeatPenalty == 1.3 }},
		{"both repeat penalties", chat, false, `{"model":"m",` + msgs + `,"repetition_penalty":1.3,"repeat_penalty":1.1}`, "repetition_penalty", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, e := decodeRequest([]byte(tt.body), tt.kind, tt.async)
			if tt.param != "" {
				if e == nil || deref(e.Param) != tt.param {
					t.Fatalf("got %v; want a 400 naming %s", e, tt.param)
				}
				return
			}
			if e != nil {
				t.Fatalf("refused: %s", e.Message)
			}
			if j := req.job(tt.kind); !tt.check(j) {
				t.Errorf("job %+v", j)
			}
		})
	}
}

// TestCompatTableMatchesOpenAPI: the request schemas of openapi.yaml
// document every field the table supports for the endpoint and no field
// it refuses outright. (Tool calling's fields are documented by the tools
// work, webhook in AsyncExtension.)
func TestCompatTableMatchesOpenAPI(t *testing.T) {
	j, err := openAPIJSON()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(j)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		schema string
		kind   wire.Kind
		on     endpoints
	}{{"ChatCompletionRequest", wire.KindChat, forChat}, {"CompletionRequest", wire.KindCompletion, forCompletion}} {
		documented := map[string]bool{}
		for _, part := range doc.Components.Schemas[tt.schema].Value.AllOf {
			for name := range part.Value.Properties {
				documented[name] = true
			}
		}
		for name := range documented {
			if r := compatRule(name, tt.kind, false); r == nil || r.support == supNo {
				t.Errorf("%s documents %q, which compatTable refuses", tt.schema, name)
			}
		}
		for _, r := range compatTable {
			if r.on&tt.on == 0 || r.support != supYes || r.on&forAsync != 0 || strings.Contains(r.notes, "tools work") {
				continue
			}
			if !documented[r.name] {
				t.Errorf("%s does not document %q, which compatTable supports", tt.schema, r.name)
			}
		}
	}
}
