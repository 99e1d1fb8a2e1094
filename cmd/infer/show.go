package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// defaultRequestContext is the context a deployment without context_length
// gets: the model's trained length, at most this (runner.LoadEngine).
const defaultRequestContext = 4096

func showCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a deployment: its model (architecture, parameters, quantisation, context) and settings",
		Args:  cobra.ExactArgs(1),
		Example: `  infer show stories
  infer show stories --json | jq .model`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var raw json.RawMessage
			if err := c.json(cmd.Context(), http.MethodGet, "/v1/deployments/"+url.PathEscape(args[0]), nil, &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(raw)
			}
			var d struct {
				deploymentInfo
				ContextLength int     `json:"context_length"`
				QueueTimeout  float64 `json:"queue_timeout"`
				QueueLimit    int     `json:"queue_limit"`
				ChatTemplate  string  `json:"chat_template"`
				Prices        struct {
					Prompt     float64 `json:"prompt_per_mtok"`
					Completion float64 `json:"completion_per_mtok"`
					Runner     float64 `json:"runner_second"`
				} `json:"prices"`
				Resources struct {
					CPU          string            `json:"cpu"`
					Memory       string            `json:"memory"`
					GPUs         int               `json:"gpus"`
					NodeSelector map[string]string `json:"node_selector"`
				} `json:"resources"`
				Model *struct {
					Architecture   string `json:"architecture"`
					ParameterCount int64  `json:"parameter_count"`
					Quantization   string `json:"quantization"`
					Trained        int    `json:"trained_context_length"`
					Size           int64  `json:"size"`
					Pooling        string `json:"pooling"`
				} `json:"model"`
				EmbeddingOnly bool `json:"embedding_only"`
			}
			if err := json.Unmarshal(raw, &d); err != nil {
				return fmt.Errorf("reading the deployment: %w", err)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			row := func(k, format string, a ...any) { fmt.Fprintf(tw, "%s\t"+format+"\n", append([]any{k}, a...)...) }
			row("name", "%s", d.Name)
			row("artifact", "%s", d.ArtifactSHA256)
			trained := 0
			if m := d.Model; m != nil {
				trained = m.Trained
				row("architecture", "%s", m.Architecture)
				row("parameters", "%s", humanCount(m.ParameterCount))
				row("quantisation", "%s", m.Quantization)
				row("size", "%s", humanBytes(m.Size))
			}
			row("context", "%s", contextLine(d.ContextLength, trained))
			if d.EmbeddingOnly {
				pooling := "the architecture's"
				if d.Model != nil && d.Model.Pooling != "" {
					pooling = d.Model.Pooling
				}
				row("serves", "embeddings only (%s pooling): /v1/embeddings", pooling)
			} else {
				template := d.ChatTemplate
				if template == "" {
					template = "detected from the weights"
				}
				row("chat template", "%s", template)
			}
			row("runners", "%d–%d, %d requests each at once", d.MinRunners, d.MaxRunners, d.Parallel)
			row("idle timeout", "%s", seconds(d.IdleTimeout))
			row("queue", "at most %d requests, waiting at most %s", d.QueueLimit, seconds(d.QueueTimeout))
			row("prices", "$%g per 1M prompt tokens, $%g per 1M completion tokens, $%g per runner-second", d.Prices.Prompt, d.Prices.Completion, d.Prices.Runner)
			if r := d.Resources; r.CPU != "" || r.Memory != "" || r.GPUs > 0 || len(r.NodeSelector) > 0 {
				row("resources", "cpu %s, memory %s, gpus %d, node selector %v", or(r.CPU, "-"), or(r.Memory, "-"), r.GPUs, r.NodeSelector)
			}
			row("now", "%d runners, %d queued, %d in flight", len(d.Runners), d.Queued, d.InFlight)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's answer as JSON")
	return cmd
}

// contextLine says how many tokens a request gets and why.
func contextLine(set, trained int) string {
	switch {
	case set > 0 && trained > 0:
		return fmt.Sprintf("%d tokens per request (trained on %d)", set, trained)
	case set > 0:
		return fmt.Sprintf("%d tokens per request", set)
	case trained > 0:
		return fmt.Sprintf("%d tokens per request (the trained %d, at most %d)", min(trained, defaultRequestContext), trained, defaultRequestContext)
	}
	return fmt.Sprintf("the model's trained length, at most %d", defaultRequestContext)
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// humanCount writes a parameter count as people do: 292.8K, 7.2B.
func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func chatCmd() *cobra.Command {
	var (
		system    string
		maxTokens int
		temp      float64
	)
	cmd := &cobra.Command{
		Use:   "chat NAME",
		Short: "Chat with a deployment in the terminal, streaming its answers",
		Long: `chat reads a message per line from standard input, sends the conversation so
far to the deployment's /v1/chat/completions with "stream": true, and prints
the answer as it arrives. An empty line is skipped; /bye or end of input
(Ctrl-D) ends the chat. While the deployment cold-starts, what it waits for
is shown on a terminal.`,
		Example: `  infer chat stories
  echo "Tell me a story" | infer chat stories --max-tokens 64`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			in := bufio.NewScanner(os.Stdin)
			in.Buffer(make([]byte, 1<<16), 1<<20)
			tty := term.IsTerminal(int(os.Stdin.Fd()))
			var history []map[string]string
			if system != "" {
				history = append(history, map[string]string{"role": "system", "content": system})
			}
			for {
				if tty {
					fmt.Fprint(os.Stderr, ">>> ")
				}
				if !in.Scan() {
					if tty {
						fmt.Fprintln(os.Stderr)
					}
					return in.Err()
				}
				line := strings.TrimSpace(in.Text())
				if line == "" {
					continue
				}
				if line == "/bye" {
					return nil
				}
				history = append(history, map[string]string{"role": "user", "content": line})
				body := map[string]any{"model": args[0], "messages": history, "stream": true}
				if maxTokens > 0 {
					body["max_tokens"] = maxTokens
				}
				if cmd.Flags().Changed("temperature") {
					body["temperature"] = temp
				}
				answer, err := c.streamChat(cmd.Context(), body, os.Stdout, tty)
				fmt.Println()
				if err != nil {
					return err
				}
				history = append(history, map[string]string{"role": "assistant", "content": answer})
			}
		},
	}
	cmd.Flags().StringVar(&system, "system", "", "a system message that starts the conversation")
	cmd.Flags().IntVar(&maxTokens, "max-tokens", 0, "most tokens per answer (0: until the model stops or the context is full)")
	cmd.Flags().Float64Var(&temp, "temperature", 0.8, "sampling temperature (sent only when given: the server's default otherwise)")
	return cmd
}

// streamChat sends a streaming chat request and writes the answer's text
// to out as it arrives, returning the whole answer. On a terminal the SSE
// comments a cold start sends (": starting runner") are shown on stderr.
func (c *client) streamChat(ctx context.Context, body map[string]any, out io.Writer, tty bool) (string, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return "", err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/chat/completions", strings.NewReader(string(b)))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("calling %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		e := &apiErr{Status: resp.StatusCode}
		json.Unmarshal(data, &e.Body)
		return "", e
	}
	var answer strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<16), 1<<22)
	errorEvent := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ": "):
			if tty {
				fmt.Fprintf(os.Stderr, "(%s)\r", strings.TrimPrefix(line, ": "))
			}
		case line == "event: error":
			errorEvent = true
		case line == "data: [DONE]":
			return answer.String(), nil
		case strings.HasPrefix(line, "data: "):
			data := strings.TrimPrefix(line, "data: ")
			if errorEvent {
				e := &apiErr{Status: http.StatusInternalServerError}
				json.Unmarshal([]byte(data), &e.Body)
				return answer.String(), e
			}
			var chunk struct {
				Choices []struct {
					Delta struct {
						Content string `json:"content"`
					} `json:"delta"`
				} `json:"choices"`
			}
			if json.Unmarshal([]byte(data), &chunk) == nil && len(chunk.Choices) > 0 {
				fmt.Fprint(out, chunk.Choices[0].Delta.Content)
				answer.WriteString(chunk.Choices[0].Delta.Content)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return answer.String(), fmt.Errorf("reading the answer: %w", err)
	}
	return answer.String(), errors.New("the answer ended without [DONE]")
}
