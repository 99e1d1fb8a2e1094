package activator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/jsonschema"
	"github.com/infer-run/infer/internal/wire"
)

// toolParam is one entry of a request's tools.
type toolParam struct {
	Type     string `json:"type"`
	Function *struct {
		Name        string          `json:"name"`
		Description string          `json:"description"`
		Parameters  json.RawMessage `json:"parameters"`
		Strict      *bool           `json:"strict"`
	} `json:"function"`
}

// toolCallParam is one of an assistant message's tool_calls.
type toolCallParam struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

// toolFields are the tool parameters of a chat request, embedded in
// completionRequest.
type toolFields struct {
	Tools             []toolParam     `json:"tools"`
	ToolChoice        json.RawMessage `json:"tool_choice"`
	ParallelToolCalls *bool           `json:"parallel_tool_calls"`

	// choice is ToolChoice as checked by checkTools.
	choice *wire.ToolChoice
}

// OpenAI's rule for function names.
var functionName = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// maxTools bounds the tools of one request; each is rendered into the
// prompt.
const maxTools = 128

// checkTools validates tools and tool_choice. A required call (tool_choice
// "required" or a named function) is grammar-constrained to the functions'
// parameters: their schemas are checked here as response_format's are.
func (r *completionRequest) checkTools(kind wire.Kind) *apiError {
	if kind != wire.KindChat {
		if len(r.Tools) > 0 {
			return errInvalid("tools", "tools are a chat completions parameter")
		}
		return nil
	}
	if len(r.Tools) > maxTools {
		return errInvalid("tools", "at most %d tools are allowed", maxTools)
	}
	names := map[string]bool{}
	for i, t := range r.Tools {
		param := fmt.Sprintf("tools[%d]", i)
		if t.Type != "function" || t.Function == nil {
			return errInvalid(param+".type", "only function tools are supported (type \"function\" with a function object)")
		}
		if !functionName.MatchString(t.Function.Name) {
			return errInvalid(param+".function.name", "invalid function name %q: use 1 to 64 letters, digits, underscores and dashes", t.Function.Name)
		}
		if names[t.Function.Name] {
			return errInvalid(param+".function.name", "function %q is defined twice", t.Function.Name)
		}
		names[t.Function.Name] = true
		if p := bytes.TrimSpace(t.Function.Parameters); len(p) > 0 && p[0] != '{' {
			return errInvalid(param+".function.parameters", "parameters must be a JSON schema object")
		}
	}
	choice, err := parseToolChoice(r.ToolChoice)
	if err != nil {
		return err
	}
	if choice != nil && choice.Mode != "none" && choice.Mode != "auto" && len(r.Tools) == 0 {
		return errInvalid("tool_choice", "tool_choice %q needs tools", choice.Mode)
	}
	if choice != nil && choice.Mode == "function" && !names[choice.Name] {
		return errInvalid("tool_choice", "tool_choice names function %q, which is not among the tools", choice.Name)
	}
	if choice != nil && (choice.Mode == "required" || choice.Mode == "function") {
		if rf := r.ResponseFormat; rf != nil && rf.Type != "text" {
			return errInvalid("response_format", "response_format cannot be combined with a required tool call (tool_choice %q): the call's arguments follow the function's schema", choice.Mode)
		}
		schema, err := chat.ForcedFormat().Schema(r.wireTools(), *choice)
		if err == nil {
			err = jsonschema.Validate(schema)
		}
		if err != nil {
			return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: strp("tools"),
				Code: strp("invalid_schema"), Message: "invalid function parameters for a required tool call: " + err.Error()}
		}
	}
	for i, m := range r.Messages {
		if len(m.ToolCalls) > 0 && m.Role != "assistant" {
			return errInvalid(fmt.Sprintf("messages[%d].tool_calls", i), "only assistant messages have tool_calls")
		}
		for j, c := range m.ToolCalls {
			param := fmt.Sprintf("messages[%d].tool_calls[%d]", i, j)
			if c.Type != "function" || c.Function.Name == "" {
				return errInvalid(param, "a tool call needs type \"function\" and a function name")
			}
			if !json.Valid([]byte(c.Function.Arguments)) {
				return errInvalid(param+".function.arguments", "arguments must be JSON text")
			}
		}
		if m.Role == "tool" && m.ToolCallID == "" {
			return errInvalid(fmt.Sprintf("messages[%d].tool_call_id", i), "a tool message needs the tool_call_id it answers")
		}
	}
	if choice == nil && len(r.Tools) > 0 {
		choice = &wire.ToolChoice{Mode: "auto"}
	}
	if choice != nil && r.ParallelToolCalls != nil && !*r.ParallelToolCalls {
		choice.Single = true
	}
	r.choice = choice
	return nil
}

// parseToolChoice reads "none", "auto", "required" or
// {"type":"function","function":{"name":...}}; nil when absent.
func parseToolChoice(b json.RawMessage) (*wire.ToolChoice, *apiError) {
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return nil, nil
	}
	var mode string
	if json.Unmarshal(b, &mode) == nil {
		switch mode {
		case "none", "auto", "required":
			return &wire.ToolChoice{Mode: mode}, nil
		}
		return nil, errInvalid("tool_choice", "invalid tool_choice %q: expected none, auto, required or a function", mode)
	}
	var named struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if json.Unmarshal(b, &named) != nil || named.Type != "function" || named.Function.Name == "" {
		return nil, errInvalid("tool_choice", `tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}`)
	}
	return &wire.ToolChoice{Mode: "function", Name: named.Function.Name}, nil
}

// wireTools are the request's tools as the runner takes them.
func (r *completionRequest) wireTools() []wire.Tool {
	if len(r.Tools) == 0 {
		return nil
	}
	out := make([]wire.Tool, len(r.Tools))
	for i, t := range r.Tools {
		out[i] = wire.Tool{Name: t.Function.Name, Description: t.Function.Description, Parameters: t.Function.Parameters}
	}
	return out
}

// wireToolCalls are a message's tool calls as the runner takes them.
func wireToolCalls(calls []toolCallParam) []wire.ToolCall {
	if len(calls) == 0 {
		return nil
	}
	out := make([]wire.ToolCall, len(calls))
	for i, c := range calls {
		out[i] = wire.ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: c.Function.Arguments}
	}
	return out
}

// toolCallJSON is a tool call as OpenAI's replies hold it.
type toolCallJSON struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

func toolCallsJSON(calls []wire.ToolCall) []toolCallJSON {
	out := make([]toolCallJSON, len(calls))
	for i, c := range calls {
		out[i].ID, out[i].Type = c.ID, "function"
		out[i].Function.Name, out[i].Function.Arguments = c.Name, c.Arguments
	}
	return out
}

// argumentPiece is how many bytes of a call's arguments one streamed chunk
// carries when they are sent whole (a call the runner did not stream as
// it was written); the chunks then come as OpenAI sends them: the call's
// index, id, type and name with empty arguments first, then the arguments
// in pieces.
const argumentPiece = 32

// toolCallFn and toolCallDelta are a streamed tool call chunk's parts.
type toolCallFn struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

type toolCallDelta struct {
	Index    int        `json:"index"`
	ID       string     `json:"id,omitempty"`
	Type     string     `json:"type,omitempty"`
	Function toolCallFn `json:"function"`
}

// toolCallChunk appends a chunk of choice ci carrying one call's piece.
func (e *chunkEncoder) toolCallChunk(out []byte, ci int, c toolCallDelta) []byte {
	d, _ := json.Marshal(struct {
		ToolCalls []toolCallDelta `json:"tool_calls"`
	}{[]toolCallDelta{c}})
	out = e.open(out, ci)
	out = append(out, `"delta":`...)
	out = append(out, d...)
	return append(out, `,"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
}

// callDeltaChunks streams the pieces of calls being written, as OpenAI
// does: a call's index, id, type and name first, then its arguments.
func (e *chunkEncoder) callDeltaChunks(ci int, deltas []wire.ToolCallDelta) []byte {
	var out []byte
	for _, d := range deltas {
		c := toolCallDelta{Index: d.Index, Function: toolCallFn{Name: d.Name, Arguments: d.Arguments}}
		if d.Name != "" {
			c.ID, c.Type = d.ID, "function"
		}
		out = e.toolCallChunk(out, ci, c)
	}
	return out
}

// addCallDeltas folds streamed pieces into the calls streamed so far.
func addCallDeltas(calls []wire.ToolCall, deltas []wire.ToolCallDelta) []wire.ToolCall {
	for _, d := range deltas {
		for len(calls) <= d.Index {
			calls = append(calls, wire.ToolCall{})
		}
		c := &calls[d.Index]
		if d.Name != "" {
			c.ID, c.Name = d.ID, d.Name
		}
		c.Arguments += d.Arguments
	}
	return calls
}

// toolCallRest streams choice ci's finished calls as far as their pieces
// streamed before (streamed) did not: a call not begun whole, with its
// arguments in pieces; one begun, the rest of its arguments.
func (e *chunkEncoder) toolCallRest(ci int, calls, streamed []wire.ToolCall) []byte {
	var out []byte
	for i, c := range calls {
		args := c.Arguments
		if i < len(streamed) && streamed[i].ID == c.ID && strings.HasPrefix(args, streamed[i].Arguments) {
			args = args[len(streamed[i].Arguments):]
		} else {
			out = e.toolCallChunk(out, ci, toolCallDelta{Index: i, ID: c.ID, Type: "function", Function: toolCallFn{Name: c.Name}})
		}
		for args != "" {
			n := min(argumentPiece, len(args))
			for n < len(args) && !utf8.RuneStart(args[n]) {
				n++ // whole characters only
			}
			out = e.toolCallChunk(out, ci, toolCallDelta{Index: i, Function: toolCallFn{Arguments: args[:n]}})
			args = args[n:]
		}
	}
	return out
}
