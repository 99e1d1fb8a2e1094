package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// ToolFormat is how a model family writes tool calls, as its chat template
// teaches it (and as vLLM's tool parsers read them):
//   - Llama 3.x: a bare JSON object {"name": ..., "parameters": {...}},
//     several separated by ";" or newlines;
//   - ChatML models (Qwen 2.5, Hermes): <tool_call>{"name": ...,
//     "arguments": {...}}</tool_call>, once per call;
//   - Mistral ([INST] family): [TOOL_CALLS] and a JSON array of
//     {"name": ..., "arguments": {...}}.
//
// Other families get Llama 3's bare JSON.
type ToolFormat struct {
	// Opener is how a reply that calls tools starts (after whitespace).
	Opener string
	// ArgsKey is the key the family's calls hold their arguments under.
	ArgsKey string
	family  string
}

// ToolFormatFor is the tool-call format of the template in use; ggufTemplate
// is the model's Jinja source (its family decides when name is "jinja").
func ToolFormatFor(name, ggufTemplate string) ToolFormat {
	if name == Jinja {
		name = Detect(ggufTemplate)
	}
	switch name {
	case ChatML:
		return ToolFormat{Opener: "<tool_call>", ArgsKey: "arguments", family: ChatML}
	case Llama2:
		return ToolFormat{Opener: "[TOOL_CALLS]", ArgsKey: "arguments", family: Llama2}
	}
	return ToolFormat{Opener: "{", ArgsKey: "parameters", family: Llama3}
}

// Starts says whether a reply beginning with prefix calls tools: yes, no,
// or not yet known (more text needed).
func (f ToolFormat) Starts(prefix string) (calls, known bool) {
	p := strings.TrimLeft(prefix, " \t\r\n")
	switch {
	case p == "":
		return false, false
	case strings.HasPrefix(p, f.Opener):
		return true, true
	case strings.HasPrefix(f.Opener, p):
		return false, false
	}
	return false, true
}

// ErrNoToolCall means a reply that looked like a tool call is not one.
var ErrNoToolCall = errors.New("not a tool call")

// Parse reads the tool calls of a whole reply (IDs left empty). A reply
// that is not well-formed calls is ErrNoToolCall: it is then text.
func (f ToolFormat) Parse(reply string) ([]wire.ToolCall, error) {
	s := strings.TrimSpace(reply)
	var objs []json.RawMessage
	switch f.family {
	case ChatML:
		for s != "" {
			rest, ok := strings.CutPrefix(s, "<tool_call>")
			if !ok {
				return nil, ErrNoToolCall
			}
			body, after, _ := strings.Cut(rest, "</tool_call>")
			objs = append(objs, json.RawMessage(strings.TrimSpace(body)))
			s = strings.TrimSpace(after)
		}
	case Llama2:
		rest, ok := strings.CutPrefix(s, "[TOOL_CALLS]")
		if !ok || json.Unmarshal([]byte(rest), &objs) != nil {
			return nil, ErrNoToolCall
		}
	default:
		// One JSON object after another; Llama 3.2's own examples
		// separate them with ";".
		for {
			s = strings.TrimLeft(s, " \t\r\n;")
			if s == "" {
				break
			}
			dec := json.NewDecoder(strings.NewReader(s))
			var raw json.RawMessage
			if dec.Decode(&raw) != nil {
				return nil, ErrNoToolCall
			}
			objs = append(objs, raw)
			s = s[dec.InputOffset():]
		}
	}
	if len(objs) == 0 {
		return nil, ErrNoToolCall
	}
	calls := make([]wire.ToolCall, 0, len(objs))
	for _, o := range objs {
		var c struct {
			Name       string          `json:"name"`
			Arguments  json.RawMessage `json:"arguments"`
			Parameters json.RawMessage `json:"parameters"`
		}
		if json.Unmarshal(o, &c) != nil || c.Name == "" {
			return nil, ErrNoToolCall
		}
		args := c.Arguments
		if len(args) == 0 {
			args = c.Parameters
		}
		if len(args) == 0 {
			args = json.RawMessage("{}")
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(args, &obj) != nil {
			return nil, ErrNoToolCall
		}
		var compact bytes.Buffer
		if json.Compact(&compact, args) != nil {
			return nil, ErrNoToolCall
		}
		calls = append(calls, wire.ToolCall{Name: c.Name, Arguments: compact.String()})
	}
	return calls, nil
}

// Schema is the JSON schema a reply must follow when the request requires
// a tool call (tool_choice "required" or a named function): one call, in
// the bare JSON form {"name": ..., <ArgsKey>: {...}}, its arguments
// constrained to the function's parameters. A grammar made from it makes
// even a model that never learned to call tools return valid arguments.
// Parse reads the result whatever the family, as its bare JSON is
// accepted by the Llama 3 form; callers parse it with ForcedFormat.
func (f ToolFormat) Schema(tools []wire.Tool, choice wire.ToolChoice) (json.RawMessage, error) {
	var alts []json.RawMessage
	for _, t := range tools {
		if choice.Mode == "function" && t.Name != choice.Name {
			continue
		}
		params := t.Parameters
		if len(params) == 0 {
			params = json.RawMessage(`{"type":"object"}`)
		}
		name, _ := json.Marshal(t.Name)
		key, _ := json.Marshal(f.ArgsKey)
		alts = append(alts, json.RawMessage(fmt.Sprintf(
			`{"type":"object","properties":{"name":{"const":%s},%s:%s},"required":["name",%s],"additionalProperties":false}`,
			name, key, params, key)))
	}
	switch len(alts) {
	case 0:
		return nil, fmt.Errorf("tool_choice names function %q, which is not among the tools", choice.Name)
	case 1:
		return alts[0], nil
	}
	b, err := json.Marshal(map[string]any{"anyOf": alts})
	return b, err
}

// ForcedFormat reads the replies Schema constrains.
func ForcedFormat() ToolFormat { return ToolFormat{Opener: "{", ArgsKey: "parameters", family: Llama3} }
