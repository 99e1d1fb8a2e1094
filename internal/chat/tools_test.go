package chat

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/infer-run/infer/internal/jsonschema"
	"github.com/infer-run/infer/internal/wire"
)

func TestToolFormatParse(t *testing.T) {
	weather := wire.ToolCall{Name: "get_weather", Arguments: `{"city":"Paris"}`}
	time := wire.ToolCall{Name: "get_time", Arguments: `{}`}
	cases := []struct {
		template, reply string
		want            []wire.ToolCall
	}{
		{Llama3, `{"name": "get_weather", "parameters": {"city": "Paris"}}`, []wire.ToolCall{weather}},
		{Llama3, ` {"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}`, []wire.ToolCall{weather, time}},
		{Llama3, `{"name": "get_weather", "arguments": {"city": "Paris"}}` + "\n" + `{"name": "get_time"}`, []wire.ToolCall{weather, time}},
		{ChatML, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>", []wire.ToolCall{weather, time}},
		{Llama2, `[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]`, []wire.ToolCall{weather}},
		// Not calls: text.
		{Llama3, `{"city": "Paris"}`, nil},
		{Llama3, `{"name": "get_weather", "parameters": "Paris"}`, nil},
		{Llama3, `{"name": "get_weather", "parameters": {}} and more`, nil},
		{ChatML, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci", nil},
		{Llama2, `[TOOL_CALLS] sorry`, nil},
	}
	for _, c := range cases {
		got, err := ToolFormatFor(c.template, "").Parse(c.reply)
		if c.want == nil {
			if err == nil {
				t.Errorf("%s %q: parsed %v; want ErrNoToolCall", c.template, c.reply, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s %q: %v, %v; want %v", c.template, c.reply, got, err, c.want)
		}
	}
}

func TestToolFormatStarts(t *testing.T) {
	cases := []struct {
		template, prefix string
		calls, known     bool
	}{
		{ChatML, "", false, false},
		{ChatML, "\n<tool", false, false},
		{ChatML, "<tool_call>", true, true},
		{ChatML, "Hello", false, true},
		{Llama3, "  {", true, true},
		{Llama3, "The", false, true},
		{Llama2, "[TOOL", false, false},
		{Llama2, "[TOOL_CALLS][", true, true},
	}
	for _, c := range cases {
		calls, known := ToolFormatFor(c.template, "").Starts(c.prefix)
		if calls != c.calls || known != c.known {
			t.Errorf("%s %q: calls %v known %v; want %v %v", c.template, c.prefix, calls, known, c.calls, c.known)
		}
	}
	// The model's own template: its family's format.
	if f := ToolFormatFor(Jinja, "{{ '<|im_start|>' }}"); f.Opener != "<tool_call>" {
		t.Errorf("Qwen-style template: opener %q", f.Opener)
	}
}

// TestToolSchema: the schema of a required call is one the grammar
// converter takes, and what it admits parses back as the call.
func TestToolSchema(t *testing.T) {
	tools := []wire.Tool{
		{Name: "get_weather", Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`)},
		{Name: "get_time"},
	}
	for _, choice := range []wire.ToolChoice{{Mode: "required"}, {Mode: "function", Name: "get_weather"}} {
		s, err := ForcedFormat().Schema(tools, choice)
		if err != nil {
			t.Fatal(err)
		}
		if err := jsonschema.Validate(s); err != nil {
			t.Errorf("%v: schema %s: %v", choice, s, err)
		}
	}
	if _, err := ForcedFormat().Schema(tools, wire.ToolChoice{Mode: "function", Name: "nope"}); err == nil {
		t.Error("a named function that is not among the tools was accepted")
	}
	calls, err := ForcedFormat().Parse(`{"name":"get_weather","parameters":{"city":"Oslo"}}`)
	if err != nil || len(calls) != 1 || calls[0].Arguments != `{"city":"Oslo"}` {
		t.Errorf("parsed %v, %v", calls, err)
	}
}
