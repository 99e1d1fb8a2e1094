package runner

// Fill-in-the-middle (the completions endpoint's suffix) needs the
// vocabulary's FIM tokens, which llama.cpp reads from the GGUF
// (tokenizer.ggml.fim_pre_token_id and the like) or finds by their text
// (<|fim_prefix|>, <fim-prefix>, <PRE>, ...); the llama package of
// ollama v0.11.4 does not wrap them.

/*
#include <stdint.h>
struct llama_model;
struct llama_vocab;
const struct llama_vocab * llama_model_get_vocab(const struct llama_model * model);
int32_t llama_vocab_n_tokens(const struct llama_vocab * vocab);
int32_t llama_vocab_fim_pre(const struct llama_vocab * vocab);
int32_t llama_vocab_fim_suf(const struct llama_vocab * vocab);
int32_t llama_vocab_fim_mid(const struct llama_vocab * vocab);
*/
import "C"

import (
	"errors"
	"unsafe"

	"github.com/ollama/ollama/llama"
)

// ErrNoFIM is returned by Submit for a suffix on a model whose vocabulary
// has no fill-in-the-middle tokens.
var ErrNoFIM = errors.New("this model has no fill-in-the-middle tokens (its vocabulary lacks a FIM prefix, suffix or middle token), so suffix is not supported")

// cVocab is the C vocabulary of a *llama.Model, whose first field in
// v0.11.4 is its C model (llama.go: type Model struct { c
// *C.struct_llama_model }). TestFIMTokens checks the layout against the
// vocabulary's size.
func cVocab(m *llama.Model) *C.struct_llama_vocab {
	return C.llama_model_get_vocab(*(**C.struct_llama_model)(unsafe.Pointer(m)))
}

// vocabSize is the vocabulary's size as the C vocabulary tells it.
func vocabSize(m *llama.Model) int { return int(C.llama_vocab_n_tokens(cVocab(m))) }

// fimTokens are the model's FIM prefix, suffix and middle tokens; ok is
// false unless it has all three.
func fimTokens(m *llama.Model) (pre, suf, mid int, ok bool) {
	v := cVocab(m)
	pre, suf, mid = int(C.llama_vocab_fim_pre(v)), int(C.llama_vocab_fim_suf(v)), int(C.llama_vocab_fim_mid(v))
	return pre, suf, mid, pre >= 0 && suf >= 0 && mid >= 0
}

// TokenizeFIM lays out a fill-in-the-middle prompt as llama.cpp's server
// does for its infill (prefix-suffix-middle order): BOS where the model
// wants it, FIM prefix, the prefix, FIM suffix, the suffix, FIM middle;
// the model then writes the middle. Prefix and suffix are code, data: a
// special token they spell stays text.
func (e *Engine) TokenizeFIM(prefix, suffix string) ([]int, error) {
	pre, suf, mid, ok := fimTokens(e.model)
	if !ok {
		return nil, ErrNoFIM
	}
	var tokens []int
	if e.model.AddBOSToken() {
		bos, err := e.model.Tokenize("", true, false)
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, bos[:min(1, len(bos))]...)
	}
	p, err := e.model.Tokenize(prefix, false, false)
	if err != nil {
		return nil, err
	}
	s, err := e.model.Tokenize(suffix, false, false)
	if err != nil {
		return nil, err
	}
	tokens = append(tokens, pre)
	tokens = append(tokens, p...)
	tokens = append(tokens, suf)
	tokens = append(tokens, s...)
	return append(tokens, mid), nil
}
