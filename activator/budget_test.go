package activator

import (
	"encoding/json"
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

func TestMaxCost(t *testing.T) {
	cases := []struct {
		name                      string
		prompt, maxTokens, ctxLen int
		p                         wire.Prices
		want                      float64 // in millionths of a dollar
	}{
		{"completion priced: max_tokens after the shortest prompt", 100, 16, 512, wire.Prices{CompletionPerMTok: 1}, 16},
		{"no max_tokens: the context less one prompt token", 100, 0, 512, wire.Prices{CompletionPerMTok: 1}, 511},
		{"max_tokens past the context", 100, 10000, 512, wire.Prices{CompletionPerMTok: 1}, 511},
		{"prompt priced: the whole prompt bound", 100, 16, 512, wire.Prices{PromptPerMTok: 1}, 100},
		{"a prompt over the context is billed alone", 1000, 16, 512, wire.Prices{PromptPerMTok: 1, CompletionPerMTok: 1}, 1000},
		{"both priced, prompt fits: prompt plus what is left", 400, 0, 512, wire.Prices{PromptPerMTok: 1, CompletionPerMTok: 1}, 511 + 1},
		{"completion dearer: short prompt, long answer", 400, 0, 512, wire.Prices{PromptPerMTok: 1, CompletionPerMTok: 10}, 1 + 511*10},
		{"completion dearer, max_tokens bends it", 400, 100, 512, wire.Prices{PromptPerMTok: 1, CompletionPerMTok: 10}, 400 + 100*10},
		{"free", 400, 100, 512, wire.Prices{}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := maxCost(tc.prompt, tc.maxTokens, tc.ctxLen, tc.p) * 1e6
			if d := got - tc.want; d > 1e-6 || d < -1e-6 {
				t.Errorf("maxCost = %v millionths, want %v", got, tc.want)
			}
		})
	}
}

func TestPromptBound(t *testing.T) {
	chat := wire.Job{Kind: wire.KindChat, Messages: []wire.Message{{Role: "user", Content: "héllo"}, {Role: "assistant", Content: ""}}}
	if got, want := promptBound(chat), templateFixed+len("héllo")+len("user")+len("assistant")+2*templatePerMessage; got != want {
		t.Errorf("chat bound %d, want %d", got, want)
	}
	// Tools and tool calls are rendered into the prompt too.
	tools := wire.Job{Kind: wire.KindChat,
		Messages: []wire.Message{{Role: "assistant", ToolCalls: []wire.ToolCall{{ID: "c1", Name: "f", Arguments: `{"a":1}`}}}, {Role: "tool", ToolCallID: "c1", Content: "2"}},
		Tools:    []wire.Tool{{Name: "f", Description: "adds", Parameters: json.RawMessage(`{"type":"object"}`)}}}
	want := templateFixed + len("assistant") + templatePerMessage + len("c1"+"f"+`{"a":1}`) + templatePerMessage +
		len("tool"+"2"+"c1") + templatePerMessage + len("f"+"adds"+`{"type":"object"}`) + templatePerMessage
	if got := promptBound(tools); got != want {
		t.Errorf("chat with tools bound %d, want %d", got, want)
	}
	if got, want := promptBound(wire.Job{Prompt: "abc"}), templateFixed+3; got != want {
		t.Errorf("completion bound %d, want %d", got, want)
	}
}
