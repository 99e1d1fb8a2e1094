package runner

// The llama package of github.com/ollama/ollama v0.11.4 does not say which
// tokens are BOS and EOS; chat templates write them as bos_token and
// eos_token. These declarations reach llama.cpp's accessors (in the binary
// already), as llamaext.go does for the KV functions.

/*
#include <stdint.h>
struct llama_vocab;
int32_t llama_vocab_bos(const struct llama_vocab * vocab);
int32_t llama_vocab_eos(const struct llama_vocab * vocab);
*/
import "C"

import (
	"unsafe"

	"github.com/ollama/ollama/llama"
)

// specialTokens are the texts of a vocabulary's BOS and EOS tokens, empty
// where it has none.
func specialTokens(m *llama.Model) (bos, eos string) {
	v := (*C.struct_llama_vocab)(unsafe.Pointer(m.Vocab()))
	piece := func(id C.int32_t) string {
		if id < 0 {
			return ""
		}
		return m.TokenToPiece(int(id))
	}
	return piece(C.llama_vocab_bos(v)), piece(C.llama_vocab_eos(v))
}
