package activator_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/runner"
)

// deployLlama3Tiny uploads ../shared/models/llama3-tiny.gguf (the real
// Llama 3.2 tokenizer and chat template on random weights), deploys it as
// name and starts a runner for it.
func (h *harness) deployLlama3Tiny(name string) {
	h.t.Helper()
	path := filepath.Join(filepath.Dir(testenv.ModelPath(h.t)), "llama3-tiny.gguf")
	f, err := os.Open(path)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	resp := h.upload(adminKey, f, st.Size())
	var art struct {
		SHA256       string `json:"sha256"`
		ObjectKey    string `json:"object_key"`
		Size         int64  `json:"size"`
		ChatTemplate string `json:"chat_template"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&art); err != nil || resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		h.t.Fatalf("upload: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if art.ChatTemplate != "jinja" {
		h.t.Errorf("the artifact's template is %q; want jinja (its GGUF's own)", art.ChatTemplate)
	}
	body, _ := json.Marshal(map[string]any{"artifact": art.SHA256})
	resp = h.do(http.MethodPut, "/v1/deployments/"+name, string(body))
	var dep struct {
		Template string `json:"template"`
	}
	json.NewDecoder(resp.Body).Decode(&dep)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || dep.Template != "jinja" {
		h.t.Fatalf("deploy: %d, template in use %q", resp.StatusCode, dep.Template)
	}
	h.startRunnerWith(runner.Config{Deployment: name, Engine: runner.EngineConfig{Parallel: 2, Context: 1024},
		Artifact: runner.Artifact{SHA256: art.SHA256, ObjectKey: art.ObjectKey, Size: art.Size}})
}

var weatherTool = openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
	Name:        "get_weather",
	Description: openai.String("The weather in a city"),
	Parameters: shared.FunctionParameters{
		"type":                 "object",
		"properties":           map[string]any{"city": map[string]any{"type": "string", "maxLength": 20}, "days": map[string]any{"type": "integer", "minimum": 1, "maximum": 7}},
		"required":             []string{"city", "days"},
		"additionalProperties": false,
	},
})

// checkWeatherArgs: arguments that the function's schema admits.
func checkWeatherArgs(t *testing.T, args string) {
	t.Helper()
	var a struct {
		City *string `json:"city"`
		Days *int    `json:"days"`
	}
	dec := json.NewDecoder(strings.NewReader(args))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil || a.City == nil || a.Days == nil || utf8.RuneCountInString(*a.City) > 20 || *a.Days < 1 || *a.Days > 7 {
		t.Errorf("arguments %s do not follow the schema (%v)", args, err)
	}
}

// TestSDKToolAgentLoop is an agent's loop with the openai-go SDK: the
// model calls a tool (a named function: its arguments are grammar-bound,
// so even random weights give valid ones), the tool's result goes back
// through the model's own template, and the model answers.
func TestSDKToolAgentLoop(t *testing.T) {
	h := newHarness(t)
	h.deployLlama3Tiny("tiny")
	c := h.client()
	ctx := t.Context()

	msgs := []openai.ChatCompletionMessageParamUnion{
		openai.SystemMessage("You can look up the weather."),
		openai.UserMessage("What is the weather in Paris for 3 days?"),
	}
	first, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "tiny", Messages: msgs, Tools: []openai.ChatCompletionToolUnionParam{weatherTool},
		ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfFunctionToolChoice: &openai.ChatCompletionNamedToolChoiceParam{
			Function: openai.ChatCompletionNamedToolChoiceFunctionParam{Name: "get_weather"}}},
		MaxTokens: openai.Int(60), Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	ch := first.Choices[0]
	if ch.FinishReason != "tool_calls" || len(ch.Message.ToolCalls) != 1 {
		t.Fatalf("finish %q, tool calls %+v, content %q; want one call", ch.FinishReason, ch.Message.ToolCalls, ch.Message.Content)
	}
	call := ch.Message.ToolCalls[0]
	if call.Function.Name != "get_weather" || !strings.HasPrefix(call.ID, "call_") || call.Type != "function" {
		t.Errorf("call %+v", call)
	}
	checkWeatherArgs(t, call.Function.Arguments)

	// The tool's result, then the answer.
	msgs = append(msgs, ch.Message.ToParam(), openai.ToolMessage(`{"temp_c": 21, "sky": "clear"}`, call.ID))
	final, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "tiny", Messages: msgs, Tools: []openai.ChatCompletionToolUnionParam{weatherTool},
		MaxTokens: openai.Int(8), Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if fc := final.Choices[0]; fc.FinishReason != "length" || len(fc.Message.ToolCalls) != 0 || fc.Message.Content == "" {
		t.Errorf("final answer: finish %q, calls %d, content %q", fc.FinishReason, len(fc.Message.ToolCalls), fc.Message.Content)
	}
	// The call and its result are in the prompt (tool_choice auto: the
	// tools are too): it grew by more than the tool message's text.
	if final.Usage.PromptTokens <= first.Usage.PromptTokens+10 {
		t.Errorf("prompt tokens %d then %d: the call and its result are missing from the prompt", first.Usage.PromptTokens, final.Usage.PromptTokens)
	}
}

// TestSDKToolCallStreamed: tool_choice "required", streamed; the SDK's
// accumulator puts the call together from OpenAI-shaped chunks.
func TestSDKToolCallStreamed(t *testing.T) {
	h := newHarness(t)
	h.deployLlama3Tiny("tiny")
	c := h.client()
	// Cold: the stream starts with the cold-start SSE comments, which
	// openai-go v3 skips (v1.12 failed on them).
	stream := c.Chat.Completions.NewStreaming(t.Context(), openai.ChatCompletionNewParams{
		Model:      "tiny",
		Messages:   []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Weather in Oslo this week?")},
		Tools:      []openai.ChatCompletionToolUnionParam{weatherTool},
		ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
		MaxTokens:  openai.Int(60), Temperature: openai.Float(0),
	})
	acc := openai.ChatCompletionAccumulator{}
	var finished []openai.FinishedChatCompletionToolCall
	chunks, argChunks := 0, 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
		for _, ch := range stream.Current().Choices {
			for _, tc := range ch.Delta.ToolCalls {
				if tc.Function.Arguments != "" {
					argChunks++
				}
			}
		}
		if tc, ok := acc.JustFinishedToolCall(); ok {
			finished = append(finished, tc)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if len(finished) != 1 || finished[0].Name != "get_weather" || !strings.HasPrefix(finished[0].ID, "call_") {
		t.Fatalf("finished tool calls %+v; want one get_weather call", finished)
	}
	checkWeatherArgs(t, finished[0].Arguments)
	if got := acc.Choices[0].Message.ToolCalls; len(got) != 1 || got[0].Function.Arguments != finished[0].Arguments {
		t.Errorf("accumulated calls %+v", got)
	}
	if acc.Choices[0].FinishReason != "tool_calls" {
		t.Errorf("finish reason %q", acc.Choices[0].FinishReason)
	}
	if chunks < 4 {
		t.Errorf("%d chunks: the arguments did not come in pieces", chunks)
	}
	// Streamed as the model wrote them, a piece a decode step, not cut
	// into pieces of argumentPiece (32) bytes once the call was whole.
	if args := finished[0].Arguments; argChunks <= (len(args)+31)/32 {
		t.Errorf("arguments %q came in %d chunks: not as they were written", args, argChunks)
	}
}

// TestToolRequestErrors: bad tools are 400s naming the parameter, before
// anything is queued.
func TestToolRequestErrors(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{})
	tool := `{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}`
	for _, c := range []struct{ body, param string }{
		{`"tools":[{"type":"retrieval"}]`, "tools[0].type"},
		{`"tools":[{"type":"function","function":{"name":"has space"}}]`, "tools[0].function.name"},
		{`"tools":[` + tool + `,` + tool + `]`, "tools[1].function.name"},
		{`"tools":[` + tool + `],"tool_choice":"always"`, "tool_choice"},
		{`"tools":[` + tool + `],"tool_choice":{"type":"function","function":{"name":"nope"}}`, "tool_choice"},
		{`"tool_choice":"required"`, "tool_choice"},
		{`"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"a":{"type":"strang"}}}}}],"tool_choice":"required"`, "tools"},
		{`"tools":[` + tool + `],"tool_choice":"required","response_format":{"type":"json_object"}`, "response_format"},
	} {
		resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"stories","messages":[{"role":"user","content":"hi"}],`+c.body+`}`)
		var e struct {
			Error struct {
				Param   string `json:"param"`
				Message string `json:"message"`
			} `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Error.Param != c.param {
			t.Errorf("%s: %d param %q (%s); want 400 naming %q", c.body, resp.StatusCode, e.Error.Param, e.Error.Message, c.param)
		}
	}
	for _, c := range []struct{ msgs, param string }{
		{`[{"role":"tool","content":"21"}]`, "messages[0].tool_call_id"},
		{`[{"role":"user","content":"hi","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]`, "messages[0].tool_calls"},
		{`[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{not json"}}]}]`, "messages[0].tool_calls[0].function.arguments"},
	} {
		resp := h.do(http.MethodPost, "/v1/chat/completions", `{"model":"stories","messages":`+c.msgs+`}`)
		var e struct {
			Error struct {
				Param string `json:"param"`
			} `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != 400 || e.Error.Param != c.param {
			t.Errorf("%s: %d param %q; want 400 naming %q", c.msgs, resp.StatusCode, e.Error.Param, c.param)
		}
	}
}
