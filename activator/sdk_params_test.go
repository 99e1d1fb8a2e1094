package activator_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestSDKLogprobs: logprobs through openai-go v3 on a real runner, for chat
// and completions, streamed (chat through the SDK's accumulator) and not.
// With greedy sampling each token is its position's likeliest, so it
// heads its own alternatives; the tokens spell the text.
func TestSDKLogprobs(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	h.startRunner("stories", 2, 256)
	ctx := context.Background()
	c := h.client()
	params := openai.ChatCompletionNewParams{
		Model:       "stories",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")},
		MaxTokens:   openai.Int(20),
		Temperature: openai.Float(0),
		Logprobs:    openai.Bool(true),
		TopLogprobs: openai.Int(3),
	}
	checkChat := func(t *testing.T, content string, lps []openai.ChatCompletionTokenLogprob, tokens int64) {
		t.Helper()
		if int64(len(lps)) != tokens {
			t.Fatalf("%d logprobs for %d completion tokens", len(lps), tokens)
		}
		var spelled []byte
		for i, lp := range lps {
			for _, b := range lp.Bytes {
				spelled = append(spelled, byte(b))
			}
			if len(lp.TopLogprobs) != 3 || lp.TopLogprobs[0].Token != lp.Token || lp.TopLogprobs[0].Logprob != lp.Logprob || lp.Logprob > 0 {
				t.Errorf("token %d %q (%g): alternatives %+v", i, lp.Token, lp.Logprob, lp.TopLogprobs)
			}
		}
		if string(spelled) != content {
			t.Errorf("token bytes spell %q; content %q", spelled, content)
		}
	}
	t.Run("chat", func(t *testing.T) {
		r, err := c.Chat.Completions.New(ctx, params)
		if err != nil {
			t.Fatal(err)
		}
		checkChat(t, r.Choices[0].Message.Content, r.Choices[0].Logprobs.Content, r.Usage.CompletionTokens)
	})
	t.Run("chat stream", func(t *testing.T) {
		p := params
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
		stream := c.Chat.Completions.NewStreaming(ctx, p)
		acc := openai.ChatCompletionAccumulator{}
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		checkChat(t, acc.Choices[0].Message.Content, acc.Choices[0].Logprobs.Content, acc.Usage.CompletionTokens)
	})
	t.Run("chat without", func(t *testing.T) {
		p := params
		p.Logprobs, p.TopLogprobs = openai.Bool(false), openai.Int(0)
		r, err := c.Chat.Completions.New(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if r.Choices[0].Logprobs.JSON.Content.Valid() {
			t.Errorf("logprobs without asking: %s", r.Choices[0].Logprobs.RawJSON())
		}
	})

	cparams := openai.CompletionNewParams{
		Model:       "stories",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens:   openai.Int(20),
		Temperature: openai.Float(0),
		Logprobs:    openai.Int(2),
	}
	checkLegacy := func(t *testing.T, text string, lp openai.CompletionChoiceLogprobs) {
		t.Helper()
		n := len(lp.Tokens)
		if n == 0 || len(lp.TokenLogprobs) != n || len(lp.TopLogprobs) != n || len(lp.TextOffset) != n {
			t.Fatalf("legacy logprobs of uneven lengths: %+v", lp)
		}
		if strings.Join(lp.Tokens, "") != text {
			t.Errorf("tokens %q spell other than %q", lp.Tokens, text)
		}
		offset := int64(0)
		for i, tok := range lp.Tokens {
			if lp.TextOffset[i] != offset {
				t.Errorf("token %d at offset %d, want %d", i, lp.TextOffset[i], offset)
			}
			offset += int64(len(tok))
			if top, ok := lp.TopLogprobs[i][tok]; !ok || math.Abs(top-lp.TokenLogprobs[i]) > 1e-6 || len(lp.TopLogprobs[i]) > 2 {
				t.Errorf("token %d %q (%g) not among its alternatives %v", i, tok, lp.TokenLogprobs[i], lp.TopLogprobs[i])
			}
		}
	}
	var plain string
	t.Run("completion", func(t *testing.T) {
		r, err := c.Completions.New(ctx, cparams)
		if err != nil {
			t.Fatal(err)
		}
		plain = r.Choices[0].Text
		checkLegacy(t, plain, r.Choices[0].Logprobs)
	})
	// A stop sequence cuts the text; the tokens of the stop sequence go
	// with it, so the tokens still spell the text (but the last, which
	// may run into the stop sequence).
	t.Run("stop", func(t *testing.T) {
		for _, stream := range []bool{false, true} {
			p := cparams
			p.MaxTokens = openai.Int(80)
			p.Stop = openai.CompletionNewParamsStopUnion{OfString: openai.String(".")}
			var text string
			var toks []string
			if stream {
				s := c.Completions.NewStreaming(ctx, p)
				for s.Next() {
					if ch := s.Current(); len(ch.Choices) > 0 {
						text += ch.Choices[0].Text
						toks = append(toks, ch.Choices[0].Logprobs.Tokens...)
					}
				}
				if err := s.Err(); err != nil {
					t.Fatal(err)
				}
			} else {
				r, err := c.Completions.New(ctx, p)
				if err != nil {
					t.Fatal(err)
				}
				text, toks = r.Choices[0].Text, r.Choices[0].Logprobs.Tokens
			}
			joined := strings.Join(toks, "")
			if len(toks) == 0 || strings.Contains(text, ".") || !strings.HasPrefix(joined, text) || len(joined)-len(text) >= len(toks[len(toks)-1]) && len(joined) != len(text) {
				t.Errorf("stream %v: text %q, tokens %q", stream, text, toks)
			}
		}
	})
	t.Run("completion stream", func(t *testing.T) {
		stream := c.Completions.NewStreaming(ctx, cparams)
		var text strings.Builder
		var all openai.CompletionChoiceLogprobs
		for stream.Next() {
			ch := stream.Current()
			if len(ch.Choices) == 0 {
				continue
			}
			text.WriteString(ch.Choices[0].Text)
			lp := ch.Choices[0].Logprobs
			all.Tokens = append(all.Tokens, lp.Tokens...)
			all.TokenLogprobs = append(all.TokenLogprobs, lp.TokenLogprobs...)
			all.TopLogprobs = append(all.TopLogprobs, lp.TopLogprobs...)
			all.TextOffset = append(all.TextOffset, lp.TextOffset...)
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		checkLegacy(t, text.String(), all)
		if text.String() != plain {
			t.Errorf("stream wrote %q, the body %q", text.String(), plain)
		}
	})
}

// TestSDKSamplingControls: echo, logit_bias and repetition_penalty through
// openai-go v3, and fields infer does not honour refused with the SDK's
// typed error naming them.
func TestSDKSamplingControls(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	h.startRunner("stories", 2, 256)
	ctx := context.Background()
	c := h.client()
	prompt := openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")}
	complete := func(p openai.CompletionNewParams, opts ...option.RequestOption) (string, error) {
		p.Model, p.Prompt, p.Temperature = "stories", prompt, openai.Float(0)
		if !p.MaxTokens.Valid() {
			p.MaxTokens = openai.Int(12)
		}
		r, err := c.Completions.New(ctx, p, opts...)
		if err != nil {
			return "", err
		}
		return r.Choices[0].Text, nil
	}
	must := func(s string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	plain := must(complete(openai.CompletionNewParams{}))

	t.Run("echo", func(t *testing.T) {
		if got := must(complete(openai.CompletionNewParams{Echo: openai.Bool(true)})); got != "Once upon a time"+plain {
			t.Errorf("echo: %q, want the prompt and %q", got, plain)
		}
		p := openai.CompletionNewParams{Model: "stories", Prompt: prompt, Temperature: openai.Float(0), MaxTokens: openai.Int(12), Echo: openai.Bool(true)}
		stream := c.Completions.NewStreaming(ctx, p)
		var text strings.Builder
		for stream.Next() {
			if ch := stream.Current(); len(ch.Choices) > 0 {
				text.WriteString(ch.Choices[0].Text)
			}
		}
		if err := stream.Err(); err != nil || text.String() != "Once upon a time"+plain {
			t.Errorf("echo stream: %q, %v", text.String(), err)
		}
	})

	t.Run("logit_bias", func(t *testing.T) {
		// +100 on one token makes it the only choice, every time.
		r, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "stories", Prompt: prompt, Temperature: openai.Float(0),
			MaxTokens: openai.Int(4), LogitBias: map[string]int64{"300": 100}, Logprobs: openai.Int(0)})
		if err != nil {
			t.Fatal(err)
		}
		toks := r.Choices[0].Logprobs.Tokens
		if len(toks) != 4 || toks[0] == "" || strings.Repeat(toks[0], 4) != r.Choices[0].Text {
			t.Errorf("token 300 forced: %q (tokens %q)", r.Choices[0].Text, toks)
		}
		// The runner knows the vocabulary; the activator does not.
		_, err = complete(openai.CompletionNewParams{LogitBias: map[string]int64{"99999": 1}})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "logit_bias" {
			t.Errorf("a token past the vocabulary: %v", err)
		}
	})

	t.Run("repetition_penalty", func(t *testing.T) {
		long := openai.CompletionNewParams{MaxTokens: openai.Int(120)}
		none := must(complete(long))
		got := must(complete(long, option.WithJSONSet("repetition_penalty", 1.5)))
		if got == none {
			t.Errorf("repetition_penalty 1.5 left the output unchanged: %q", got)
		}
		if same := must(complete(long, option.WithJSONSet("repeat_penalty", 1.5))); same != got {
			t.Errorf("repeat_penalty 1.5 wrote %q, repetition_penalty 1.5 %q", same, got)
		}
	})

	// What infer does not honour is a typed 400 naming the field.
	hi := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}
	for _, tt := range []struct {
		name, param, code string
		call              func() error
	}{
		{"unknown field", "frobnicate", "unsupported_parameter", func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: hi}, option.WithJSONSet("frobnicate", 1))
			return err
		}},
		{"audio", "modalities", "unsupported_value", func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: hi, Modalities: []string{"text", "audio"}})
			return err
		}},
		{"suffix", "suffix", "unsupported_value", func() error { // stories260K has no FIM tokens
			_, err := complete(openai.CompletionNewParams{Suffix: openai.String("The end.")})
			return err
		}},
		{"best_of", "best_of", "unsupported_value", func() error {
			_, err := complete(openai.CompletionNewParams{BestOf: openai.Int(3)})
			return err
		}},
		{"store", "store", "unsupported_value", func() error {
			_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: hi, Store: openai.Bool(true)})
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var apiErr *openai.Error
			if err := tt.call(); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != tt.param || apiErr.Code != tt.code || !strings.Contains(apiErr.Message, tt.param) {
				t.Errorf("got %v; want a 400 %s naming %s", err, tt.code, tt.param)
			}
		})
	}
}
