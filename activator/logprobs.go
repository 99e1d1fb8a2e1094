package activator

import (
	"encoding/json"

	"github.com/infer-run/infer/internal/wire"
)

// The logprobs objects of OpenAI's responses, from the runner's tokens
// (wire.TokenLogprob). Chat has one entry per content token with its
// bytes; completions have the legacy shape of parallel arrays. A token's
// text is its bytes as a string, invalid UTF-8 (part of a character)
// written as U+FFFD, which is why chat also gives the bytes.

type chatTokenLogprob struct {
	Token       string             `json:"token"`
	Logprob     float32            `json:"logprob"`
	Bytes       []int              `json:"bytes"`
	TopLogprobs []chatTokenLogprob `json:"top_logprobs"`
}

type chatLogprobs struct {
	Content []chatTokenLogprob `json:"content"`
	Refusal *string            `json:"refusal"`
}

func byteList(b []byte) []int {
	out := make([]int, len(b))
	for i, c := range b {
		out[i] = int(c)
	}
	return out
}

func chatEntry(lp wire.TokenLogprob, top bool) chatTokenLogprob {
	e := chatTokenLogprob{Token: string(lp.Token), Logprob: lp.Logprob, Bytes: byteList(lp.Token)}
	if top {
		e.TopLogprobs = make([]chatTokenLogprob, len(lp.Top))
		for i, a := range lp.Top {
			e.TopLogprobs[i] = chatEntry(a, false)
			e.TopLogprobs[i].TopLogprobs = nil
		}
	}
	return e
}

// chatLogprobsObject is a chat choice's logprobs.
func chatLogprobsObject(lps []wire.TokenLogprob) chatLogprobs {
	out := chatLogprobs{Content: make([]chatTokenLogprob, len(lps))}
	for i, lp := range lps {
		out.Content[i] = chatEntry(lp, true)
		if out.Content[i].TopLogprobs == nil {
			out.Content[i].TopLogprobs = []chatTokenLogprob{}
		}
	}
	return out
}

// legacyLogprobs is a completion choice's logprobs. TextOffset is each
// token's byte offset in the choice's text.
type legacyLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float32            `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// legacyLogprobsObject renders lps whose first token starts at byte
// offset of the text; it returns the offset after the last.
func legacyLogprobsObject(lps []wire.TokenLogprob, offset int) (legacyLogprobs, int) {
	out := legacyLogprobs{
		Tokens:        make([]string, len(lps)),
		TokenLogprobs: make([]float32, len(lps)),
		TopLogprobs:   make([]map[string]float32, len(lps)),
		TextOffset:    make([]int, len(lps)),
	}
	for i, lp := range lps {
		out.Tokens[i] = string(lp.Token)
		out.TokenLogprobs[i] = lp.Logprob
		out.TextOffset[i] = offset
		offset += len(lp.Token)
		top := make(map[string]float32, len(lp.Top))
		for _, a := range lp.Top {
			if _, dup := top[string(a.Token)]; !dup { // the likelier first
				top[string(a.Token)] = a.Logprob
			}
		}
		out.TopLogprobs[i] = top
	}
	return out, offset
}

// logprobsJSON is the logprobs object of one stream chunk.
func logprobsJSON(kind wire.Kind, lps []wire.TokenLogprob, offset *int) []byte {
	var v any
	if kind == wire.KindCompletion {
		v, *offset = legacyLogprobsObject(lps, *offset)
	} else {
		v = chatLogprobsObject(lps)
	}
	b, _ := json.Marshal(v)
	return b
}
