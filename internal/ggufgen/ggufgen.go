// Package ggufgen writes random-weight llama models as GGUF files.
//
// Benchmarks need models bigger than the tiny test model (where compute, not
// overhead, dominates) but tests never download weights. A random-weight
// model of the right shape costs llama.cpp exactly what a trained one of that
// shape does per token, so it measures the engine honestly; its text is
// gibberish, which no benchmark reads.
package ggufgen

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/ollama/ollama/fs/ggml"
)

// Config is the shape of a llama model.
type Config struct {
	Vocab    int // tokens, at least 259 (3 control + 256 byte tokens)
	Embd     int // embedding length
	Layers   int
	Heads    int
	KVHeads  int
	FFN      int // feed-forward length
	Context  int // trained context length
	F32      bool
	Seed     uint64
	Name     string // general.name
	Untied   bool   // write a separate output.weight instead of reusing token_embd
	MaxBytes int64  // refuse configs whose file would be bigger (0: 4 GiB)

	// Hostile files, for testing what validates uploads: KV replaces
	// metadata values (a nil value removes the key), Shapes replaces
	// tensor shapes (the data written follows the new shape, so the file
	// stays well-formed and only lies about the model).
	KV     map[string]any
	Shapes map[string][]uint64
}

// Small is a model of a few million parameters, for tests that need a
// second model which still loads in milliseconds.
var Small = Config{Vocab: 512, Embd: 64, Layers: 2, Heads: 4, KVHeads: 4, FFN: 128, Context: 512, Seed: 1, Name: "ggufgen-small"}

// Medium is about 95M parameters (32000 × 768 tied embeddings plus ten
// 768-wide layers): big enough that the matrix products, not the engine's
// bookkeeping, set the speed on a CPU.
var Medium = Config{Vocab: 32000, Embd: 768, Layers: 10, Heads: 12, KVHeads: 12, FFN: 2048, Context: 2048, Seed: 1, Name: "ggufgen-medium"}

// Large is about 515M parameters, ~1.16 GB in F16 (2048-wide, ten layers,
// feed-forward 5632): the "~1 GB model" of the cold-start benchmarks,
// written by the benchmark itself, never committed.
var Large = Config{Vocab: 32000, Embd: 2048, Layers: 10, Heads: 16, KVHeads: 16, FFN: 5632, Context: 2048, Seed: 1, Name: "ggufgen-large"}

// Parameters is the number of weights the model has.
func (c Config) Parameters() int64 {
	e, kv := int64(c.Embd), int64(c.Embd/c.Heads*c.KVHeads)
	perLayer := 2*e + e*e*2 + 2*e*kv + 3*e*int64(c.FFN)
	n := int64(c.Vocab)*e + e + int64(c.Layers)*perLayer
	if c.Untied {
		n += int64(c.Vocab) * e
	}
	return n
}

func (c Config) validate() error {
	switch {
	case c.Vocab < 259:
		return fmt.Errorf("vocab %d: at least 259 tokens are needed for the control and byte tokens", c.Vocab)
	case c.Embd <= 0 || c.Layers <= 0 || c.Heads <= 0 || c.KVHeads <= 0 || c.FFN <= 0 || c.Context <= 0:
		return errors.New("every dimension must be positive")
	case c.Embd%c.Heads != 0 || c.Heads%c.KVHeads != 0:
		return fmt.Errorf("embd %d, heads %d, kv heads %d: embd must divide into heads and heads into kv heads", c.Embd, c.Heads, c.KVHeads)
	}
	max := c.MaxBytes
	if max == 0 {
		max = 4 << 30
	}
	if b := c.Parameters() * c.bytesPerWeight(); b > max {
		return fmt.Errorf("the model would take %d bytes, more than %d", b, max)
	}
	return nil
}

func (c Config) bytesPerWeight() int64 {
	if c.F32 {
		return 4
	}
	return 2
}

// Write writes the model as GGUF v3 to w. ollama's GGUF writer needs a
// seekable file, so any other writer gets the model through a temporary
// file; pass an *os.File to skip the copy.
func Write(w io.Writer, c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	if f, ok := w.(*os.File); ok {
		if err := ggml.WriteGGUF(f, c.kv(), c.tensors()); err != nil {
			return fmt.Errorf("writing model: %w", err)
		}
		return nil
	}
	tmp, err := os.CreateTemp("", ".ggufgen-*")
	if err != nil {
		return fmt.Errorf("creating temporary model file: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := ggml.WriteGGUF(tmp, c.kv(), c.tensors()); err != nil {
		return fmt.Errorf("writing model: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("rewinding temporary model file: %w", err)
	}
	if _, err := io.Copy(w, tmp); err != nil {
		return fmt.Errorf("copying model: %w", err)
	}
	return nil
}

// WriteFile writes the model to path, through a temporary file so a
// half-written model is never seen under its name.
func WriteFile(path string, c Config) error {
	if err := c.validate(); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ggufgen-*")
	if err != nil {
		return fmt.Errorf("creating model file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op
	if err := ggml.WriteGGUF(tmp, c.kv(), c.tensors()); err != nil {
		tmp.Close()
		return fmt.Errorf("writing model %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing model %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing model %s: %w", path, err)
	}
	return nil
}

// Cached returns the path of the model c under dir, writing it first if it
// is not there yet. Benchmarks call it so that only their first run pays
// for writing a few hundred megabytes.
func Cached(dir string, c Config) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating model cache: %w", err)
	}
	// The name covers every setting, so a changed config never finds a
	// stale file.
	sum := sha256.Sum256(fmt.Appendf(nil, "%+v", c))
	path := filepath.Join(dir, fmt.Sprintf("%s-%x.gguf", c.Name, sum[:6]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	return path, WriteFile(path, c)
}

// kv is the metadata llama.cpp needs to build a llama graph and an SPM
// tokenizer: control tokens, the 256 byte tokens that make every string
// encodable, and filler pieces up to the vocabulary size.
func (c Config) kv() ggml.KV {
	tokens := make([]string, 0, c.Vocab)
	types := make([]int32, 0, c.Vocab)
	tokens = append(tokens, "<unk>", "<s>", "</s>")
	types = append(types, 2, 3, 3) // unknown, control, control
	for b := range 256 {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		types = append(types, 6) // byte
	}
	for i := 0; len(tokens) < c.Vocab; i++ {
		tokens = append(tokens, piece(i))
		types = append(types, 1) // normal
	}
	scores := make([]float32, len(tokens))
	for i := range scores {
		scores[i] = -float32(i) // earlier pieces merge first
	}
	fileType := uint32(1) // mostly F16
	if c.F32 {
		fileType = 0
	}
	kv := ggml.KV{
		"general.architecture":                   "llama",
		"general.name":                           c.Name,
		"general.file_type":                      fileType,
		"llama.vocab_size":                       uint32(c.Vocab),
		"llama.context_length":                   uint32(c.Context),
		"llama.embedding_length":                 uint32(c.Embd),
		"llama.block_count":                      uint32(c.Layers),
		"llama.feed_forward_length":              uint32(c.FFN),
		"llama.attention.head_count":             uint32(c.Heads),
		"llama.attention.head_count_kv":          uint32(c.KVHeads),
		"llama.attention.layer_norm_rms_epsilon": float32(1e-5),
		"llama.rope.dimension_count":             uint32(c.Embd / c.Heads),
		"tokenizer.ggml.model":                   "llama",
		"tokenizer.ggml.tokens":                  tokens,
		"tokenizer.ggml.scores":                  scores,
		"tokenizer.ggml.token_type":              types,
		"tokenizer.ggml.unknown_token_id":        uint32(0),
		"tokenizer.ggml.bos_token_id":            uint32(1),
		"tokenizer.ggml.eos_token_id":            uint32(2),
	}
	for k, v := range c.KV {
		if v == nil {
			delete(kv, k)
		} else {
			kv[k] = v
		}
	}
	return kv
}

// piece is the i-th filler token: "▁a" … "▁z", then "a" … "z", then two
// letters, three letters and so on, all distinct.
func piece(i int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz"
	if i < 26 {
		return "▁" + letters[i:i+1]
	}
	i -= 26
	var b []byte
	for n := i; ; n = n/26 - 1 {
		b = append(b, letters[n%26])
		if n < 26 {
			break
		}
	}
	return string(b)
}

func (c Config) tensors() []*ggml.Tensor {
	e, kv, ff := uint64(c.Embd), uint64(c.Embd/c.Heads*c.KVHeads), uint64(c.FFN)
	var ts []*ggml.Tensor
	seed := c.Seed
	matrix := func(name string, cols, rows uint64) {
		seed++
		if s, ok := c.Shapes[name]; ok && len(s) == 2 {
			cols, rows = s[0], s[1]
		}
		ts = append(ts, c.matrix(name, cols, rows, seed))
	}
	ones := func(name string, n uint64) {
		if s, ok := c.Shapes[name]; ok && len(s) == 1 {
			n = s[0]
		}
		ts = append(ts, &ggml.Tensor{Name: name, Kind: 0, Shape: []uint64{n}, WriterTo: onesF32(n)})
	}
	// GGUF shapes list the row length first: a [in, out] matrix.
	matrix("token_embd.weight", e, uint64(c.Vocab))
	ones("output_norm.weight", e)
	if c.Untied {
		matrix("output.weight", e, uint64(c.Vocab))
	}
	for l := range c.Layers {
		p := fmt.Sprintf("blk.%d.", l)
		ones(p+"attn_norm.weight", e)
		matrix(p+"attn_q.weight", e, e)
		matrix(p+"attn_k.weight", e, kv)
		matrix(p+"attn_v.weight", e, kv)
		matrix(p+"attn_output.weight", e, e)
		ones(p+"ffn_norm.weight", e)
		matrix(p+"ffn_gate.weight", e, ff)
		matrix(p+"ffn_up.weight", e, ff)
		matrix(p+"ffn_down.weight", ff, e)
	}
	return ts
}

func (c Config) matrix(name string, cols, rows uint64, seed uint64) *ggml.Tensor {
	n := cols * rows
	if c.F32 {
		return &ggml.Tensor{Name: name, Kind: 0, Shape: []uint64{cols, rows}, WriterTo: randomF32{n, seed}}
	}
	return &ggml.Tensor{Name: name, Kind: 1, Shape: []uint64{cols, rows}, WriterTo: randomF16{n, seed}}
}

// chunk is how many bytes a tensor writer produces per write call.
const chunk = 1 << 20

type onesF32 uint64

func (n onesF32) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 4*int(n))
	for i := 0; i < len(buf); i += 4 {
		binary.LittleEndian.PutUint32(buf[i:], 0x3f800000) // 1.0
	}
	written, err := w.Write(buf)
	return int64(written), err
}

// randomF16 is n half-precision weights of magnitude 2^-9 to 2^-7 with a
// random sign, from a seeded generator: small enough that activations
// stay finite through any number of layers with RMS norms between them.
type randomF16 struct {
	n    uint64
	seed uint64
}

func (r randomF16) WriteTo(w io.Writer) (int64, error) {
	rng := rand.NewPCG(r.seed, r.seed^0x9e3779b97f4a7c15)
	return writeChunks(w, r.n*2, func(buf []byte) {
		for i := 0; i < len(buf); i += 8 {
			v := rng.Uint64()
			for j := 0; j < 4 && i+2*j < len(buf); j++ {
				x := uint16(v >> (16 * j))
				// sign | exponent 6..8 (biased) | random mantissa
				h := x&0x8000 | uint16(6+x%3)<<10 | x>>5&0x3ff
				binary.LittleEndian.PutUint16(buf[i+2*j:], h)
			}
		}
	})
}

// randomF32 is randomF16's values in single precision.
type randomF32 struct {
	n    uint64
	seed uint64
}

func (r randomF32) WriteTo(w io.Writer) (int64, error) {
	rng := rand.New(rand.NewPCG(r.seed, r.seed^0x9e3779b97f4a7c15))
	return writeChunks(w, r.n*4, func(buf []byte) {
		for i := 0; i < len(buf); i += 4 {
			v := float32(rng.Float64()*2-1) / 128
			binary.LittleEndian.PutUint32(buf[i:], math.Float32bits(v))
		}
	})
}

// writeChunks writes size bytes to w, filling a reused buffer of at most
// chunk bytes with fill before each write, so a tensor of any size is
// generated in constant memory.
func writeChunks(w io.Writer, size uint64, fill func([]byte)) (int64, error) {
	buf := make([]byte, min(uint64(chunk), size))
	var total int64
	for left := size; left > 0; {
		b := buf[:min(uint64(len(buf)), left)]
		fill(b)
		written, err := w.Write(b)
		total += int64(written)
		if err != nil {
			return total, err
		}
		left -= uint64(len(b))
	}
	return total, nil
}
