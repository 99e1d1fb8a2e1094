package runner

import (
	"sync"

	"github.com/ollama/ollama/llama"
)

// llama.cpp computations must not run at the same time in one process,
// whatever contexts or models they use.
//
// The CPU matrix product of float tensors (llamafile's tinyBLAS::gemm in
// ollama v0.11.4's ggml, ggml-cpu/llamafile/sgemm.cpp) hands out its work
// chunks from a function-local `static std::atomic<int64_t>
// current_chunk`: one counter for the whole process, not one per
// computation. Two contexts multiplying at once (two decode loops, or the
// embedder beside them) each reset it and take chunks from it, so each
// skips the chunks the other took and leaves those rows of its result
// unwritten. It is used for every product with two or more columns:
// prompts, steps of several sequences, and the attention over the F16 KV
// cache of any model. Measured on stories260K with two contexts each
// decoding the same 20-token prompt at once: greedy text differed from a
// lone run in 6 of 20 tries; TestEngineContextsDecodeTogether failed in 9
// of 10 runs and TestEngineNSharesPrompt (n=3 over two contexts) in 2 of
// 10. With every decode behind this lock: 0 failures in 50 runs of the
// first and 50 of the second, and in 20 more of each at -cpu 1,2,4.
// llama.cpp's maintainers traced the same race (ggml-org/llama.cpp#14035).
// The race detector does not see it: the counter is C++.
//
// The lock is process-wide because the counter is: a lock per engine
// would leave two engines in one process (tests, the embedder) racing.
// Several contexts still pay on small models, where each attends only
// over its own sequences' cells: 8 contexts ~3,800–4,000 tokens/s against
// 1,700–2,700 for one at 16 requests (BenchmarkEngineContexts,
// performance.md). It also serialises contexts whose layers are all on a
// GPU, which do not run tinyBLAS; what that costs is not measured yet.
var computeMu sync.Mutex

// decode runs llama_decode on lctx with no other llama.cpp computation in
// the process running at the same time (see computeMu).
func decode(lctx *llama.Context, batch *llama.Batch) error {
	computeMu.Lock()
	defer computeMu.Unlock()
	return lctx.Decode(batch)
}
