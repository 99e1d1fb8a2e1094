package runner

import (
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/wire"
)

// callSink records what a toolSink passes on.
type callSink struct {
	text   strings.Builder
	calls  []wire.ToolCall
	deltas []wire.ToolCallDelta
	reason string
}

func (s *callSink) Start(int)                              {}
func (s *callSink) Deliver(text []byte)                    { s.text.Write(text) }
func (s *callSink) Finish(r string, _ wire.Usage, _ error) { s.reason = r }
func (s *callSink) setToolCalls(c []wire.ToolCall)         { s.calls = c }
func (s *callSink) callDeltas(d []wire.ToolCallDelta)      { s.deltas = append(s.deltas, d...) }

// TestToolSinkAuto: with tool_choice auto a reply that opens as the
// family's tool call is held and parsed; any other reply streams as text,
// and one that only looked like a call is sent as text at the end.
func TestToolSinkAuto(t *testing.T) {
	cases := []struct {
		template string
		single   bool
		pieces   []string
		calls    int
		text     string
		reason   string
	}{
		{chat.ChatML, false, []string{"<tool", "_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>", "<tool_call>{\"name\": \"g\"}</tool_call>"}, 2, "", "tool_calls"},
		{chat.ChatML, true, []string{"<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": \"g\"}</tool_call>"}, 1, "", "tool_calls"},
		{chat.ChatML, false, []string{"<to", "day is sunny"}, 0, "<today is sunny", "stop"},
		{chat.Llama3, false, []string{" {\"name\": \"f\", \"parameters\": {}}"}, 1, "", "tool_calls"},
		{chat.Llama3, false, []string{"{\"answer\": 42}"}, 0, "{\"answer\": 42}", "stop"},
		{chat.Llama3, false, []string{"Hello", " world"}, 0, "Hello world", "stop"},
		{chat.Llama2, false, []string{"[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": \"y\"}}]"}, 1, "", "tool_calls"},
		// A call after text: the text streams, the call does not.
		{chat.ChatML, false, []string{"Let me check.", " <tool_", "call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>"}, 1, "Let me check. ", "tool_calls"},
		{chat.Llama3, false, []string{"Sure. {\"name\": \"f\", \"parameters\": {\"a\": 1}}"}, 1, "Sure. ", "tool_calls"},
	}
	for _, c := range cases {
		next := &callSink{}
		s := &toolSink{next: next, format: chat.ToolFormatFor(c.template, ""), single: c.single}
		for _, p := range c.pieces {
			s.Deliver([]byte(p))
		}
		s.Finish("stop", wire.Usage{}, nil)
		if len(next.calls) != c.calls || next.text.String() != c.text || next.reason != c.reason {
			t.Errorf("%s %q: calls %v, text %q, reason %q; want %d calls, text %q, %q", c.template, c.pieces, next.calls, next.text.String(), next.reason, c.calls, c.text, c.reason)
		}
		for i, call := range next.calls {
			if !strings.HasPrefix(call.ID, "call_") || len(call.ID) != 29 {
				t.Errorf("call id %q", call.ID)
			}
			// Streamed first: its ID and name, then its arguments.
			var id, name, args string
			for _, d := range next.deltas {
				if d.Index == i {
					id, name, args = id+d.ID, name+d.Name, args+d.Arguments
				}
			}
			if id != call.ID || name != call.Name || args != call.Arguments {
				t.Errorf("%s %q: call %d streamed as %s %s(%s); finished as %+v", c.template, c.pieces, i, id, name, args, call)
			}
		}
	}
}

// TestToolSinkForced: a required call's reply (grammar-bound bare JSON) is
// parsed whatever the family.
func TestToolSinkForced(t *testing.T) {
	next := &callSink{}
	s := &toolSink{next: next, format: chat.ToolFormatFor(chat.ChatML, ""), forced: true}
	s.Deliver([]byte(`{"name": "f", "parameters": `))
	s.Deliver([]byte(`{"city": "Oslo"}}`))
	s.Finish("stop", wire.Usage{}, nil)
	if len(next.calls) != 1 || next.calls[0].Arguments != `{"city":"Oslo"}` || next.reason != "tool_calls" || next.text.Len() != 0 {
		t.Errorf("calls %v, text %q, reason %q", next.calls, next.text.String(), next.reason)
	}
}
