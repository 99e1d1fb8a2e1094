package activator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// The request fields of /v1/chat/completions, /v1/completions and
// /v1/embeddings, each with
// what infer does with it. This table is the one definition: decodeRequest
// refuses by it, and docs/api.md's compatibility table is rendered from it
// (TestCompatTableMatchesDocs fails when the two differ). A field infer does
// not honour is refused with a 400 naming it, never dropped: a client that
// asked for n=3 completions or for audio would otherwise take one plain
// answer for what it asked for. Fields not in the table are refused too;
// the official SDKs send only the fields their caller set
// (TestSDKSendsOnlyKnownFields checks openai-go v3), so an unknown field
// is a client's mistake or a feature infer lacks.

// support is how far infer honours a field.
type support string

const (
	supYes     support = "yes"
	supPartial support = "partial" // some values; the others are refused
	supNo      support = "no"      // refused unless null or inert
)

// endpoints says which endpoints take a field.
type endpoints uint8

const (
	forChat endpoints = 1 << iota
	forCompletion
	forAsync // only the async endpoints (POST /v1/async/...)
	forEmbedding
	forBoth = forChat | forCompletion
)

// paramRule is one row of the table.
type paramRule struct {
	name    string
	on      endpoints
	support support
	// inert reports whether a value of a partly or not supported field
	// asks for nothing infer lacks (n: 1, echo: false), so it is accepted.
	// nil: any value but null is refused. Unused for supYes.
	inert func(v json.RawMessage) bool
	notes string
}

// isJSON returns an inert test accepting the given JSON spellings.
func isJSON(values ...string) func(json.RawMessage) bool {
	return func(v json.RawMessage) bool {
		return slices.Contains(values, string(bytes.TrimSpace(v)))
	}
}

// emptyObject accepts {} (and null).
func emptyObject(v json.RawMessage) bool {
	var m map[string]json.RawMessage
	return json.Unmarshal(v, &m) == nil && len(m) == 0
}

// textOnly accepts modalities ["text"].
func textOnly(v json.RawMessage) bool {
	var m []string
	return json.Unmarshal(v, &m) == nil && slices.Equal(m, []string{"text"})
}

// compatTable lists every field. Fields that tool calling owns (tools,
// tool_choice, parallel_tool_calls) are rows of the tools work, which
// renders and parses them; they are listed so that this table stays whole.
var compatTable = []paramRule{
	{name: "model", on: forBoth | forEmbedding, support: supYes, notes: "the deployment's name"},
	{name: "messages", on: forChat, support: supYes, notes: "roles `system`, `developer` (as `system`), `user`, `assistant`, `tool`; content a string or text parts (other parts are refused)"},
	{name: "prompt", on: forCompletion, support: supPartial, notes: "a string or an array of one string; batched prompts and token arrays are refused"},
	{name: "max_tokens", on: forBoth, support: supYes},
	{name: "max_completion_tokens", on: forBoth, support: supYes, notes: "wins over `max_tokens`; OpenAI's completions lack it, infer takes it on both"},
	{name: "temperature", on: forBoth, support: supYes, notes: "0 to 2"},
	{name: "top_p", on: forBoth, support: supYes},
	{name: "stop", on: forBoth, support: supYes, notes: "up to 4 strings"},
	{name: "seed", on: forBoth, support: supYes, notes: "any int64; reproduces its output on the same deployment"},
	{name: "stream", on: forBoth, support: supYes, notes: "not on the async endpoints"},
	{name: "stream_options", on: forBoth, support: supPartial, notes: "`include_usage`; `include_obfuscation: true` is refused (no obfuscation padding is sent)"},
	{name: "response_format", on: forChat | forCompletion, support: supYes, notes: "`text`, `json_object`, `json_schema` (enforced by a grammar; see below)"},
	{name: "presence_penalty", on: forBoth, support: supYes, notes: "-2 to 2, llama.cpp's presence penalty over the last 64 tokens"},
	{name: "frequency_penalty", on: forBoth, support: supYes, notes: "-2 to 2, llama.cpp's frequency penalty over the last 64 tokens"},
	{name: "logit_bias", on: forBoth, support: supYes, notes: "token ID → bias from -100 to 100, added to the logit before sampling; -100 bans a token, 100 forces it"},
	{name: "logprobs", on: forBoth, support: supYes, notes: "chat: `true` gives each content token's `logprob` and `bytes`; completions: an integer 0 to 5, the legacy shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). Async jobs too, as long as their result fits one NATS message (else the job fails with `result_too_large`)"},
	{name: "top_logprobs", on: forChat, support: supYes, notes: "0 to 20, with `logprobs: true`"},
	{name: "n", on: forBoth, support: supYes, notes: "1 to 16, and at most the deployment's `parallel`: the completions decode side by side, sharing the prompt's KV cache; `index` 0 to n-1 in bodies and stream chunks; usage counts the prompt once and every completion's tokens; with `seed` each completion has its own seed derived from it"},
	{name: "best_of", on: forCompletion, support: supPartial, notes: "equal to `n` only: ranking more completions than are returned is not supported"},
	{name: "echo", on: forCompletion, support: supYes, notes: "`true` puts the prompt before the completion's text; refused with `logprobs` (prompt tokens have no logprobs)"},
	{name: "suffix", on: forCompletion, support: supPartial, notes: "fill-in-the-middle, on models whose vocabulary has FIM tokens (`tokenizer.ggml.fim_pre_token_id` or tokens such as `<|fim_prefix|>`): the completion is what goes between `prompt` and `suffix`; other models answer 400 naming `suffix`; `\"\"` is no suffix"},
	{name: "user", on: forBoth | forEmbedding, support: supYes, notes: "accepted; not used"},
	{name: "safety_identifier", on: forChat, support: supYes, notes: "accepted; not used"},
	{name: "prompt_cache_key", on: forChat, support: supYes, notes: "accepted; not needed: each runner reuses the longest cached prefix of a prompt by itself"},
	{name: "store", on: forChat, support: supPartial, inert: isJSON("false"), notes: "`false` only: infer keeps no completions"},
	{name: "metadata", on: forChat, support: supNo, inert: emptyObject, notes: "only stored completions carry it"},
	{name: "service_tier", on: forChat, support: supPartial, inert: isJSON(`"auto"`, `"default"`), notes: "`auto` or `default`"},
	{name: "modalities", on: forChat, support: supPartial, inert: textOnly, notes: "`[\"text\"]` only"},
	{name: "audio", on: forChat, support: supNo},
	{name: "prediction", on: forChat, support: supNo, notes: "predicted outputs are not supported"},
	{name: "reasoning_effort", on: forChat, support: supNo},
	{name: "verbosity", on: forChat, support: supNo},
	{name: "web_search_options", on: forChat, support: supNo},
	{name: "prompt_cache_retention", on: forChat, support: supNo},
	{name: "prompt_cache_options", on: forChat, support: supNo},
	{name: "moderation", on: forChat, support: supNo},
	{name: "functions", on: forChat, support: supNo, notes: "deprecated by OpenAI; use `tools`"},
	{name: "function_call", on: forChat, support: supNo, notes: "deprecated by OpenAI; use `tool_choice`"},
	{name: "tools", on: forChat, support: supYes, notes: "tool calling (the tools work)"},
	{name: "tool_choice", on: forChat, support: supYes, notes: "tool calling (the tools work)"},
	{name: "parallel_tool_calls", on: forChat, support: supYes, notes: "tool calling (the tools work)"},
	{name: "input", on: forEmbedding, support: supYes, notes: "a string, an array of strings, an array of token IDs or an array of arrays of token IDs; up to 2048 inputs, none empty, each within the deployment's context (longer is a 400, never cut short)"},
	{name: "encoding_format", on: forEmbedding, support: supYes, notes: "`float` (the default) or `base64` (little-endian float32s, as OpenAI sends them)"},
	{name: "dimensions", on: forEmbedding, support: supYes, notes: "keeps the first `dimensions` values and normalises them again, as OpenAI shortens embeddings; meaningful for models trained for it (Matryoshka), at most the model's embedding size"},
	// infer's own fields.
	{name: "top_k", on: forBoth, support: supYes, notes: "infer extension (as vLLM and llama.cpp): keep the k most likely tokens; 0 keeps all"},
	{name: "min_p", on: forBoth, support: supYes, notes: "infer extension: 0 to 1"},
	{name: "repeat_penalty", on: forBoth, support: supYes, notes: "infer extension (llama.cpp's name): 0 to 10, 1 is none"},
	{name: "repetition_penalty", on: forBoth, support: supYes, notes: "infer extension (vLLM's name for `repeat_penalty`); send one of the two"},
	{name: "webhook", on: forAsync | forBoth, support: supYes, notes: "infer extension, async endpoints only: a URL that receives the finished job"},
}

// compatRule finds a field's rule for an endpoint; nil if the endpoint
// does not take it.
func compatRule(name string, kind wire.Kind, async bool) *paramRule {
	for i := range compatTable {
		r := &compatTable[i]
		if r.name != name {
			continue
		}
		if r.on&forAsync != 0 && !async {
			return nil
		}
		if kind == wire.KindChat && r.on&forChat == 0 || kind == wire.KindCompletion && r.on&forCompletion == 0 ||
			kind == wire.KindEmbedding && r.on&forEmbedding == 0 {
			return nil
		}
		return r
	}
	return nil
}

// checkFields refuses a request with a field infer does not know or does
// not honour with the value sent. Fields are checked in name order, so the
// same body always gets the same error.
func checkFields(body []byte, kind wire.Kind, async bool) *apiError {
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return nil // decodeRequest says what is wrong with it
	}
	for _, name := range slices.Sorted(maps.Keys(fields)) {
		v := fields[name]
		r := compatRule(name, kind, async)
		if r == nil {
			return unsupported(name, "Unrecognized request argument supplied: %s (infer does not know this parameter%s)", name, elsewhere(name, kind, async))
		}
		switch {
		case r.support == supYes, bytes.Equal(bytes.TrimSpace(v), []byte("null")):
			continue
		case r.inert != nil && r.inert(v):
			continue
		case r.support == supPartial && r.inert == nil:
			continue // decodeRequest checks its values
		}
		if r.support == supPartial {
			// Some values are; say which.
			e := unsupported(name, "%s=%s is not supported by infer (%s)", name, clip(v), plain(r.notes))
			e.Code = strp("unsupported_value")
			return e
		}
		msg := fmt.Sprintf("%s is not supported by infer", name)
		if r.notes != "" {
			msg += ": " + plain(r.notes)
		}
		return unsupported(name, "%s", msg)
	}
	if so, ok := fields["stream_options"]; ok {
		var opts map[string]json.RawMessage
		if json.Unmarshal(so, &opts) == nil {
			for _, k := range slices.Sorted(maps.Keys(opts)) {
				switch k {
				case "include_usage":
				case "include_obfuscation":
					if !isJSON("false", "null")(opts[k]) {
						return unsupported("stream_options.include_obfuscation", "stream_options.include_obfuscation is not supported by infer: no obfuscation padding is sent")
					}
				default:
					return unsupported("stream_options."+k, "Unrecognized request argument supplied: stream_options.%s", k)
				}
			}
		}
	}
	return nil
}

// elsewhere says where a field infer knows is taken, for a request that
// sent it to another endpoint.
func elsewhere(name string, kind wire.Kind, async bool) string {
	for _, r := range compatTable {
		if r.name != name {
			continue
		}
		switch {
		case r.on&forAsync != 0 && !async:
			return "; it is taken by the async endpoints only"
		case kind == wire.KindEmbedding:
			return "; it is taken by /v1/chat/completions or /v1/completions, not /v1/embeddings"
		case r.on&(forChat|forCompletion) == 0:
			return "; it is taken by /v1/embeddings"
		case kind == wire.KindChat:
			return "; it is taken by /v1/completions, not /v1/chat/completions"
		default:
			return "; it is taken by /v1/chat/completions, not /v1/completions"
		}
	}
	return ""
}

func unsupported(param, format string, args ...any) *apiError {
	e := errInvalid(param, format, args...)
	e.Code = strp("unsupported_parameter")
	return e
}

// clip is a JSON value as an error message quotes it: whole up to 40
// bytes.
func clip(v json.RawMessage) string {
	s := string(bytes.TrimSpace(v))
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return strings.ToValidUTF8(s, "")
}

// plain is a note without markdown's backquotes, for an error message.
func plain(s string) string { return strings.ReplaceAll(s, "`", "") }

// compatMarkdown renders the table for docs/api.md.
func compatMarkdown() string {
	var sb strings.Builder
	sb.WriteString("| Parameter | Chat | Completions | Embeddings | Supported | Notes |\n")
	sb.WriteString("|-----------|------|-------------|------------|-----------|-------|\n")
	mark := func(ok bool) string {
		if ok {
			return "✓"
		}
		return ""
	}
	for _, r := range compatTable {
		fmt.Fprintf(&sb, "| `%s` | %s | %s | %s | %s | %s |\n", r.name, mark(r.on&forChat != 0), mark(r.on&forCompletion != 0), mark(r.on&forEmbedding != 0), r.support, r.notes)
	}
	return sb.String()
}
