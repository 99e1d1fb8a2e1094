package activator_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"

	"github.com/infer-run/infer/internal/wire"
)

// TestToolCallAfterTextRelayed: a reply that writes text, then a tool call
// (as a runner streams it: the text as content, the call's ID and name,
// then its arguments as they are written), reaches openai-go v3's
// accumulator as content plus one call, streamed and in a body. The
// runner here streamed only the arguments' start before the reply
// ended: the relay sends the rest from the done event's whole call.
func TestToolCallAfterTextRelayed(t *testing.T) {
	h := newHarness(t)
	h.deploy("fake", map[string]any{"parallel": 1})
	js, err := jetstream.New(h.nc)
	if err != nil {
		t.Fatal(err)
	}
	heartbeat(t, h.nc, h.depID("fake"), "r1")
	const id, args = "call_abcdefghijklmnopqrstuvwx", `{"city":"Oslo","days":2}`
	// played is closed when the runner's last event is acknowledged: the
	// test waits for it, or its end closes NATS under the runner.
	var played chan struct{}
	play := func() {
		defer close(played)
		job := takeJob(t, js, h.depID("fake"))
		r := &fakeRunner{t: t, nc: h.nc, id: "r1", subject: wire.RunnerReplySubject(job.ReplyTo, "r1")}
		r.start()
		r.delta("Let me check. ")
		r.send(&wire.Event{Type: wire.EventDelta, Calls: []wire.ToolCallDelta{{Index: 0, ID: id, Name: "get_weather"}}})
		r.send(&wire.Event{Type: wire.EventDelta, Calls: []wire.ToolCallDelta{{Index: 0, Arguments: `{"city":`}}})
		r.last(&wire.Event{Type: wire.EventDone, FinishReason: "tool_calls", Usage: &wire.Usage{PromptTokens: 3, CompletionTokens: 9},
			ToolCalls: []wire.ToolCall{{ID: id, Name: "get_weather", Arguments: args}}})
	}
	c := h.client()
	params := openai.ChatCompletionNewParams{Model: "fake", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Weather in Oslo?")},
		Tools: []openai.ChatCompletionToolUnionParam{weatherTool}}

	played = make(chan struct{})
	go play()
	stream := c.Chat.Completions.NewStreaming(t.Context(), params)
	var acc openai.ChatCompletionAccumulator
	var finished []openai.FinishedChatCompletionToolCall
	content := ""
	for stream.Next() {
		ch := stream.Current()
		acc.AddChunk(ch)
		for _, c := range ch.Choices {
			content += c.Delta.Content
		}
		if tc, ok := acc.JustFinishedToolCall(); ok {
			finished = append(finished, tc)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if content != "Let me check. " || acc.Choices[0].Message.Content != "Let me check. " {
		t.Errorf("streamed content %q, accumulated %q; want the text before the call", content, acc.Choices[0].Message.Content)
	}
	if len(finished) != 1 || finished[0].ID != id || finished[0].Name != "get_weather" || finished[0].Arguments != args {
		t.Errorf("finished calls %+v; want %s get_weather(%s)", finished, id, args)
	}
	if calls := acc.Choices[0].Message.ToolCalls; len(calls) != 1 || calls[0].Function.Arguments != args || acc.Choices[0].FinishReason != "tool_calls" {
		t.Errorf("accumulated %+v, finish %q", calls, acc.Choices[0].FinishReason)
	}

	<-played
	played = make(chan struct{})
	go play()
	done := make(chan struct{})
	var body *openai.ChatCompletion
	go func() { defer close(done); body, err = c.Chat.Completions.New(t.Context(), params) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("no answer")
	}
	if err != nil {
		t.Fatal(err)
	}
	if m := body.Choices[0].Message; m.Content != "Let me check. " || len(m.ToolCalls) != 1 || m.ToolCalls[0].ID != id || m.ToolCalls[0].Function.Arguments != args {
		t.Errorf("body message %+v", m)
	}
	<-played
}
