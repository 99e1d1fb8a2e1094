package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/infer-run/infer/internal/blob"
	ggufinfo "github.com/infer-run/infer/internal/gguf"
	"github.com/infer-run/infer/internal/ggufgen"
)

// newUploader returns an Uploader on a fresh database and blob directory,
// and the directory.
func newUploader(t *testing.T) (*Uploader, string) {
	t.Helper()
	s, _ := openStore(t)
	root := t.TempDir()
	d, err := blob.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	return &Uploader{Store: s, Blobs: d}, root
}

// storedFiles lists every file under root, temporary ones included.
func storedFiles(t *testing.T, root string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, path)
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func countArtifacts(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.Pool().QueryRow(t.Context(), "SELECT count(*) FROM artifacts").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func readObject(t *testing.T, b blob.Store, key string) []byte {
	t.Helper()
	rc, _, err := b.Open(t.Context(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestUpload(t *testing.T) {
	model := readModel(t)
	u, root := newUploader(t)
	ctx := t.Context()

	a, err := u.Upload(ctx, bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatal(err)
	}
	if a.SHA256 != modelSHA256 || a.Size != int64(len(model)) || a.Architecture != "llama" || a.ContextLength != 2048 ||
		a.ParameterCount < 200_000 || a.Quantization == "" || !strings.HasPrefix(a.ObjectKey, "uploads/") ||
		a.ChatTemplate != "plain" { // a base model: no template in its GGUF
		t.Errorf("artifact %+v", a)
	}
	if !bytes.Equal(readObject(t, u.Blobs, a.ObjectKey), model) {
		t.Error("the stored object differs from the upload")
	}
	if got, err := u.Store.GetArtifact(ctx, modelSHA256); err != nil || got.ObjectKey != a.ObjectKey {
		t.Errorf("GetArtifact = %+v, %v", got, err)
	}

	// The same bytes again, in small reads and of unannounced length:
	// the first artifact, and the second copy is gone.
	again, err := u.Upload(ctx, iotest.HalfReader(bytes.NewReader(model)), -1)
	if err != nil {
		t.Fatal(err)
	}
	if again.ObjectKey != a.ObjectKey || !again.CreatedAt.Equal(a.CreatedAt) {
		t.Errorf("second upload gave %+v, want %+v", again, a)
	}
	if files := storedFiles(t, root); len(files) != 1 || files[0] != a.ObjectKey {
		t.Errorf("stored files %v, want only %s", files, a.ObjectKey)
	}

	// Bytes after the last tensor are kept and hashed.
	trailed := append(bytes.Clone(model), "trailer"...)
	b, err := u.Upload(ctx, bytes.NewReader(trailed), int64(len(trailed)))
	if err != nil {
		t.Fatal(err)
	}
	if b.SHA256 == a.SHA256 || b.Size != int64(len(trailed)) || !bytes.Equal(readObject(t, u.Blobs, b.ObjectKey), trailed) {
		t.Errorf("upload with trailing bytes: %+v", b)
	}
}

// TestUploadRejects checks that nothing is left behind by a refused upload.
func TestUploadRejects(t *testing.T) {
	model := readModel(t)
	u, root := newUploader(t)
	boom := errors.New("connection reset")
	tests := []struct {
		name    string
		r       io.Reader
		size    int64
		invalid bool // want ErrInvalidWeights
	}{
		{"announced too long", bytes.NewReader(model), int64(len(model)) + 1, true},
		{"announced too short", bytes.NewReader(model), int64(len(model)) - 1, true},
		{"empty by announcement", bytes.NewReader(nil), 0, true},
		{"reader fails in header", io.MultiReader(bytes.NewReader(model[:100]), iotest.ErrReader(boom)), -1, false},
		{"reader fails in data", io.MultiReader(bytes.NewReader(model[:len(model)/2]), iotest.ErrReader(boom)), int64(len(model)), false},
		{"reader fails in trailer", io.MultiReader(bytes.NewReader(model), iotest.ErrReader(boom)), -1, false},
	}
	for _, bad := range append(badInputs(t), hostileModels(t)...) {
		tests = append(tests, struct {
			name    string
			r       io.Reader
			size    int64
			invalid bool
		}{bad.name, bytes.NewReader(bad.data), int64(len(bad.data)), true})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := u.Upload(t.Context(), tc.r, tc.size)
			if err == nil {
				t.Fatal("upload worked")
			}
			if errors.Is(err, ErrInvalidWeights) != tc.invalid {
				t.Errorf("err = %v; want ErrInvalidWeights: %v", err, tc.invalid)
			}
			if !tc.invalid && !errors.Is(err, boom) {
				t.Errorf("err = %v, want the reader's error", err)
			}
			if files := storedFiles(t, root); len(files) != 0 {
				t.Errorf("left behind %v", files)
			}
			if n := countArtifacts(t, u.Store); n != 0 {
				t.Errorf("%d artifacts recorded", n)
			}
		})
	}
}

// failingBlobs is a blob store whose Put fails after reading some bytes,
// like a full disk or a dropped S3 connection.
type failingBlobs struct {
	blob.Store
	after int64
	err   error
}

func (f failingBlobs) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if _, err := io.CopyN(io.Discard, r, f.after); err != nil {
		return err
	}
	return f.err
}

func TestUploadStoreFails(t *testing.T) {
	model := readModel(t)
	u, root := newUploader(t)
	full := errors.New("no space left on device")
	for _, after := range []int64{0, 10_000, int64(len(model)) - 1} {
		fu := *u
		fu.Blobs = failingBlobs{Store: u.Blobs, after: after, err: full}
		_, err := fu.Upload(t.Context(), bytes.NewReader(model), int64(len(model)))
		if !errors.Is(err, full) || errors.Is(err, ErrInvalidWeights) || !strings.Contains(err.Error(), "storing the weights") {
			t.Errorf("store failing after %d bytes: err = %v", after, err)
		}
	}
	if files := storedFiles(t, root); len(files) != 0 {
		t.Errorf("left behind %v", files)
	}
	if n := countArtifacts(t, u.Store); n != 0 {
		t.Errorf("%d artifacts recorded", n)
	}
}

func TestUploadCanceled(t *testing.T) {
	model := readModel(t)
	u, root := newUploader(t)
	ctx, cancel := context.WithCancel(t.Context())
	// Cancel once half the file has been read.
	r := &cancelAt{r: bytes.NewReader(model), at: int64(len(model) / 2), cancel: cancel}
	if _, err := u.Upload(ctx, r, int64(len(model))); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if files := storedFiles(t, root); len(files) != 0 {
		t.Errorf("left behind %v", files)
	}
	if n := countArtifacts(t, u.Store); n != 0 {
		t.Errorf("%d artifacts recorded", n)
	}
}

// cancelAt calls cancel once at bytes have been read through it.
type cancelAt struct {
	r      io.Reader
	n, at  int64
	cancel context.CancelFunc
}

func (c *cancelAt) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n += int64(n); c.n >= c.at {
		c.cancel()
	}
	return n, err
}

// TestUploadRepairsMissingObject: when an artifact's object vanished from
// the store, uploading the same bytes again points the artifact at the new
// object instead of returning one runners cannot fetch.
func TestUploadRepairsMissingObject(t *testing.T) {
	model := readModel(t)
	u, _ := newUploader(t)
	ctx := t.Context()
	a, err := u.Upload(ctx, bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Blobs.Delete(ctx, a.ObjectKey); err != nil {
		t.Fatal(err)
	}
	b, err := u.Upload(ctx, bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatal(err)
	}
	if b.ObjectKey == a.ObjectKey || b.SHA256 != a.SHA256 {
		t.Fatalf("re-upload returned %+v, want the same digest at a new object", b)
	}
	if !bytes.Equal(readObject(t, u.Blobs, b.ObjectKey), model) {
		t.Error("repaired object differs from the upload")
	}
	if got, err := u.Store.GetArtifact(ctx, a.SHA256); err != nil || got.ObjectKey != b.ObjectKey {
		t.Errorf("registry still points at %+v (%v)", got, err)
	}
}

// TestUploadRecordsPooling: an embedding model's pooling type is recorded
// at upload, so the activator knows the model makes no text without
// starting a runner; a generative model records none.
func TestUploadRecordsPooling(t *testing.T) {
	u, _ := newUploader(t)
	c := ggufgen.Small
	c.Name = "ggufgen-small-embed"
	c.KV = map[string]any{"llama.pooling_type": uint32(1)}
	var buf bytes.Buffer
	if err := ggufgen.Write(&buf, c); err != nil {
		t.Fatal(err)
	}
	a, err := u.Upload(t.Context(), bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	if a.Pooling != "mean" || !ggufinfo.EmbeddingOnly(a.Architecture, a.Pooling) {
		t.Errorf("pooled model recorded as %+v", a)
	}
	if got, err := u.Store.GetArtifact(t.Context(), a.SHA256); err != nil || got.Pooling != "mean" {
		t.Errorf("GetArtifact = %+v, %v", got, err)
	}
	model := readModel(t)
	b, err := u.Upload(t.Context(), bytes.NewReader(model), int64(len(model)))
	if err != nil {
		t.Fatal(err)
	}
	if b.Pooling != "" || ggufinfo.EmbeddingOnly(b.Architecture, b.Pooling) {
		t.Errorf("generative model recorded as %+v", b)
	}
}
