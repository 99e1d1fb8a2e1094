package wire

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestEventRoundTrip(t *testing.T) {
	events := []Event{
		{Type: EventDelta, Text: "Once upon a time"},
		{Type: EventDelta, Text: "", Seq: 1 << 31},
		{Type: EventDelta, Text: "quote \" and newline \n and é"},
		{Type: EventStart, Usage: &Usage{PromptTokens: 5}},
		{Type: EventPhase, Phase: "fetching weights 40%"},
		{Type: EventDone, FinishReason: "length", Usage: &Usage{PromptTokens: 5, CompletionTokens: 7}, Seq: 9},
		{Type: EventError, Error: &Error{Status: 400, Code: "context_length_exceeded", Param: "messages", Message: "too long"}},
		// Logprobs, with a token that is half a UTF-8 character.
		{Type: EventDelta, Text: "é", Seq: 3, Logprobs: []TokenLogprob{
			{Token: []byte{0xc3}, Logprob: -0.5, Top: []TokenLogprob{{Token: []byte{0xc3}, Logprob: -0.5}, {Token: []byte("a"), Logprob: -1.25}}},
			{Token: []byte{0xa9}, Logprob: -0.01},
		}},
		// A tool call being written.
		{Type: EventDelta, Text: "Let me check. ", Seq: 5, Calls: []ToolCallDelta{{Index: 0, ID: "call_1", Name: "f"}, {Index: 0, Arguments: `{"a":`}}},
		// One of n completions.
		{Type: EventDelta, Text: "b", Index: 2, Seq: 4},
		{Type: EventDone, Usage: &Usage{PromptTokens: 5, CompletionTokens: 9}, Choices: []Choice{
			{Index: 0, FinishReason: "stop", CompletionTokens: 4},
			{Index: 1, FinishReason: "tool_calls", ToolCalls: []ToolCall{{ID: "call_1", Name: "f", Arguments: "{}"}}, CompletionTokens: 5},
		}},
	}
	for _, ev := range events {
		data, err := AppendEvent(nil, &ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEvent(data)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("round trip: got %+v, want %+v", got, ev)
		}
	}
	// A delta numbered once its text is complete.
	data := AppendDelta(nil, 0, []byte("abc"))
	SetSeq(data, 42)
	if got, err := DecodeEvent(data); err != nil || got.Seq != 42 || got.Text != "abc" {
		t.Errorf("SetSeq(42): decoded %+v, %v", got, err)
	}
	// An activator that predates logprobs reads a delta carrying them as
	// JSON, which it always could decode: its text arrives.
	data, _ = AppendEvent(nil, &Event{Type: EventDelta, Text: "hi", Logprobs: []TokenLogprob{{Token: []byte("hi")}}})
	var old struct {
		Type EventType `json:"t"`
		Text string    `json:"text"`
	}
	if data[0] != tagJSON || json.Unmarshal(data[EventHeaderLen:], &old) != nil || old.Type != EventDelta || old.Text != "hi" {
		t.Errorf("delta with logprobs encoded as %q", data)
	}
	for _, bad := range [][]byte{nil, []byte("x"), []byte("d\x00\x00\x00"), []byte("j\x00\x00\x00\x00{"), []byte("x\x00\x00\x00\x00")} {
		if _, err := DecodeEvent(bad); err == nil {
			t.Errorf("DecodeEvent(%q) accepted bad input", bad)
		}
	}
}

func TestResendRequest(t *testing.T) {
	for _, tt := range []struct {
		id   string
		from uint32
	}{{"cmpl-abc", 0}, {"chatcmpl-x1", 7}, {"cmpl-max", 1<<32 - 1}} {
		id, from, err := ParseResend(AppendResend(nil, tt.id, tt.from))
		if err != nil || id != tt.id || from != tt.from {
			t.Errorf("round trip of (%q, %d): (%q, %d, %v)", tt.id, tt.from, id, from, err)
		}
	}
	for _, bad := range []string{"", "cmpl-abc", " 3", "cmpl-abc x", "cmpl-abc -1", "cmpl-abc 4294967296"} {
		if _, _, err := ParseResend([]byte(bad)); err == nil {
			t.Errorf("ParseResend(%q) took it", bad)
		}
	}
}
