package runner

import (
	"fmt"
	"strconv"
	"strings"
)

// The memory a deployment needs, estimated from its GGUF before loading, so
// that a runner placed on a GPU too small for it says so at once instead of
// failing inside llama.cpp halfway through an upload (a CUDA
// out-of-memory aborts the process with no reason a client could read).
// Everything here is a pure function of the model's shape and the
// deployment's settings; memshape.go reads the shape from a file.

// ModelShape is what the estimate needs from a GGUF.
type ModelShape struct {
	Layers    int // repeating blocks (blk.N)
	Embedding int
	Heads     int
	KVHeads   int
	HeadDimK  int
	HeadDimV  int
	Vocab     int
	// LayerBytes are each block's weights, in file order; InputBytes the
	// token embeddings (llama.cpp keeps them on the CPU); OutputBytes the
	// output norm and head, which go to the GPU with the last layer
	// offloaded (n_gpu_layers > Layers).
	LayerBytes  []int64
	InputBytes  int64
	OutputBytes int64
	// TiedOutput: the model has no output head of its own and uses the
	// token embeddings, which llama.cpp then loads a second time on the
	// output layer's device.
	TiedOutput bool
}

// WeightBytes is every tensor's size.
func (s ModelShape) WeightBytes() int64 {
	n := s.InputBytes + s.OutputBytes
	for _, b := range s.LayerBytes {
		n += b
	}
	return n
}

// MemNeeds are a deployment's settings that size its memory.
type MemNeeds struct {
	Parallel int // sequences
	Context  int // tokens per sequence
	// Contexts is the llama contexts the sequences are spread over; each
	// loads its own model instance (engine.go), so on a GPU each uploads
	// the offloaded weights again.
	Contexts int
	// InitialCells is the KV cells each context starts with (kvpool.go);
	// 0 or negative: the whole pool up front, as on a GPU.
	InitialCells int
	Batch        int // tokens per decode step (llama.cpp's n_batch/n_ubatch)
	// KVElemBytes is the KV cache's bytes per element: 2 for F16, the
	// llama package's default.
	KVElemBytes int
}

// MemEstimate is a deployment's memory, per part, for the whole model.
type MemEstimate struct {
	Weights int64
	// KVInitial is the KV cache the contexts start with, KVFull the most
	// it grows to: Parallel × Context cells.
	KVInitial int64
	KVFull    int64
	// Compute is llama.cpp's compute buffers (the graph's activations),
	// for every context.
	Compute int64
}

// Total is what the deployment needs once its KV pool is full.
func (e MemEstimate) Total() int64 { return e.Weights + e.KVFull + e.Compute }

// kvBytesPerCell is one KV cell over n layers: per layer a K and a V row of
// n_kv_heads × head_dim elements.
func kvBytesPerCell(s ModelShape, layers, elem int) int64 {
	return int64(layers) * int64(s.KVHeads) * int64(s.HeadDimK+s.HeadDimV) * int64(elem)
}

// computeBytes estimates one context's compute buffer for a batch of
// `batch` tokens over `cells` KV cells: the larger of the attention step
// (the batch's K·Q scores over every cell, for every head, in F32, beside
// the embeddings it works on) and the output step (the batch's logits over
// the vocabulary). It is ollama's formula for llama-like models
// (fs/ggml GraphSize, full offload). Measured against llama.cpp's own
// "compute buffer size" (CPU, one context, whole pool up front):
// llama3-tiny.gguf (vocab 128256, the logits dominate) at 4 × 1024
// reserved 250.75 MiB, this says 250.6; at 2 × 256, 125.38 and 125.3;
// stories260K.gguf (attention dominates) at 4 × 1024, 72.51 and 72.5,
// at 2 × 256, 4.75 and 4.75. The weights (15.80 and 1.12 MiB mapped) and
// KV (1.00, 0.12, 2.50, 0.31 MiB) matched to the printed digit.
func computeBytes(s ModelShape, batch, cells int) int64 {
	b, e := int64(batch), int64(s.Embedding)
	attn := 4 * b * (1 + 4*e + int64(cells)*(1+int64(s.Heads)))
	out := 4 * b * (e + int64(s.Vocab))
	return max(attn, out)
}

func (n MemNeeds) normal() MemNeeds {
	n.Parallel = max(1, n.Parallel)
	n.Context = max(1, n.Context)
	n.Contexts = max(1, min(n.Contexts, n.Parallel))
	if n.Batch <= 0 {
		n.Batch = min(512, n.Context)
	}
	if n.KVElemBytes <= 0 {
		n.KVElemBytes = 2
	}
	return n
}

// cellsPerContext is the most KV cells one context holds: the share of
// sequences the first context takes, which is all of them until the rest
// are up (engine.go).
func (n MemNeeds) cellsPerContext() int {
	return n.Context * n.Parallel
}

// EstimateMemory is what a deployment of a model of this shape needs.
func EstimateMemory(s ModelShape, n MemNeeds) MemEstimate {
	n = n.normal()
	full := int64(n.Parallel) * int64(n.Context)
	initial := full
	if n.InitialCells > 0 {
		initial = min(full, int64(n.InitialCells)*int64(n.Contexts))
	}
	perCell := kvBytesPerCell(s, s.Layers, n.KVElemBytes)
	return MemEstimate{
		Weights:   s.WeightBytes() * int64(n.Contexts),
		KVInitial: initial * perCell,
		KVFull:    full * perCell,
		Compute:   computeBytes(s, n.Batch, n.cellsPerContext()) * int64(n.Contexts),
	}
}

// GPUBytes is the GPU memory a deployment needs with `layers` of the model
// offloaded, counted as llama.cpp's n_gpu_layers does: the last `layers`
// blocks, and the output head too once layers > Layers. The KV cells of an
// offloaded block live on the GPU, the whole pool up front (engine.go
// allocates it there at load); the compute buffers go where the layers
// are once any is.
func GPUBytes(s ModelShape, n MemNeeds, layers int) int64 {
	n = n.normal()
	layers = max(0, min(layers, s.Layers+1))
	if layers == 0 {
		return 0
	}
	blocks := min(layers, s.Layers)
	var w int64
	for _, b := range s.LayerBytes[len(s.LayerBytes)-min(blocks, len(s.LayerBytes)):] {
		w += b
	}
	if layers > s.Layers {
		w += s.OutputBytes
		if s.TiedOutput {
			w += s.InputBytes
		}
	}
	kv := int64(n.Parallel) * int64(n.Context) * kvBytesPerCell(s, blocks, n.KVElemBytes)
	return w*int64(n.Contexts) + kv + computeBytes(s, n.Batch, n.cellsPerContext())*int64(n.Contexts)
}

// GPUReserve is GPU memory left to the CUDA context, cuBLAS's workspace
// and fragmentation, never planned for layers. Not measured here (no GPU);
// it is ollama's figure for CUDA (discover: 457 MiB) rounded up.
const GPUReserve = 512 << 20

// AutoGPULayers is --gpu-layers' default: every layer that fits.
const AutoGPULayers = -1

// FitError is a deployment that cannot run on the GPUs it was given.
type FitError struct {
	Need, Free int64 // bytes on the GPUs
	Layers     int   // the layers it would offload
}

func (e *FitError) Error() string {
	return fmt.Sprintf("the model does not fit the GPU: offloading %d layers needs %s of GPU memory (weights, KV cache for parallel × context, compute buffers, %s reserve), %s is free; lower --parallel or --context, use more GPUs, or allow CPU fallback (--cpu-fallback)",
		e.Layers, FormatBytes(e.Need+GPUReserve), FormatBytes(GPUReserve), FormatBytes(e.Free))
}

// FitLayers decides how many layers to offload: requested as given
// (AutoGPULayers: all that fit; anything over the model's layers: all of
// them), checked against the GPUs' free memory. With gpus == 0 nothing is
// offloaded, whatever was asked (a CPU build, or no GPU given). When the
// layers asked for do not fit, cpuFallback offloads as many as do (the
// rest run on the CPU, several times slower); without it the runner
// refuses with a *FitError.
func FitLayers(s ModelShape, n MemNeeds, requested int, gpus int, free int64, cpuFallback bool) (int, error) {
	if gpus == 0 || requested == 0 {
		return 0, nil
	}
	want := s.Layers + 1
	if requested > 0 {
		want = min(requested, s.Layers+1)
	}
	budget := free - GPUReserve
	if GPUBytes(s, n, want) <= budget {
		return want, nil
	}
	if !cpuFallback {
		return 0, &FitError{Need: GPUBytes(s, n, want), Free: free, Layers: want}
	}
	fit := 0
	for l := want - 1; l > 0; l-- {
		if GPUBytes(s, n, l) <= budget {
			fit = l
			break
		}
	}
	return fit, nil
}

// FormatBytes prints a size in binary units with one decimal.
func FormatBytes(b int64) string {
	const unit = 1024
	if b < unit {
		return strconv.FormatInt(b, 10) + " B"
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit && exp < 4; n /= unit {
		div *= unit
		exp++
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(b)/float64(div)), ".0") + " " + string("KMGTP"[exp]) + "iB"
}
