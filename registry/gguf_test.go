package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/infer-run/infer/internal/testenv"
)

// modelSHA256 is the digest of ../shared/models/stories260K.gguf.
const modelSHA256 = "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"

func readModel(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(testenv.ModelPath(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(sha256Sum(b)); got != modelSHA256 {
		t.Fatalf("test model has sha256 %s, want %s", got, modelSHA256)
	}
	return b
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

// gguf builds GGUF bytes for tests: little-endian fields appended in order.
type gguf struct{ bytes.Buffer }

func newGGUF(version uint32, tensors, kvs uint64) *gguf {
	g := &gguf{}
	g.WriteString("GGUF")
	return g.u32(version).u64(tensors).u64(kvs)
}

func (g *gguf) u32(v uint32) *gguf {
	binary.Write(g, binary.LittleEndian, v)
	return g
}

func (g *gguf) u64(v uint64) *gguf {
	binary.Write(g, binary.LittleEndian, v)
	return g
}

func (g *gguf) str(s string) *gguf {
	g.u64(uint64(len(s)))
	g.WriteString(s)
	return g
}

// kvString appends a string metadata entry.
func (g *gguf) kvString(key, value string) *gguf {
	return g.str(key).u32(ggufString).str(value)
}

// tensor appends an F32 tensor info.
func (g *gguf) tensor(name string, offset uint64, shape ...uint64) *gguf {
	g.str(name).u32(uint32(len(shape)))
	for _, n := range shape {
		g.u64(n)
	}
	return g.u32(0).u64(offset) // 0: F32
}

// align pads to 32 bytes, where tensor data starts by default.
func (g *gguf) align() *gguf {
	for g.Len()%32 != 0 {
		g.WriteByte(0)
	}
	return g
}

// minimalModel is the smallest GGUF Inspect accepts: an architecture and
// one 8-element F32 tensor.
func minimalModel() []byte {
	g := newGGUF(3, 1, 1).kvString("general.architecture", "llama").tensor("w", 0, 8).align()
	g.Write(make([]byte, 32))
	return g.Bytes()
}

type badInput struct {
	name string
	data []byte
	want string // part of the error message
}

// badInputs are files Inspect and Upload must refuse with ErrInvalidWeights.
func badInputs(t testing.TB) []badInput {
	model := readModel(t)
	infos := bytes.Index(model, []byte("token_embd.weight"))
	vocab := bytes.Index(model, []byte("tokenizer.ggml.tokens"))
	if infos < 0 || vocab < 0 {
		t.Fatal("test model does not look as expected")
	}
	dataStart := len(model) / 2 // well inside the tensor data of this model
	huge := uint64(1) << 60
	return []badInput{
		{"empty", nil, "empty"},
		{"text", []byte("hello world"), "not a GGUF file"},
		{"short", []byte("GG"), "not a GGUF file"},
		{"zip", []byte("PK\x03\x04rest of a zip"), "zip archive"},
		{"magic then garbage", append([]byte("GGUF"), bytes.Repeat([]byte{0xff}, 100)...), "unsupported GGUF version"},
		{"magic then nothing", []byte("GGUF"), "inside the GGUF header"},
		{"big endian", []byte("FUGG\x00\x00\x00\x03"), "big-endian"},
		{"version 1", newGGUF(1, 0, 0).Bytes(), "version 1"},
		{"truncated in header", model[:6], "inside the GGUF header (version)"},
		{"truncated in counts", model[:20], "inside the GGUF header (counts)"},
		{"truncated in vocabulary", model[:vocab+100], "inside the GGUF header (metadata entry"},
		{"truncated in tensor infos", model[:infos+5], "inside the GGUF header (tensor info"},
		{"truncated in tensor data", model[:dataStart], "tensor data runs to byte"},
		{"last byte missing", model[:len(model)-1], "tensor data runs to byte"},
		{"2^60 tensors", newGGUF(3, huge, 0).Bytes(), "claims 1152921504606846976 tensors"},
		{"2^60 metadata entries", newGGUF(3, 0, huge).Bytes(), "claims 1152921504606846976 metadata entries"},
		{"huge key", newGGUF(3, 0, 1).u64(huge).Bytes(), "metadata key length"},
		{"huge string value", newGGUF(3, 0, 1).str("k").u32(ggufString).u64(huge).Bytes(), "string length"},
		{"huge string array", newGGUF(3, 0, 1).str("k").u32(ggufArray).u32(ggufString).u64(huge).Bytes(), "string array length"},
		// Decode skips string array elements ignoring read errors, so an
		// allowed count with the data missing must still end quickly.
		{"string array cut short", newGGUF(3, 0, 1).str("k").u32(ggufArray).u32(ggufString).u64(maxStringArrayLen).u64(3).Bytes(), `inside the GGUF header (metadata entry 1 of 1, "k")`},
		{"huge int array", newGGUF(3, 0, 1).str("k").u32(ggufArray).u32(ggufUint32).u64(huge).Bytes(), "array length"},
		{"negative-looking string length", newGGUF(3, 0, 1).str("k").u32(ggufString).u64(1 << 63).Bytes(), "string length"},
		{"nested array", newGGUF(3, 0, 1).str("k").u32(ggufArray).u32(ggufArray).u64(1).Bytes(), "unsupported type"},
		{"unknown value type", newGGUF(3, 0, 1).str("k").u32(99).Bytes(), "unknown type 99"},
		{"duplicate key", newGGUF(3, 0, 2).kvString("a", "x").kvString("a", "y").Bytes(), "twice"},
		{"zero alignment", newGGUF(3, 0, 1).str("general.alignment").u32(ggufUint32).u32(0).Bytes(), "power of two"},
		{"alignment of wrong type", newGGUF(3, 0, 1).str("general.alignment").u32(ggufUint64).u64(32).Bytes(), "must be a uint32"},
		{"huge tensor name", newGGUF(3, 1, 0).u64(huge).Bytes(), "tensor name length"},
		{"too many dimensions", newGGUF(3, 1, 0).str("w").u32(1 << 31).Bytes(), "dimensions"},
		{"overflowing shape", newGGUF(3, 1, 0).tensor("w", 0, 1<<40, 1<<40).Bytes(), "impossible shape"},
		{"unknown tensor type", newGGUF(3, 1, 0).str("w").u32(1).u64(8).u32(1000).u64(0).Bytes(), "does not support"},
		{"misaligned block", newGGUF(3, 1, 0).str("w").u32(1).u64(33).u32(2).u64(0).Bytes(), "block size"}, // Q4_0 blocks are 32
		{"wrong tensor offset", newGGUF(3, 1, 0).tensor("w", 64, 8).Bytes(), "data offset 64, expected 0"},
		{"duplicate tensor", newGGUF(3, 2, 0).tensor("w", 0, 8).tensor("w", 32, 8).Bytes(), "two tensors named"},
		{"overlapping tensors", newGGUF(3, 2, 0).tensor("a", 0, 16).tensor("b", 32, 8).Bytes(), "data offset 32, expected 64"},
		{"tensor data past the end", func() []byte {
			g := newGGUF(3, 1, 1).kvString("general.architecture", "llama").tensor("w", 0, 1<<30).align()
			g.Write(make([]byte, 32))
			return g.Bytes()
		}(), "tensor data runs to byte 4294967424"},
		{"no tensors", newGGUF(3, 0, 1).kvString("general.architecture", "llama").Bytes(), "no tensors"},
		{"no architecture", func() []byte {
			g := newGGUF(3, 1, 0).tensor("w", 0, 8).align()
			g.Write(make([]byte, 32))
			return g.Bytes()
		}(), "architecture"},
		{"adapter", func() []byte {
			g := newGGUF(3, 1, 2).kvString("general.architecture", "llama").kvString("general.type", "adapter").tensor("w", 0, 8).align()
			g.Write(make([]byte, 32))
			return g.Bytes()
		}(), "LoRA adapter"},
	}
}

func TestInspectModel(t *testing.T) {
	model := readModel(t)
	readers := []struct {
		name string
		r    func() io.Reader
	}{
		{"whole", func() io.Reader { return bytes.NewReader(model) }},
		// Chunk boundaries fall everywhere, including inside every
		// length field the header check reads.
		{"one byte at a time", func() io.Reader { return iotest.OneByteReader(bytes.NewReader(model)) }},
		{"half reads", func() io.Reader { return iotest.HalfReader(bytes.NewReader(model)) }},
		{"EOF with data", func() io.Reader { return iotest.DataErrReader(bytes.NewReader(model)) }},
		// Trailing bytes after the last tensor are not an error.
		{"trailing bytes", func() io.Reader { return io.MultiReader(bytes.NewReader(model), strings.NewReader("trailer")) }},
	}
	for _, tc := range readers {
		t.Run(tc.name, func(t *testing.T) {
			info, n, err := Inspect(tc.r())
			if err != nil {
				t.Fatal(err)
			}
			if info.Architecture != "llama" || info.ContextLength != 2048 {
				t.Errorf("got %+v, want architecture llama and context length 2048", info)
			}
			if info.ParameterCount < 200_000 || info.ParameterCount > 400_000 {
				t.Errorf("parameter count %d, want about 260K", info.ParameterCount)
			}
			if info.Quantization == "" || info.Quantization == "unknown" {
				t.Errorf("quantization %q", info.Quantization)
			}
			if info.ChatTemplate != "" {
				t.Errorf("chat template %q, want none", info.ChatTemplate)
			}
			if n < int64(len(model))-32 || n > int64(len(model))+7 {
				t.Errorf("consumed %d bytes of a %d-byte file", n, len(model))
			}
		})
	}
}

func TestInspectMinimal(t *testing.T) {
	info, n, err := Inspect(bytes.NewReader(minimalModel()))
	if err != nil {
		t.Fatal(err)
	}
	want := ModelInfo{Architecture: "llama", ParameterCount: 8, Quantization: "F32"}
	if info != want || n != int64(len(minimalModel())) {
		t.Errorf("got %+v after %d bytes, want %+v after %d", info, n, want, len(minimalModel()))
	}
}

func TestInspectRejects(t *testing.T) {
	for _, tc := range badInputs(t) {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			_, _, err := Inspect(bytes.NewReader(tc.data))
			if !errors.Is(err, ErrInvalidWeights) {
				t.Fatalf("err = %v, want ErrInvalidWeights", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
			// Lying sizes must fail at once, not after walking them (the
			// bound leaves room for the race detector).
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// A failing reader is the caller's problem, not the file's.
func TestInspectReadError(t *testing.T) {
	model := readModel(t)
	boom := errors.New("connection reset")
	for _, at := range []int{0, 100, len(model) / 2} {
		r := io.MultiReader(bytes.NewReader(model[:at]), iotest.ErrReader(boom))
		_, _, err := Inspect(r)
		if !errors.Is(err, boom) || errors.Is(err, ErrInvalidWeights) {
			t.Errorf("failing at byte %d: err = %v, want the reader's error and not ErrInvalidWeights", at, err)
		}
	}
}

func TestStreamSeeker(t *testing.T) {
	data := make([]byte, 3*histMax)
	for i := range data {
		data[i] = byte(i * 7)
	}
	s := newStreamSeeker(bytes.NewReader(data))
	read := func(n int) []byte {
		t.Helper()
		b := make([]byte, n)
		if _, err := io.ReadFull(s, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	seek := func(off int64) (int64, error) { return s.Seek(off, io.SeekCurrent) }

	read(1000)
	if pos, err := seek(-500); err != nil || pos != 500 {
		t.Fatalf("seek back: %d, %v", pos, err)
	}
	if got := read(600); !bytes.Equal(got, data[500:1100]) {
		t.Error("re-read after seeking back differs")
	}
	if pos, err := seek(0); err != nil || pos != 1100 {
		t.Fatalf("position: %d, %v", pos, err)
	}
	if pos, err := seek(histMax); err != nil || pos != 1100+histMax {
		t.Fatalf("skip: %d, %v", pos, err)
	}
	if got := read(10); !bytes.Equal(got, data[1100+histMax:1110+histMax]) {
		t.Error("read after skip differs")
	}
	if _, err := seek(-100); err == nil {
		t.Error("seeking back over skipped bytes worked")
	}
	if _, err := s.Seek(0, io.SeekStart); err == nil {
		t.Error("absolute seek worked")
	}
	if _, err := seek(int64(len(data))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("skipping past the end: %v, want ErrUnexpectedEOF", err)
	}
}

func FuzzInspect(f *testing.F) {
	model := readModel(f)
	f.Add(model[:4096])
	f.Add(minimalModel())
	for _, tc := range badInputs(f) {
		if len(tc.data) <= 4096 {
			f.Add(tc.data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		info, n, err := Inspect(bytes.NewReader(data))
		if err != nil && !errors.Is(err, ErrInvalidWeights) {
			t.Fatalf("error without ErrInvalidWeights: %v", err)
		}
		if n > int64(len(data)) {
			t.Fatalf("consumed %d of %d bytes", n, len(data))
		}
		if err == nil && (info.Architecture == "" || info.ParameterCount < 0) {
			t.Fatalf("accepted %+v", info)
		}
	})
}
