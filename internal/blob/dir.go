package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Dir is a Store kept in a local directory: each key is a file under root.
// It suits single-machine setups where the registry and the runners share a
// file system.
type Dir struct {
	root string
}

var _ Store = (*Dir)(nil)

// NewDir returns a Store rooted at root, creating the directory if needed.
func NewDir(root string) (*Dir, error) {
	// An absolute root keeps keys pointing at the same files even if the
	// process changes its working directory later.
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("resolving blob dir %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("creating blob dir: %w", err)
	}
	return &Dir{root: abs}, nil
}

// Put writes r to a temporary file next to the key's final path and renames
// it into place only once everything was written and synced, so readers see
// either the whole object or none of it, never a prefix.
func (d *Dir) Put(ctx context.Context, key string, r io.Reader, size int64) (err error) {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("put %q: creating directory: %w", key, err)
	}
	// The leading dot and suffix keep temp files apart from real keys; they
	// are in the same directory so the rename cannot cross file systems.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	src := io.Reader(ctxReader{ctx: ctx, r: r})
	if size >= 0 {
		// One byte past size is enough to notice a reader longer than
		// promised without copying an unbounded stream.
		src = io.LimitReader(src, size+1)
	}
	n, err := io.Copy(f, src)
	if err != nil {
		return fmt.Errorf("put %q: writing: %w", key, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("put %q: reader gave %d bytes, want %d", key, n, size)
	}
	// Without the sync a crash right after the rename can leave a
	// truncated file at key on some file systems.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("put %q: syncing: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("put %q: closing: %w", key, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// Open returns the file at key and its size.
func (d *Dir) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	f, size, err := d.openFile(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return f, size, nil
}

func (d *Dir) openFile(ctx context.Context, key string) (*os.File, int64, error) {
	path, err := d.path(key)
	if err != nil {
		return nil, 0, err
	}
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("open %q: %w", key, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, notFound("open", key, err)
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		err = fs.ErrNotExist
	}
	if err != nil {
		f.Close()
		return nil, 0, notFound("open", key, err)
	}
	return f, fi.Size(), nil
}

// OpenRange returns n bytes of the file at key from offset off. Each call
// has its own file descriptor and reads with pread (a SectionReader), so
// parallel parts never share a file offset.
func (d *Dir) OpenRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := checkRange(key, off, n); err != nil {
		return nil, err
	}
	f, _, err := d.openFile(ctx, key)
	if err != nil {
		return nil, err
	}
	return newExactReader(sectionFile{io.NewSectionReader(ctxReaderAt{ctx, f}, off, n), f}, key, n), nil
}

// sectionFile is a range of an open file that closes the file.
type sectionFile struct {
	*io.SectionReader
	io.Closer
}

// ctxReaderAt stops a long ranged read once ctx is done.
type ctxReaderAt struct {
	ctx context.Context
	r   io.ReaderAt
}

func (c ctxReaderAt) ReadAt(p []byte, off int64) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.ReadAt(p, off)
}

// Stat returns the size of the file at key.
func (d *Dir) Stat(ctx context.Context, key string) (int64, error) {
	path, err := d.path(key)
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("stat %q: %w", key, err)
	}
	fi, err := os.Stat(path)
	if err == nil && fi.IsDir() {
		err = fs.ErrNotExist
	}
	if err != nil {
		return 0, notFound("stat", key, err)
	}
	return fi.Size(), nil
}

// Delete removes the file at key. Emptied parent directories stay: removing
// them would race with a concurrent Put that just created them.
func (d *Dir) Delete(ctx context.Context, key string) error {
	path, err := d.path(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	if err := os.Remove(path); err != nil && !isNotExist(err) {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

func (d *Dir) path(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	return filepath.Join(d.root, filepath.FromSlash(key)), nil
}

// checkKey refuses keys that could escape the store or that name the same
// object in several spellings. S3 applies it too, so a key accepted by one
// Store is accepted by every Store.
func checkKey(key string) error {
	switch {
	case key == "":
		return errors.New("invalid blob key: empty")
	case strings.HasPrefix(key, "/"):
		return fmt.Errorf("invalid blob key %q: absolute", key)
	case strings.ContainsAny(key, "\\\x00"):
		return fmt.Errorf("invalid blob key %q: backslash or NUL", key)
	}
	for seg := range strings.SplitSeq(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("invalid blob key %q: empty, . or .. segment", key)
		}
	}
	return nil
}

// isNotExist also counts ENOTDIR: a key below an existing object ("a/b" when
// "a" is a file) does not exist either.
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func notFound(op, key string, err error) error {
	if isNotExist(err) {
		return fmt.Errorf("%s %q: %w", op, key, ErrNotFound)
	}
	return fmt.Errorf("%s %q: %w", op, key, err)
}

// ctxReader stops a long copy once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
