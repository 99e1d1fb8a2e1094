package wire

import (
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
