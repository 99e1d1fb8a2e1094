package activator

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

// TestDecodeRequestHostile feeds decodeRequest what a hostile or broken
// client sends. Each must be a 400 in OpenAI's shape, naming the parameter
// where there is one; none may panic or pass through to the runner. (The
// server-level cases — no key, unknown model, oversized body — are in
// cmd/infer's TestBadInput and activator_test.go.)
func TestDecodeRequestHostile(t *testing.T) {
	chat := func(extra string) string {
		return `{"model":"m","messages":[{"role":"user","content":"hi"}]` + extra + `}`
	}
	schema := func(s string) string {
		return chat(`,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":` + s + `}}`)
	}
	tests := []struct {
		name  string
		kind  wire.Kind
		body  string
		param string // "" when the problem has no single parameter
		msg   string // what the message must say, if anything in particular
	}{
		{"huge max_tokens", wire.KindChat, chat(`,"max_tokens":9223372036854775807`), "max_tokens", ""},
		{"max_tokens overflows int", wire.KindChat, chat(`,"max_tokens":1e30`), "max_tokens", ""},
		{"max_tokens over the limit", wire.KindChat, chat(`,"max_tokens":2000000`), "max_tokens", ""},
		{"zero max_completion_tokens", wire.KindChat, chat(`,"max_completion_tokens":0`), "max_completion_tokens", ""},
		{"huge max_completion_tokens", wire.KindChat, chat(`,"max_completion_tokens":2000000`), "max_completion_tokens", ""},
		{"max_completion_tokens overflows int", wire.KindChat, chat(`,"max_completion_tokens":1e30`), "max_completion_tokens", ""},
		{"negative temperature", wire.KindChat, chat(`,"temperature":-0.5`), "temperature", ""},
		{"temperature overflows float64", wire.KindChat, chat(`,"temperature":1e400`), "temperature", ""},
		{"NaN temperature as a string", wire.KindChat, chat(`,"temperature":"NaN"`), "temperature", ""},
		{"bare NaN", wire.KindChat, chat(`,"temperature":NaN`), "", ""},
		{"Infinity top_p", wire.KindChat, chat(`,"top_p":Infinity`), "", ""},
		{"negative top_k", wire.KindChat, chat(`,"top_k":-1`), "top_k", ""},
		{"deeply nested JSON in an ignored field", wire.KindChat, chat(`,"x":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000)), "", ""},
		{"deeply nested content", wire.KindChat, `{"model":"m","messages":[{"role":"user","content":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}]}`, "", ""},
		{"invalid UTF-8 in a string", wire.KindCompletion, "{\"model\":\"m\",\"prompt\":\"\xff\xfe\"}", "", ""},
		{"truncated UTF-8 sequence", wire.KindChat, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xe2\x82\"}]}", "", ""},
		{"two objects", wire.KindCompletion, `{"model":"m","prompt":"a"}{"model":"m","prompt":"b"}`, "", ""},
		{"array body", wire.KindCompletion, `[{"model":"m","prompt":"a"}]`, "", ""},
		{"empty body", wire.KindCompletion, ``, "", ""},
		{"null body", wire.KindCompletion, `null`, "model", ""},
		{"model as object", wire.KindCompletion, `{"model":{"$gt":""},"prompt":"a"}`, "model", ""},
		{"batched prompts", wire.KindCompletion, `{"model":"m","prompt":["a","b"]}`, "", ""},
		{"image content part", wire.KindChat, `{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"file:///etc/passwd"}}]}]}`, "messages[0].content", "only text content parts"},
		{"image after a text part", wire.KindChat, `{"model":"m","messages":[{"role":"system","content":"x"},{"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}`, "messages[1].content", "only text content parts"},
		{"content of the wrong type", wire.KindChat, `{"model":"m","messages":[{"role":"user","content":42}]}`, "messages[0].content", "string or an array"},
		{"unknown role", wire.KindChat, `{"model":"m","messages":[{"role":"root","content":"hi"}]}`, "messages[0].role", ""},
		{"too many stop sequences", wire.KindChat, chat(`,"stop":["a","b","c","d","e"]`), "stop", ""},
		{"stop of the wrong type", wire.KindChat, chat(`,"stop":{"a":1}`), "", ""},
		{"unknown response_format", wire.KindChat, chat(`,"response_format":{"type":"xml"}`), "response_format.type", ""},
		{"json_schema without schema", wire.KindChat, chat(`,"response_format":{"type":"json_schema"}`), "response_format.json_schema", ""},
		// Schemas whose llama.cpp grammars killed the runner or stalled it
		// (issue 19): refused here, before they are queued.
		{"schema: impossible pattern", wire.KindChat, schema(`{"type":"string","pattern":"^[^\\s\\S]$"}`), "response_format", `"pattern" at #`},
		{"schema: integer minimum above maximum", wire.KindChat, schema(`{"type":"integer","minimum":10,"maximum":5}`), "response_format", `minimum 10 is above the maximum 5`},
		{"schema: empty anyOf", wire.KindChat, schema(`{"anyOf":[]}`), "response_format", `"anyOf" at #`},
		{"schema: deep nesting", wire.KindChat, schema(strings.Repeat(`{"type":"array","items":`, 500) + `{}` + strings.Repeat(`}`, 500)), "response_format", `levels deep`},
		{"schema: maxLength 500000", wire.KindChat, schema(`{"type":"string","maxLength":500000}`), "response_format", `"maxLength" at #`},
		{"schema: 2000 unresolvable $refs", wire.KindChat, schema(unresolvableRefs(2000)), "response_format", `does not resolve`},
		{"schema: unsupported keyword", wire.KindChat, schema(`{"type":"integer","multipleOf":2}`), "response_format", `"multipleOf"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, e := decodeRequest([]byte(tt.body), tt.kind, false)
			if e == nil {
				t.Fatalf("accepted: %+v", req)
			}
			if e.Status != http.StatusBadRequest || e.Type != "invalid_request_error" || e.Message == "" {
				t.Errorf("got %d %s %q; want 400 invalid_request_error with a message", e.Status, e.Type, e.Message)
			}
			if tt.param != "" && (e.Param == nil || *e.Param != tt.param) {
				t.Errorf("param %v, want %s (message %q)", e.Param, tt.param, e.Message)
			}
			if !strings.Contains(e.Message, tt.msg) {
				t.Errorf("message %q does not say %q", e.Message, tt.msg)
			}
			if !utf8ValidJSON(t, e) {
				t.Errorf("error %q does not encode as valid UTF-8 JSON", e.Message)
			}
		})
	}
}

// utf8ValidJSON reports whether the error body the client receives is
// valid JSON (messages quote parts of the input, which may be garbage).
func utf8ValidJSON(t *testing.T, e *apiError) bool {
	t.Helper()
	b, err := json.Marshal(map[string]any{"error": e})
	if err != nil {
		return false
	}
	return json.Valid(b)
}

// FuzzDecodeRequest: no body makes decodeRequest panic, and what it accepts
// satisfies the limits the runner relies on.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"temperature":0.7,"stop":["a"]}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}}`,
		`{"model":"m","prompt":["once"],"max_completion_tokens":3,"top_k":4,"seed":1,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","prompt":"x","n":1,"top_p":1e400}`,
		"{\"model\":\"\xff\"}",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, body []byte, chat bool) {
		kind := wire.KindCompletion
		if chat {
			kind = wire.KindChat
		}
		req, e := decodeRequest(body, kind, false)
		if e != nil {
			if e.Status != http.StatusBadRequest || e.Message == "" {
				t.Fatalf("error %+v: want a 400 with a message", e)
			}
			return
		}
		if req.Model == "" {
			t.Fatal("accepted a request without a model")
		}
		if req.MaxTokens != nil && (*req.MaxTokens < 1 || *req.MaxTokens > maxTokensLimit) {
			t.Fatalf("accepted max_tokens %d", *req.MaxTokens)
		}
		if v := req.Temperature; v != nil && !(*v >= 0 && *v <= 2) {
			t.Fatalf("accepted temperature %g", *v)
		}
		if len(req.Stop) > 4 {
			t.Fatalf("accepted %d stop sequences", len(req.Stop))
		}
		job := req.job(kind)
		if _, err := json.Marshal(job); err != nil {
			t.Fatalf("accepted request makes an unencodable job: %v", err)
		}
		if kind == wire.KindChat && len(job.Messages) == 0 {
			t.Fatal("accepted a chat without messages")
		}
	})
}

// unresolvableRefs is an object schema of n properties, each a $ref to a
// definition that does not exist (issue 19: 2,000 of them took llama.cpp's
// converter 17 s and 670 MB).
func unresolvableRefs(n int) string {
	var b strings.Builder
	b.WriteString(`{"type":"object","properties":{`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"p%d":{"$ref":"#/$defs/missing%d"}`, i, i)
	}
	b.WriteString(`}}`)
	return b.String()
}
