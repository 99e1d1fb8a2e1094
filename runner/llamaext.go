package runner

// The llama package of github.com/ollama/ollama v0.11.4 wraps no way to
// free a context or to move a sequence's KV cells between contexts, which
// growing a KV pool needs (kvpool.go). The C functions are in the binary
// already (that package compiles llama.cpp); these declarations reach them
// without its headers.

/*
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
struct llama_context;
size_t   llama_state_seq_get_size(struct llama_context * ctx, int32_t seq_id);
size_t   llama_state_seq_get_data(struct llama_context * ctx, uint8_t * dst, size_t size, int32_t seq_id);
size_t   llama_state_seq_set_data(struct llama_context * ctx, const uint8_t * src, size_t size, int32_t dest_seq_id);
uint32_t llama_n_ctx(const struct llama_context * ctx);
void     llama_free(struct llama_context * ctx);
*/
import "C"

import (
	"errors"
	"unsafe"

	"github.com/ollama/ollama/llama"
)

// cContext is the C context behind a *llama.Context: its first field in
// v0.11.4 (llama.go: type Context struct { c *C.struct_llama_context; ... }).
// TestContextLayout checks it against llama_n_ctx, so a version whose
// layout differs fails a test rather than a runner.
func cContext(c *llama.Context) *C.struct_llama_context {
	return *(**C.struct_llama_context)(unsafe.Pointer(c))
}

// contextCells is the KV cells a context was created with.
func contextCells(c *llama.Context) int { return int(C.llama_n_ctx(cContext(c))) }

// freeContext releases a context and its KV cache; c must not be used
// again.
func freeContext(c *llama.Context) { C.llama_free(cContext(c)) }

// copySequence moves what seq holds in from's KV cache into seq of to,
// through buf (grown as needed, returned for reuse).
func copySequence(from, to *llama.Context, seq int, buf []byte) ([]byte, error) {
	n := int(C.llama_state_seq_get_size(cContext(from), C.int32_t(seq)))
	if n == 0 {
		return buf, errors.New("reading a sequence's KV state: size 0")
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	p := (*C.uint8_t)(unsafe.Pointer(&buf[0]))
	if got := int(C.llama_state_seq_get_data(cContext(from), p, C.size_t(n), C.int32_t(seq))); got != n {
		return buf, errors.New("reading a sequence's KV state: short copy")
	}
	if C.llama_state_seq_set_data(cContext(to), p, C.size_t(n), C.int32_t(seq)) == 0 {
		return buf, errors.New("writing a sequence's KV state: no room in the new context")
	}
	return buf, nil
}
