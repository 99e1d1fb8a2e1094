package activator_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/infer-run/infer/activator"
)

// compatExamples holds, for every row of the compatibility table, a value
// infer takes and, for fields it supports in part or not at all, one it
// refuses. Each is a JSON object of fields to add to a request (a value
// may need another field beside it). "" means none.
var compatExamples = map[string]struct{ chatOK, compOK, refused string }{
	"model":                  {},
	"messages":               {},
	"prompt":                 {},
	"max_tokens":             {`{"max_tokens":3}`, `{"max_tokens":3}`, ""},
	"max_completion_tokens":  {`{"max_completion_tokens":3}`, `{"max_completion_tokens":3}`, ""},
	"temperature":            {`{"temperature":0.5}`, `{"temperature":0.5}`, ""},
	"top_p":                  {`{"top_p":0.9}`, `{"top_p":0.9}`, ""},
	"stop":                   {`{"stop":["."]}`, `{"stop":"."}`, ""},
	"seed":                   {`{"seed":-1}`, `{"seed":7}`, ""},
	"stream":                 {`{"stream":false}`, `{"stream":false}`, ""},
	"stream_options":         {`{"stream_options":{"include_usage":false}}`, `{"stream_options":{"include_usage":false}}`, `{"stream_options":{"include_obfuscation":true}}`},
	"response_format":        {`{"response_format":{"type":"json_object"}}`, `{"response_format":{"type":"text"}}`, ""},
	"presence_penalty":       {`{"presence_penalty":0.5}`, `{"presence_penalty":0.5}`, ""},
	"frequency_penalty":      {`{"frequency_penalty":0.5}`, `{"frequency_penalty":0.5}`, ""},
	"logit_bias":             {`{"logit_bias":{"300":1}}`, `{"logit_bias":{"300":-100}}`, ""},
	"logprobs":               {`{"logprobs":true}`, `{"logprobs":1}`, ""},
	"top_logprobs":           {`{"logprobs":true,"top_logprobs":2}`, "", ""},
	"n":                      {`{"n":2}`, `{"n":2}`, ""},
	"best_of":                {"", `{"best_of":1}`, `{"best_of":2}`},
	"echo":                   {"", `{"echo":true}`, ""},
	"suffix":                 {"", `{"suffix":""}`, `{"suffix":"The end."}`},
	"user":                   {`{"user":"u-1"}`, `{"user":"u-1"}`, ""},
	"safety_identifier":      {`{"safety_identifier":"s-1"}`, "", ""},
	"prompt_cache_key":       {`{"prompt_cache_key":"k-1"}`, "", ""},
	"store":                  {`{"store":false}`, "", `{"store":true}`},
	"metadata":               {`{"metadata":{}}`, "", `{"metadata":{"a":"b"}}`},
	"service_tier":           {`{"service_tier":"auto"}`, "", `{"service_tier":"flex"}`},
	"modalities":             {`{"modalities":["text"]}`, "", `{"modalities":["text","audio"]}`},
	"audio":                  {"", "", `{"audio":{"voice":"alloy","format":"mp3"}}`},
	"prediction":             {"", "", `{"prediction":{"type":"content","content":"x"}}`},
	"reasoning_effort":       {"", "", `{"reasoning_effort":"low"}`},
	"verbosity":              {"", "", `{"verbosity":"low"}`},
	"web_search_options":     {"", "", `{"web_search_options":{}}`},
	"prompt_cache_retention": {"", "", `{"prompt_cache_retention":"24h"}`},
	"prompt_cache_options":   {"", "", `{"prompt_cache_options":{}}`},
	"moderation":             {"", "", `{"moderation":{}}`},
	"functions":              {"", "", `{"functions":[{"name":"f"}]}`},
	"function_call":          {"", "", `{"function_call":"auto"}`},
	"top_k":                  {`{"top_k":2}`, `{"top_k":2}`, ""},
	"min_p":                  {`{"min_p":0.1}`, `{"min_p":0.1}`, ""},
	"repeat_penalty":         {`{"repeat_penalty":1.1}`, `{"repeat_penalty":1.1}`, ""},
	"repetition_penalty":     {`{"repetition_penalty":1.1}`, `{"repetition_penalty":1.1}`, ""},
	"webhook":                {"", "", `{"webhook":"https://example.com/hook"}`}, // sync: async only
}

// embedExamples holds, for every row of the compatibility table that
// /v1/embeddings takes, a value it takes ("" for the request's own).
var embedExamples = map[string]string{
	"model":           "",
	"input":           `{"input":["Once upon a time","The end"]}`,
	"encoding_format": `{"encoding_format":"base64"}`,
	"dimensions":      `{"dimensions":8}`,
	"user":            `{"user":"u-1"}`,
}

// compatCase is one request of the compatibility check: fields added to a
// minimal request, and the field a 400 must name ("" for a 200).
type compatCase struct {
	Name     string          `json:"name"`
	Endpoint string          `json:"endpoint"` // chat, completions or embeddings
	Fields   json.RawMessage `json:"fields"`
	Refused  string          `json:"refused"`
}

// compatCases builds the check's requests from the table: every row,
// each endpoint that takes it, and an unknown field.
func compatCases(t *testing.T) []compatCase {
	var cases []compatCase
	add := func(name, endpoint, fields, refused string) {
		if fields != "" {
			cases = append(cases, compatCase{name, endpoint, json.RawMessage(fields), refused})
		}
	}
	for _, r := range activator.CompatRows() {
		if r.Tools {
			continue // the tools work's tests
		}
		if r.Embedding {
			ex, ok := embedExamples[r.Name]
			if !ok {
				t.Errorf("compatibility row %q has no embeddings example: add one to embedExamples", r.Name)
			}
			add(r.Name, "embeddings", ex, "")
			if !r.Chat && !r.Completion {
				continue
			}
		}
		ex, ok := compatExamples[r.Name]
		if !ok {
			t.Errorf("compatibility row %q has no example: add one to compatExamples", r.Name)
			continue
		}
		if (r.Partial || r.Unsupported || r.AsyncOnly) && ex.refused == "" && r.Name != "prompt" && r.Name != "stream_options" {
			t.Errorf("row %q is not fully supported but has no refused example", r.Name)
		}
		if r.Chat {
			add(r.Name, "chat", ex.chatOK, "")
		}
		if r.Completion {
			add(r.Name, "completions", ex.compOK, "")
		}
		refused := r.Name
		if r.Name == "stream_options" {
			refused = "stream_options.include_obfuscation"
		}
		if r.Chat {
			add(r.Name+" refused", "chat", ex.refused, refused)
		} else {
			add(r.Name+" refused", "completions", ex.refused, refused)
		}
	}
	add("unknown field", "chat", `{"frobnicate":1}`, "frobnicate")
	add("unknown field", "completions", `{"frobnicate":1}`, "frobnicate")
	add("echo on chat", "chat", `{"echo":true}`, "echo")
	add("unknown field", "embeddings", `{"frobnicate":1}`, "frobnicate")
	add("temperature on embeddings", "embeddings", `{"temperature":1}`, "temperature")
	return cases
}

// TestSDKCompatTable sends every row of the compatibility table through
// openai-go v3 and, where Node and the JS SDK are installed
// (scripts/jssdk: npm ci), through the official JS SDK: the values infer
// takes answer 200, the others a typed 400 naming the field.
func TestSDKCompatTable(t *testing.T) {
	cases := compatCases(t)
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	h.startRunner("stories", 2, 256)
	ctx := context.Background()
	c := h.client()
	for _, tc := range cases {
		t.Run("go/"+tc.Endpoint+"/"+tc.Name, func(t *testing.T) {
			var fields map[string]any
			if err := json.Unmarshal(tc.Fields, &fields); err != nil {
				t.Fatal(err)
			}
			var opts []option.RequestOption
			for k, v := range fields {
				opts = append(opts, option.WithJSONSet(k, v))
			}
			var err error
			switch tc.Endpoint {
			case "embeddings":
				_, err = c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "stories",
					Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("Once upon a time")}}, opts...)
			case "chat":
				_, err = c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories",
					Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")}, MaxTokens: openai.Int(3)}, opts...)
			default:
				_, err = c.Completions.New(ctx, openai.CompletionNewParams{Model: "stories",
					Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")}, MaxTokens: openai.Int(3)}, opts...)
			}
			checkCompat(t, tc, err)
		})
	}

	// The JS SDK, when installed.
	dir, _ := filepath.Abs("../scripts/jssdk")
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed: the JS SDK check does not run")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai")); err != nil {
		t.Skip("the JS SDK is not installed: run npm ci in scripts/jssdk")
	}
	in, _ := json.Marshal(cases)
	cmd := exec.Command("node", filepath.Join(dir, "compat.mjs"))
	cmd.Env = append(os.Environ(), "INFER_URL="+h.url+"/v1", "INFER_KEY="+adminKey)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node compat.mjs: %v\n%s", err, out)
	}
	var results []struct {
		Status int    `json:"status"`
		Param  string `json:"param"`
		Code   string `json:"code"`
		Error  string `json:"error"`
	}
	if err := json.Unmarshal(out, &results); err != nil || len(results) != len(cases) {
		t.Fatalf("node compat.mjs wrote %d results (%v) for %d cases:\n%s", len(results), err, len(cases), out)
	}
	for i, tc := range cases {
		r := results[i]
		t.Run("js/"+tc.Endpoint+"/"+tc.Name, func(t *testing.T) {
			switch {
			case tc.Refused == "" && r.Status != 200:
				t.Errorf("refused (%d %s): %s", r.Status, r.Param, r.Error)
			case tc.Refused != "" && (r.Status != 400 || r.Param != tc.Refused || !strings.HasPrefix(r.Code, "unsupported_")):
				t.Errorf("got %d param %q code %q (%s); want a 400 naming %s", r.Status, r.Param, r.Code, r.Error, tc.Refused)
			}
		})
	}
}

func checkCompat(t *testing.T, tc compatCase, err error) {
	t.Helper()
	var apiErr *openai.Error
	switch {
	case tc.Refused == "" && err != nil:
		t.Errorf("%s refused: %v", tc.Fields, err)
	case tc.Refused != "" && !errors.As(err, &apiErr):
		t.Errorf("%s: got %v, want a typed 400 naming %s", tc.Fields, err, tc.Refused)
	case tc.Refused != "" && (apiErr.StatusCode != 400 || apiErr.Param != tc.Refused || !strings.HasPrefix(apiErr.Code, "unsupported_") || !strings.Contains(apiErr.Message, tc.Refused)):
		t.Errorf("%s: got %d param %q code %q (%s); want a 400 naming %s", tc.Fields, apiErr.StatusCode, apiErr.Param, apiErr.Code, apiErr.Message, tc.Refused)
	}
}
