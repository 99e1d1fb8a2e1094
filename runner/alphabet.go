package runner

import (
	"unicode/utf8"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/jsonschema"
)

// modelAlphabet is what the model can write, one token per character: the
// characters that are a token of their own, and every character when the
// vocabulary has a token for each byte of multi-byte UTF-8 (byte-level BPE
// and SentencePiece with byte fallback do). Grammars are narrowed to it, so
// the sampler is never asked for a character no token writes (llama.cpp
// throws then, killing the runner). Reading the vocabulary takes one cgo
// call per token, so it is done once, at the first schema.
func modelAlphabet(m *llama.Model) *jsonschema.Alphabet {
	var chars []rune
	var bytes [256]bool
	for tok := range m.NumVocab() {
		p := m.TokenToPiece(tok)
		if len(p) == 1 {
			bytes[p[0]] = true
		}
		if r, n := utf8.DecodeRuneInString(p); n == len(p) && r != utf8.RuneError {
			chars = append(chars, r)
		}
	}
	// Lead bytes of 2- to 4-byte sequences and continuation bytes.
	every := true
	for b := 0x80; b <= 0xf4; b++ {
		if b != 0xc0 && b != 0xc1 && !bytes[b] {
			every = false
			break
		}
	}
	return jsonschema.NewAlphabet(chars, every)
}
