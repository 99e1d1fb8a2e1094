package ggufgen

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/infer-run/infer/registry"
)

func TestWriteFileIsValidGGUF(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"small f16", Small},
		{"small f32 untied", func() Config { c := Small; c.F32, c.Untied = true, true; return c }()},
		{"grouped query attention", func() Config { c := Small; c.KVHeads = 2; return c }()},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.gguf")
			if err := WriteFile(path, tc.cfg); err != nil {
				t.Fatal(err)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			st, _ := f.Stat()
			info, n, err := registry.Inspect(f)
			if err != nil {
				t.Fatalf("the registry refuses the model: %v", err)
			}
			if n != st.Size() {
				t.Errorf("Inspect read %d bytes of %d", n, st.Size())
			}
			if info.Architecture != "llama" || int64(info.ParameterCount) != tc.cfg.Parameters() || info.ContextLength != tc.cfg.Context {
				t.Errorf("Inspect = %+v, want llama with %d parameters and context %d", info, tc.cfg.Parameters(), tc.cfg.Context)
			}
			if want := tc.cfg.Parameters() * tc.cfg.bytesPerWeight(); st.Size() < want {
				t.Errorf("file is %d bytes, less than the %d its weights need", st.Size(), want)
			}
		})
	}
}

func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, p := range []string{a, b} {
		if err := WriteFile(p, Small); err != nil {
			t.Fatal(err)
		}
	}
	da, _ := os.ReadFile(a)
	db, _ := os.ReadFile(b)
	if string(da) != string(db) {
		t.Error("the same config wrote different files")
	}
	other := Small
	other.Seed = 2
	if err := WriteFile(b, other); err != nil {
		t.Fatal(err)
	}
	db, _ = os.ReadFile(b)
	if string(da) == string(db) {
		t.Error("a different seed wrote the same file")
	}
}

func TestCached(t *testing.T) {
	dir := t.TempDir()
	p1, err := Cached(dir, Small)
	if err != nil {
		t.Fatal(err)
	}
	st1, _ := os.Stat(p1)
	p2, err := Cached(dir, Small)
	if err != nil || p2 != p1 {
		t.Fatalf("second Cached = %q, %v; want %q", p2, err, p1)
	}
	if st2, _ := os.Stat(p2); !st2.ModTime().Equal(st1.ModTime()) {
		t.Error("Cached rewrote a model it already had")
	}
	other := Small
	other.Layers = 3
	if p3, err := Cached(dir, other); err != nil || p3 == p1 {
		t.Errorf("a different config got %q, %v; want a new file", p3, err)
	}
}

func TestInvalidConfig(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
	}{
		{"tiny vocab", func(c *Config) { c.Vocab = 10 }},
		{"heads do not divide", func(c *Config) { c.Heads = 5 }},
		{"kv heads do not divide", func(c *Config) { c.KVHeads = 3 }},
		{"zero layers", func(c *Config) { c.Layers = 0 }},
		{"too big", func(c *Config) { c.MaxBytes = 1000 }},
	}
	for _, tc := range tests {
		c := Small
		tc.change(&c)
		if err := WriteFile(filepath.Join(t.TempDir(), "m"), c); err == nil {
			t.Errorf("%s: WriteFile worked", tc.name)
		}
	}
}

func TestPiecesAreDistinct(t *testing.T) {
	seen := map[string]int{}
	for i := range 40000 {
		p := piece(i)
		if j, ok := seen[p]; ok {
			t.Fatalf("piece(%d) = piece(%d) = %q", i, j, p)
		}
		seen[p] = i
	}
}

func TestWriteToAnyWriter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := WriteFile(path, Small); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(path)
	var buf bytes.Buffer
	if err := Write(&buf, Small); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("Write to a buffer gave %d bytes differing from WriteFile's %d", buf.Len(), len(want))
	}
}

// BenchmarkWriteMedium is the cost of the benchmark model's first write.
func BenchmarkWriteMedium(b *testing.B) {
	dir := b.TempDir()
	b.SetBytes(Medium.Parameters() * Medium.bytesPerWeight())
	for range b.N {
		if err := WriteFile(filepath.Join(dir, "m.gguf"), Medium); err != nil {
			b.Fatal(err)
		}
	}
}
