package runner

// What the embeddings context needs of llama.cpp beyond the v0.11.4 llama
// package's wrappers: that package's NewContextParams sets no physical
// batch size (n_ubatch stays at llama.cpp's default of 512), and pooled
// embeddings need a whole input in one physical batch (llama.cpp pools
// each ubatch on its own; a non-causal model refuses a batch larger than
// n_ubatch outright). These reach the C functions already in the binary,
// without llama.h, as llamaext.go does.

/*
#include <stdint.h>
struct llama_context;
uint32_t llama_n_ubatch(const struct llama_context * ctx);
int      llama_pooling_type(const struct llama_context * ctx);
*/
import "C"

import (
	"unsafe"

	"github.com/ollama/ollama/llama"
)

// setUbatch sets the physical batch size of context params. ContextParams
// holds only the C struct llama_context_params, whose first fields are
// uint32 n_ctx, n_batch, n_ubatch (llama.h of v0.11.4): n_ubatch is at
// byte 8. newEmbedContext checks the created context's n_ubatch against
// it, so a layout that differs fails loudly rather than silently.
func setUbatch(p *llama.ContextParams, n int) {
	*(*uint32)(unsafe.Add(unsafe.Pointer(p), 8)) = uint32(n)
}

// setPooling sets the pooling type of context params: pooling_type is the
// eighth 4-byte field (after n_ctx, n_batch, n_ubatch, n_seq_max,
// n_threads, n_threads_batch, rope_scaling_type), at byte 28. This
// llama.cpp reads <arch>.pooling_type only for its encoder architectures,
// so a llama that declares mean pooling would otherwise pool nothing;
// newEmbedContext checks the context's pooling type against it.
func setPooling(p *llama.ContextParams, pooling int) {
	*(*int32)(unsafe.Add(unsafe.Pointer(p), 28)) = int32(pooling)
}

// contextUbatch is a context's physical batch size.
func contextUbatch(c *llama.Context) int { return int(C.llama_n_ubatch(cContext(c))) }

// contextPooling is a context's pooling type (llama_pooling_type: 0 none,
// 1 mean, 2 cls, 3 last, 4 rank).
func contextPooling(c *llama.Context) int { return int(C.llama_pooling_type(cContext(c))) }
