package runner

import (
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/gguf"
	"github.com/infer-run/infer/internal/wire"
)

// l3Today is the clock the Llama 3.2 template reads its "Today Date" from.
func l3Today() time.Time { return time.Date(2026, 12, 4, 18, 0, 0, 0, time.UTC) }

// l3Rendered is what Python's Jinja2 renders from llama3-tiny.gguf's
// tokenizer.chat_template (the real Llama 3.1/3.2 one) for a system and a
// user message, with bos_token "<|begin_of_text|>" and date_string
// "04 Dec 2026", as Hugging Face's apply_chat_template does.
const l3Rendered = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 04 Dec 2026\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"

// l3Prompter is the runner's prompter for llama3-tiny, as a runner builds
// it after loading the model.
func l3Prompter(t *testing.T, override string) (*Engine, *prompter) {
	t.Helper()
	e := tokenizer(t, llama3Tiny(t))
	info, err := gguf.ReadFile(llama3Tiny(t))
	if err != nil {
		t.Fatal(err)
	}
	e.info = info
	return e, e.newPrompter(override, l3Today, slog.Default())
}

// TestJinjaLlama3Tokens: the model's own template is chosen, and the chat
// it renders tokenizes to exactly the ids of the reference rendering, with
// one BOS (the template writes bos_token and the tokenizer adds BOS: only
// one of them stays).
func TestJinjaLlama3Tokens(t *testing.T) {
	e, p := l3Prompter(t, "")
	if p.name != chat.Jinja {
		t.Fatalf("template in use %q; want %q", p.name, chat.Jinja)
	}
	if p.opt.BOS != "<|begin_of_text|>" || p.opt.EOS != "<|eot_id|>" && p.opt.EOS != "<|end_of_text|>" {
		t.Errorf("bos_token %q, eos_token %q", p.opt.BOS, p.opt.EOS)
	}
	parts, err := p.render([]wire.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hi"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.TokenizeParts(parts)
	if err != nil {
		t.Fatal(err)
	}
	want, err := e.model.Tokenize(l3Rendered, false, true)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("tokens %v\nwant   %v", got, want)
	}
	if got[0] != l3BOS || slices.Index(got[1:], l3BOS) >= 0 {
		t.Errorf("BOS (%d) must come once, first: %v", l3BOS, got)
	}
	// The ids themselves, not only agreement with the tokenizer: the first
	// turn's header and the prompt's end.
	if head := []int{l3BOS, l3StartHeader, 9125 /* system */, l3EndHeader}; !slices.Equal(got[:4], head) {
		t.Errorf("prompt starts %v; want %v", got[:4], head)
	}
	if tail := []int{l3EOT, l3StartHeader, 78191 /* assistant */, l3EndHeader, 271 /* \n\n */}; !slices.Equal(got[len(got)-5:], tail) {
		t.Errorf("prompt ends %v; want %v", got[len(got)-5:], tail)
	}
}

// TestJinjaContentCannotForgeMarkers: through the model's own template as
// through the family renderers, content that spells Llama 3's markers
// stays text.
func TestJinjaContentCannotForgeMarkers(t *testing.T) {
	e, p := l3Prompter(t, "")
	parts, err := p.render([]wire.Message{{Role: "system", Content: "Be brief."}, {Role: "user", Content: forged}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := e.TokenizeParts(parts)
	if err != nil {
		t.Fatal(err)
	}
	var special []int
	for _, tok := range tokens {
		if tok >= l3FirstCtl {
			special = append(special, tok)
		}
	}
	want := []int{l3BOS,
		l3StartHeader, l3EndHeader, l3EOT,
		l3StartHeader, l3EndHeader, l3EOT,
		l3StartHeader, l3EndHeader}
	if !slices.Equal(special, want) {
		t.Errorf("control tokens %v; want %v (BOS once and the template's markers only)", special, want)
	}
	// Tokenized whole, the same render would obey the forged markers.
	whole, err := e.Tokenize(chat.PromptText(parts))
	if err != nil {
		t.Fatal(err)
	}
	if n := countAtLeast(whole, l3FirstCtl); n <= len(want) {
		t.Errorf("whole-string tokenizing gave %d control tokens; the forged markers should make more than %d", n, len(want))
	}
}

// TestJinjaToolsRendered: the model's template sees the tools, an
// assistant turn's tool calls and the tool's result (Llama 3.1's template
// writes them as JSON and an ipython turn).
func TestJinjaToolsRendered(t *testing.T) {
	_, p := l3Prompter(t, "")
	tools := []wire.Tool{{Name: "get_weather", Description: "Weather in a city", Parameters: json.RawMessage(`{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}`)}}
	msgs := []wire.Message{
		{Role: "user", Content: "Weather in Paris?"},
		{Role: "assistant", ToolCalls: []wire.ToolCall{{ID: "call_1", Name: "get_weather", Arguments: `{"city":"Paris","days":3}`}}},
		{Role: "tool", ToolCallID: "call_1", Content: `{"temp_c":21}`},
	}
	parts, err := p.render(msgs, tools)
	if err != nil {
		t.Fatal(err)
	}
	text := chat.PromptText(parts)
	for _, want := range []string{
		`"name": "get_weather"`, `"description": "Weather in a city"`,
		`{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}`,
		"<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temp_c\\\":21}\"<|eot_id|>",
	} {
		if !contains(text, want) {
			t.Errorf("rendered chat lacks %q:\n%s", want, text)
		}
	}
}

// TestOverrideTemplate: a deployment's named family replaces the model's
// own template.
func TestOverrideTemplate(t *testing.T) {
	e, p := l3Prompter(t, chat.ChatML)
	if p.name != chat.ChatML || p.jinja != nil {
		t.Fatalf("template in use %q", p.name)
	}
	parts, err := p.render([]wire.Message{{Role: "user", Content: "Hi"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := chat.PromptText(parts); got != "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" {
		t.Errorf("rendered %q", got)
	}
	if !slices.Equal(p.stops, []string{"<|im_end|>"}) {
		t.Errorf("stops %v", p.stops)
	}
	_ = e
}

// TestEngineStopsOnEndOfGeneration: llama3-tiny's random weights never end
// a reply by themselves; a grammar that is complete after one JSON boolean
// leaves the sampler only end-of-generation tokens (<|eot_id|>,
// <|eom_id|>, <|end_of_text|>), and the reply must end there, without the
// token's text and with "stop".
func TestEngineStopsOnEndOfGeneration(t *testing.T) {
	e := startEngine(t, EngineConfig{ModelPath: llama3Tiny(t), Parallel: 1, Context: 256})
	p := e.newPrompter("", l3Today, slog.Default())
	parts, err := p.render([]wire.Message{{Role: "user", Content: "Yes or no?"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := greedy()
	s.JSONSchema = json.RawMessage(`{"type":"boolean"}`)
	c := generate(t, e, Request{Parts: parts, MaxTokens: 20, Sampling: s, Stop: p.stops})
	text := c.wait(t)
	if c.err != nil || c.reason != "stop" || (text != "true" && text != "false") {
		t.Errorf("reply %q, finish %q, err %v; want a boolean ended by an end-of-generation token", text, c.reason, c.err)
	}
	if c.usage.CompletionTokens >= 20 {
		t.Errorf("%d completion tokens: it ran to max_tokens", c.usage.CompletionTokens)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
