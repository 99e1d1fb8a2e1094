package activator_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

// TestSDKN: n > 1 through openai-go v3 on a real runner, chat and
// completions, streamed and not: n choices indexed 0..n-1, different
// with a seed, the same greedy; usage counts the prompt once and every
// completion's tokens, and so does the usage record that bills them.
func TestSDKN(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 3})
	h.startRunner("stories", 3, 256)
	usage := h.usageRecords("stories")
	ctx := context.Background()
	c := h.client()
	msgs := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")}

	one, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: msgs, MaxTokens: openai.Int(8), Temperature: openai.Float(0)})
	if err != nil {
		t.Fatal(err)
	}
	drain := func() {
		for {
			select {
			case <-usage:
			case <-time.After(300 * time.Millisecond):
				return
			}
		}
	}
	drain()

	t.Run("chat seeded", func(t *testing.T) {
		// stories260K is sure of its first words: 40 tokens let three
		// seeds part.
		r, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: msgs, MaxTokens: openai.Int(40),
			N: openai.Int(3), Seed: openai.Int(7), Temperature: openai.Float(1.5)})
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Choices) != 3 {
			t.Fatalf("%d choices; want 3", len(r.Choices))
		}
		seen := map[string]bool{}
		for i, ch := range r.Choices {
			if ch.Index != int64(i) || ch.FinishReason == "" {
				t.Errorf("choice %d: index %d, finish %q", i, ch.Index, ch.FinishReason)
			}
			seen[ch.Message.Content] = true
		}
		if len(seen) != 3 {
			t.Errorf("3 seeded completions are not all different: %+v", r.Choices)
		}
		if r.Usage.PromptTokens != one.Usage.PromptTokens {
			t.Errorf("prompt tokens %d; one completion's prompt has %d (counted once)", r.Usage.PromptTokens, one.Usage.PromptTokens)
		}
		if r.Usage.CompletionTokens < 3 || r.Usage.CompletionTokens > 120 {
			t.Errorf("completion tokens %d for 3 completions of at most 40", r.Usage.CompletionTokens)
		}
		select {
		case rec := <-usage:
			if rec.RequestID != r.ID || int64(rec.PromptTokens) != r.Usage.PromptTokens || int64(rec.CompletionTokens) != r.Usage.CompletionTokens {
				t.Errorf("usage record %+v; the response says %+v", rec, r.Usage)
			}
		case <-time.After(10 * time.Second):
			t.Error("no usage record")
		}
	})

	t.Run("chat greedy stream", func(t *testing.T) {
		stream := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: msgs, MaxTokens: openai.Int(8),
			N: openai.Int(2), Temperature: openai.Float(0), StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}})
		texts := map[int64]string{}
		finished := map[int64]string{}
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			ch := stream.Current()
			acc.AddChunk(ch)
			for _, c := range ch.Choices {
				texts[c.Index] += c.Delta.Content
				if c.FinishReason != "" {
					finished[c.Index] = c.FinishReason
				}
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		for i := range int64(2) {
			if texts[i] != one.Choices[0].Message.Content || finished[i] != one.Choices[0].FinishReason {
				t.Errorf("choice %d streamed %q (%q); greedy n=1 wrote %q (%q)", i, texts[i], finished[i], one.Choices[0].Message.Content, one.Choices[0].FinishReason)
			}
		}
		if len(acc.Choices) != 2 || acc.Usage.PromptTokens != one.Usage.PromptTokens || acc.Usage.CompletionTokens != 2*one.Usage.CompletionTokens {
			t.Errorf("accumulated %d choices, usage %+v; want 2 and twice %+v", len(acc.Choices), acc.Usage, one.Usage)
		}
	})

	t.Run("completions stream with logprobs", func(t *testing.T) {
		stream := c.Completions.NewStreaming(ctx, openai.CompletionNewParams{Model: "stories",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")}, MaxTokens: openai.Int(40),
			N: openai.Int(2), BestOf: openai.Int(2), Seed: openai.Int(3), Temperature: openai.Float(1.5), Logprobs: openai.Int(1)})
		texts, tokens := map[int64]string{}, map[int64]string{}
		for stream.Next() {
			for _, c := range stream.Current().Choices {
				texts[c.Index] += c.Text
				tokens[c.Index] += strings.Join(c.Logprobs.Tokens, "")
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if len(texts) != 2 || texts[0] == texts[1] {
			t.Errorf("2 seeded streamed completions: %v", texts)
		}
		for i, text := range texts {
			if tokens[i] != text || text == "" {
				t.Errorf("choice %d: text %q, logprobs tokens spell %q", i, text, tokens[i])
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		for _, tt := range []struct {
			name, param string
			call        func() error
		}{
			{"n beyond parallel", "n", func() error {
				_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: msgs, N: openai.Int(4)})
				return err
			}},
			{"n beyond 16", "n", func() error {
				_, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "stories", Messages: msgs, N: openai.Int(17)})
				return err
			}},
			{"best_of beyond n", "best_of", func() error {
				_, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "stories", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")},
					N: openai.Int(2), BestOf: openai.Int(3)})
				return err
			}},
			{"suffix without FIM tokens", "suffix", func() error {
				_, err := c.Completions.New(ctx, openai.CompletionNewParams{Model: "stories", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")},
					Suffix: openai.String("The end.")})
				return err
			}},
		} {
			var apiErr *openai.Error
			if err := tt.call(); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != tt.param || !strings.Contains(apiErr.Message, tt.param) {
				t.Errorf("%s: %v; want a 400 naming %s", tt.name, err, tt.param)
			}
		}
	})
}

// TestAsyncLogprobsAndN: the async endpoints honour logprobs and n as the
// sync ones do, and fail a result too large to store with
// result_too_large rather than leave it running.
func TestAsyncLogprobsAndN(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"parallel": 2})
	h.startRunner("stories", 2, 256)
	c := h.client()
	sync, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "stories",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Once upon a time")}, MaxTokens: openai.Int(10),
		Temperature: openai.Float(0), Logprobs: openai.Bool(true), TopLogprobs: openai.Int(2)}, option.WithMaxRetries(0))
	if err != nil {
		t.Fatal(err)
	}
	status, _, job := call(t, h.url, adminKey, http.MethodPost, "/v1/async/chat/completions",
		`{"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":10,"temperature":0,"logprobs":true,"top_logprobs":2,"n":2}`)
	if status != http.StatusAccepted {
		t.Fatalf("POST async: %d %v", status, job)
	}
	job = awaitAsync(t, h.url, adminKey, job["id"].(string))
	if job["status"] != "succeeded" {
		t.Fatalf("async job %v", job)
	}
	choices, _ := job["result"].(map[string]any)["choices"].([]any)
	if len(choices) != 2 {
		t.Fatalf("async result has %d choices; want 2: %v", len(choices), job["result"])
	}
	for i, ch := range choices {
		ch := ch.(map[string]any)
		content := ch["message"].(map[string]any)["content"]
		lps, _ := ch["logprobs"].(map[string]any)["content"].([]any)
		if ch["index"] != float64(i) || content != sync.Choices[0].Message.Content || len(lps) != len(sync.Choices[0].Logprobs.Content) {
			t.Errorf("choice %d: %v; the sync request wrote %q with %d logprobs", i, ch, sync.Choices[0].Message.Content, len(sync.Choices[0].Logprobs.Content))
			continue
		}
		for j, lp := range lps {
			lp := lp.(map[string]any)
			want := sync.Choices[0].Logprobs.Content[j]
			if lp["token"] != want.Token || len(lp["top_logprobs"].([]any)) != 2 {
				t.Errorf("choice %d token %d: %v; sync %+v", i, j, lp, want)
			}
		}
	}
}

// TestAsyncResultTooLarge: on a NATS server with a 16 KiB max_payload, an
// async job whose logprobs outgrow it fails with result_too_large naming
// logprobs (the runner cannot publish it), rather than run until swept;
// the same job without logprobs succeeds.
func TestAsyncResultTooLarge(t *testing.T) {
	h := newHarness(t)
	ns := testenv.StartNATS(t, &server.Options{MaxPayload: 16 << 10})
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	url, _ := h.startActivator(activator.Config{NATS: nc})
	if code, _, body := call(t, url, adminKey, http.MethodPut, "/v1/deployments/small", `{"artifact":"`+h.art.SHA256+`","parallel":1}`); code != 200 {
		t.Fatalf("deploy: %d %v", code, body)
	}
	r, err := runner.New(runner.Config{ID: wire.NewID(4), Deployment: "small", DeploymentID: h.depID("small"),
		Artifact: runner.Artifact{SHA256: h.art.SHA256, ObjectKey: h.art.ObjectKey, Size: h.art.Size},
		Cache:    &runner.Cache{Dir: t.TempDir(), Blobs: h.blobs}, Engine: runner.EngineConfig{Parallel: 1, Context: 256}}, nc, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx, nil); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	submit := func(extra string) map[string]any {
		t.Helper()
		status, _, job := call(t, url, adminKey, http.MethodPost, "/v1/async/completions",
			`{"model":"small","prompt":"Once upon a time","max_tokens":200,"temperature":0`+extra+`}`)
		if status != http.StatusAccepted {
			t.Fatalf("POST async: %d %v", status, job)
		}
		return awaitAsync(t, url, adminKey, job["id"].(string))
	}
	job := submit(`,"logprobs":5`)
	e, _ := job["error"].(map[string]any)
	if job["status"] != "failed" || e["code"] != "result_too_large" || e["param"] != "logprobs" {
		t.Errorf("a result over max_payload: %v; want failed with result_too_large naming logprobs", job)
	}
	if job := submit(""); job["status"] != "succeeded" {
		t.Errorf("the same job without logprobs: %v", job)
	}
}
