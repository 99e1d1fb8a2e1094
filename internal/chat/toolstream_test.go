package chat

import (
	"slices"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

// TestToolStream feeds replies in several cuts (whole, one byte at a
// time, in threes) and checks what passes as content, that each call is
// announced by name before its arguments and that the pieces add up to
// the arguments Close parses, and that no opener leaks into the content.
func TestToolStream(t *testing.T) {
	weather := wire.ToolCall{Name: "get_weather", Arguments: `{"city":"Paris","days":[1,2]}`}
	clock := wire.ToolCall{Name: "get_time", Arguments: `{}`}
	cases := []struct {
		name, family, reply string
		forced              bool
		content             string
		calls               []wire.ToolCall
	}{
		{"hermes after text", ChatML, "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1, 2]}}\n</tool_call>", false,
			"Let me check. ", []wire.ToolCall{weather}},
		{"hermes two calls", ChatML, "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": [1,2]}}</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>", false,
			"", []wire.ToolCall{weather, clock}},
		{"llama3 at start", Llama3, ` {"name": "get_weather", "parameters": {"city": "Paris", "days": [1, 2]}}`, false,
			"", []wire.ToolCall{weather}},
		{"llama3 after text", Llama3, `Sure. {"name": "get_time", "parameters": {}}`, false,
			"Sure. ", []wire.ToolCall{clock}},
		{"llama3 arguments before name", Llama3, `{"parameters": {"city": "Paris", "days": [1, 2]}, "name": "get_weather"}`, false,
			"", []wire.ToolCall{weather}},
		{"mistral after text", Llama2, `One moment.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2]}}, {"name": "get_time", "arguments": {}}]`, false,
			"One moment.", []wire.ToolCall{weather, clock}},
		{"forced", ChatML, `{"name": "get_weather", "parameters": {"city": "Paris", "days": [1, 2]}}`, true,
			"", []wire.ToolCall{weather}},
		{"escapes in strings", ChatML, `<tool_call>{"name": "get_weather", "arguments": {"city": "Pa \"r\" is\\"}}</tool_call>`, false,
			"", []wire.ToolCall{{Name: "get_weather", Arguments: `{"city":"Pa \"r\" is\\"}`}}},
		// Not calls: the text, opener and all, is content.
		{"plain text", ChatML, "The weather is fine <tool", false, "The weather is fine <tool", nil},
		{"broken call", ChatML, "Hmm <tool_call>{\"name\": \"get_weather\", \"argu", false, "Hmm <tool_call>{\"name\": \"get_weather\", \"argu", nil},
		{"llama3 json answer", Llama3, `{"answer": 42} is it`, false, `{"answer": 42} is it`, nil},
		{"llama3 braces in prose", Llama3, `Use {x} and {"y": 1}.`, false, `Use {x} and {"y": 1}.`, nil},
	}
	for _, c := range cases {
		for _, cut := range []int{0, 1, 3} {
			s := ToolFormatFor(c.family, "").Stream(c.forced)
			var content strings.Builder
			var names []string
			var args []string
			feed := func(p string) {
				text, deltas := s.Feed(p)
				content.WriteString(text)
				for _, d := range deltas {
					if d.Name != "" {
						if d.Index != len(names) {
							t.Errorf("%s cut %d: call %d announced as %d", c.name, cut, len(names), d.Index)
						}
						names = append(names, d.Name)
						args = append(args, "")
						continue
					}
					if d.Index >= len(args) {
						t.Fatalf("%s cut %d: arguments of call %d before its name", c.name, cut, d.Index)
					}
					args[d.Index] += d.Arguments
				}
			}
			if cut == 0 {
				feed(c.reply)
			} else {
				for i := 0; i < len(c.reply); i += cut {
					feed(c.reply[i:min(i+cut, len(c.reply))])
				}
			}
			rest, calls, ok := s.Close()
			content.WriteString(rest)
			if content.String() != c.content {
				t.Errorf("%s cut %d: content %q; want %q", c.name, cut, content.String(), c.content)
			}
			if ok != (c.calls != nil) || !slices.Equal(calls, c.calls) {
				t.Errorf("%s cut %d: calls %v (%v); want %v", c.name, cut, calls, ok, c.calls)
				continue
			}
			if !ok {
				continue
			}
			if len(names) != len(calls) {
				t.Errorf("%s cut %d: %d calls streamed, %d parsed", c.name, cut, len(names), len(calls))
				continue
			}
			for i, call := range calls {
				if names[i] != call.Name || args[i] != call.Arguments {
					t.Errorf("%s cut %d: call %d streamed as %s(%s); parsed %s(%s)", c.name, cut, i, names[i], args[i], call.Name, call.Arguments)
				}
			}
		}
	}
}
