package registry

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// The header check (gguf.go) makes sure a file can be parsed without
// allocating or reading without bound. The model check here makes sure the
// parsed header describes a model llama.cpp can load and run: a file whose
// hyperparameters are poison (a NaN norm epsilon, zero heads) loads fine
// and then trips a llama.cpp assertion on every request, which aborts the
// runner process, so it must be refused at upload.

// knownArchitectures are the values of general.architecture that the
// llama.cpp infer links can build a graph for: LLM_ARCH_NAMES in
// llama/llama.cpp/src/llama-arch.cpp of github.com/ollama/ollama v0.11.4
// (the version go.mod pins), less "__missing__" and "unknown". Update it
// with that pin; TestKnownArchitecturesMatchLlamaCpp compares the two.
var knownArchitectures = []string{
	"arctic", "arwkv7", "baichuan", "bailingmoe", "bert", "bitnet", "bloom",
	"chameleon", "chatglm", "codeshell", "cohere2", "command-r", "dbrx",
	"deci", "deepseek", "deepseek2", "exaone", "falcon", "gemma", "gemma2",
	"gemma3", "glm4", "gpt2", "gptj", "gptneox", "granite", "granitemoe",
	"grok", "internlm2", "jais", "jina-bert-v2", "llama", "llama4", "mamba",
	"minicpm", "minicpm3", "mpt", "nemotron", "nomic-bert", "nomic-bert-moe",
	"olmo", "olmo2", "olmoe", "openelm", "orion", "phi2", "phi3", "phimoe",
	"plamo", "plm", "qwen", "qwen2", "qwen2moe", "qwen2vl", "qwen3",
	"qwen3moe", "refact", "rwkv6", "rwkv6qwen2", "rwkv7", "solar",
	"stablelm", "starcoder", "starcoder2", "t5", "t5encoder",
	"wavtokenizer-dec", "xverse",
}

// recurrentArchitectures have no attention heads (llama.cpp's
// llama_model_is_recurrent): their files say head_count 0.
var recurrentArchitectures = []string{"mamba", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}

// Bounds on hyperparameters. Each is far beyond any published model (the
// largest in brackets) and keeps an absurd value from reaching llama.cpp,
// where it becomes an allocation or an assertion.
const (
	maxTrainedContext = 1 << 24 // 16M tokens [Llama 4 Scout: 10M]
	maxEmbedding      = 1 << 17 // [DeepSeek-V3: 7168; Llama 3.1 405B: 16384]
	maxBlocks         = 512     // llama.cpp's LLAMA_MAX_LAYERS
	maxHeads          = 1 << 12 // [Llama 3.1 405B: 128]
	maxExperts        = 256     // llama.cpp's LLAMA_MAX_EXPERTS
	// maxKeptArray is the longest numeric metadata array whose values the
	// header check keeps (per-layer hyperparameters have one per layer).
	maxKeptArray = 1 << 12
)

// headerMeta is what the header check collects for the model check: every
// numeric scalar, every array's length (and the values of short numeric
// ones), every tensor's shape.
type headerMeta struct {
	nums   map[string]float64
	arrays map[string]arrayMeta
	shapes map[string][]uint64
}

type arrayMeta struct {
	n    uint64
	nums []float64 // nil unless numeric and at most maxKeptArray long
}

func (m *headerMeta) setNum(key string, v float64) {
	if m.nums == nil {
		m.nums = map[string]float64{}
	}
	m.nums[key] = v
}

func (m *headerMeta) setArray(key string, n uint64, nums []float64) {
	if m.arrays == nil {
		m.arrays = map[string]arrayMeta{}
	}
	m.arrays[key] = arrayMeta{n: n, nums: nums}
}

func (m *headerMeta) setShape(name string, shape []uint64) {
	if m.shapes == nil {
		m.shapes = map[string][]uint64{}
	}
	m.shapes[name] = shape
}

// checkModel refuses a header that llama.cpp would refuse, or accept and
// then crash on. Only what the file says is checked: a missing key that
// llama.cpp requires makes it fail to load with an error of its own, which
// the runner reports (see docs/architecture.md, "A runner that cannot
// start").
func checkModel(arch string, m *headerMeta) error {
	if !slices.Contains(knownArchitectures, arch) {
		return invalidf("the model's architecture %q is not one infer's llama.cpp can run (it knows %s)", arch, strings.Join(knownArchitectures, ", "))
	}
	recurrent := slices.Contains(recurrentArchitectures, arch)
	key := func(k string) string { return arch + "." + k }
	num := func(k string) (float64, bool) {
		v, ok := m.nums[key(k)]
		return v, ok
	}
	// whole checks that a present key is an integer in [lo, hi].
	whole := func(k string, lo, hi float64) (float64, bool, error) {
		v, ok := num(k)
		if ok && (v != math.Trunc(v) || v < lo || v > hi) {
			return v, ok, invalidf("the model's %s is %s; it must be a whole number from %s to %s", key(k), numStr(v), numStr(lo), numStr(hi))
		}
		return v, ok, nil
	}

	// No hyperparameter is meant to be NaN or infinite (a NaN rope base
	// poisons every activation as surely as a NaN epsilon). Keys in
	// sorted order, so the same file always gets the same message.
	for _, k := range slices.Sorted(maps.Keys(m.nums)) {
		if v := m.nums[k]; strings.HasPrefix(k, arch+".") && (math.IsNaN(v) || math.IsInf(v, 0)) {
			return invalidf("the model's %s is %s; hyperparameters must be finite numbers", k, numStr(v))
		}
	}
	for _, k := range []string{"attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"} {
		// A norm divides by sqrt(mean + eps): NaN, infinite, zero or
		// negative eps makes every activation NaN, which llama.cpp's
		// sampler asserts against (the runner aborts on the first request).
		if v, ok := num(k); ok && !(v > 0 && v < 1) {
			return invalidf("the model's %s is %s; it must be a small positive number (typically 1e-5 or 1e-6)", key(k), numStr(v))
		}
	}
	if _, _, err := whole("context_length", 1, maxTrainedContext); err != nil {
		return err
	}
	embd, hasEmbd, err := whole("embedding_length", 1, maxEmbedding)
	if err != nil {
		return err
	}
	blocks, hasBlocks, err := whole("block_count", 1, maxBlocks)
	if err != nil {
		return err
	}

	minHeads := 1.0
	if recurrent {
		minHeads = 0
	}
	heads, hasHeads, err := whole("attention.head_count", minHeads, maxHeads)
	if err != nil {
		return err
	}
	if a, ok := m.arrays[key("attention.head_count")]; ok && a.nums != nil {
		// Per-layer head counts: a layer may have none (deci's
		// attention-free layers), but no count may be absurd.
		for i, v := range a.nums {
			if v != math.Trunc(v) || v < 0 || v > maxHeads {
				return invalidf("the model's %s gives layer %d %s heads; it must be a whole number from 0 to %d", key("attention.head_count"), i, numStr(v), maxHeads)
			}
		}
	}
	kvHeads, hasKV, err := whole("attention.head_count_kv", minHeads, maxHeads)
	if err != nil {
		return err
	}
	if hasHeads && hasKV && kvHeads > 0 && math.Mod(heads, kvHeads) != 0 {
		// Grouped-query attention shares each KV head among
		// heads/kv_heads query heads; ggml asserts the division is exact.
		return invalidf("the model has %s attention heads and %s key-value heads (%s); the heads must be a multiple of the key-value heads", numStr(heads), numStr(kvHeads), key("attention.head_count_kv"))
	}
	if _, hasKeyLen := num("attention.key_length"); hasEmbd && hasHeads && heads > 0 && !hasKeyLen && math.Mod(embd, heads) != 0 {
		// Without attention.key_length, llama.cpp takes a head's size
		// to be embedding_length / head_count.
		return invalidf("the model's embedding length %s is not divisible by its %s attention heads (%s)", numStr(embd), numStr(heads), key("attention.head_count"))
	}
	experts, _, err := whole("expert_count", 0, maxExperts)
	if err != nil {
		return err
	}
	if used, ok, err := whole("expert_used_count", 0, maxExperts); err != nil {
		return err
	} else if ok && (used > experts || (experts > 0 && used == 0)) {
		// llama.cpp asserts both while loading.
		return invalidf("the model uses %s of its %s experts per token (%s); it must use at least one and at most all", numStr(used), numStr(experts), key("expert_used_count"))
	}

	if arch == "wavtokenizer-dec" {
		// A vocoder: its embeddings are features_length wide, not
		// embedding_length (llama-model.cpp), and its layers are not
		// blk.N. Every other architecture builds the tensors checked
		// below with the shapes checkShapes expects.
		return nil
	}
	// deci (Nemotron-NAS) may have layers with neither attention nor a
	// feed-forward part, so no tensors; llama.cpp reports a missing
	// tensor of any other architecture's layer when it loads.
	return checkShapes(m, embd, hasEmbd, blocks, hasBlocks, arch != "deci")
}

// checkShapes compares the tensors with the hyperparameters: llama.cpp
// builds its graph from the hyperparameters and reads the tensors as they
// are, so a mismatch either fails the load or reads the wrong bytes.
func checkShapes(m *headerMeta, embd float64, hasEmbd bool, blocks float64, hasBlocks, everyLayer bool) error {
	vocab, hasVocab := m.arrays["tokenizer.ggml.tokens"]
	if hasVocab && vocab.n == 0 {
		return invalidf("the model's vocabulary (tokenizer.ggml.tokens) is empty")
	}
	n := uint64(embd)
	dim := func(name string, i int) (uint64, bool) {
		s, ok := m.shapes[name]
		if !ok || i >= len(s) {
			return 0, false
		}
		return s[i], true
	}
	for _, name := range []string{"token_embd.weight", "output.weight"} {
		s, ok := m.shapes[name]
		if !ok {
			continue
		}
		if hasEmbd && len(s) > 0 && s[0] != n {
			return invalidf("tensor %q is %d wide but the model's embedding length is %d", name, s[0], n)
		}
		if hasVocab && len(s) > 1 && s[1] != vocab.n {
			return invalidf("tensor %q has %d rows but the vocabulary (tokenizer.ggml.tokens) has %d tokens", name, s[1], vocab.n)
		}
	}
	// The residual stream is embedding_length wide: what reads it has
	// that many columns, what writes to it that many rows.
	if hasEmbd {
		if w, ok := dim("output_norm.weight", 0); ok && w != n {
			return invalidf("tensor %q is %d wide but the model's embedding length is %d", "output_norm.weight", w, n)
		}
	}
	layers := map[uint64]bool{}
	for name, s := range m.shapes {
		rest, ok := strings.CutPrefix(name, "blk.")
		if !ok {
			continue
		}
		num, suffix, ok := strings.Cut(rest, ".")
		layer, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil {
			continue
		}
		if hasBlocks && float64(layer) >= blocks {
			return invalidf("tensor %q belongs to layer %d, but the model has %s layers (block_count)", name, layer, numStr(blocks))
		}
		layers[layer] = true
		if !hasEmbd || len(s) == 0 {
			continue
		}
		switch suffix {
		case "attn_norm.weight", "ffn_norm.weight",
			"attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight", "ffn_up.weight":
			if s[0] != n {
				return invalidf("tensor %q is %d wide but the model's embedding length is %d", name, s[0], n)
			}
		case "attn_output.weight", "ffn_down.weight":
			if len(s) > 1 && s[1] != n {
				return invalidf("tensor %q has %d rows but the model's embedding length is %d", name, s[1], n)
			}
		}
	}
	if hasBlocks && everyLayer && len(layers) > 0 {
		for l := range uint64(blocks) {
			if !layers[l] {
				return invalidf("the model has %s layers (block_count) but no tensors for layer %d", numStr(blocks), l)
			}
		}
	}
	return nil
}

// numStr writes a metadata number as its writer likely meant it: whole
// numbers in full, others (float32 mostly) to six digits.
func numStr(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatInt(int64(v), 10)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}
