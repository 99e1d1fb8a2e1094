package registry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"
	"math"
	"math/bits"

	"github.com/ollama/ollama/fs/ggml"

	ggufinfo "github.com/infer-run/infer/internal/gguf"
)

// ErrInvalidWeights is wrapped by every error about the content of uploaded
// weights (as opposed to failures reading or storing them); the message
// after it is meant for the user who uploaded the file.
var ErrInvalidWeights = errors.New("invalid weights")

// ModelInfo is what a GGUF header says about the model (one definition,
// in internal/gguf, shared with the runner).
type ModelInfo = ggufinfo.ModelInfo

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidWeights, fmt.Sprintf(format, args...))
}

// Inspect reads a GGUF file from r in one forward pass — header, tensor
// infos, and past every tensor's data — and describes the model. It keeps
// only the header's metadata in memory, not its arrays (the vocabulary) nor
// any tensor data, so r can be an upload of many gigabytes. It returns the number of bytes it read from r:
// at least the end of the last tensor, possibly up to a few KiB beyond.
//
// A file that is not GGUF, is cut short or whose header is malformed or
// implausible yields an error wrapping ErrInvalidWeights. An error from r
// itself is returned wrapped as it is.
func Inspect(r io.Reader) (ModelInfo, int64, error) {
	src := &countingReader{r: r}
	guard := newHeaderGuard(src)
	defer guard.close()
	f, err := decode(newStreamSeeker(guard))
	switch {
	case guard.err != nil:
		// The guard's verdict is the root cause even when Decode reports
		// the failed read in its own words.
		return ModelInfo{}, src.n, guard.err
	case src.err != nil:
		return ModelInfo{}, src.n, fmt.Errorf("reading the weights: %w", src.err)
	case err != nil:
		return ModelInfo{}, src.n, invalidf("malformed GGUF file: %v", err)
	case !guard.done:
		// Decode finished a header the check has not: they disagree about
		// the format, and the limits were not enforced to the end.
		return ModelInfo{}, src.n, invalidf("malformed GGUF header")
	}

	kv := f.KV()
	info := ggufinfo.Describe(f)
	switch {
	case info.Architecture == "":
		return ModelInfo{}, src.n, invalidf("the GGUF file does not name its architecture (general.architecture)")
	case kv.Kind() == "adapter":
		return ModelInfo{}, src.n, invalidf("the GGUF file is a LoRA adapter, not a model")
	case len(f.Tensors().Items()) == 0:
		return ModelInfo{}, src.n, invalidf("the GGUF file holds no tensors (a vocabulary-only file?)")
	}
	if err := checkModel(info.Architecture, &guard.check.meta); err != nil {
		return ModelInfo{}, src.n, err
	}
	return info, src.n, nil
}

// decode runs ggml.Decode, turning a panic on hostile input into an error.
// maxArraySize 0 keeps no array values (the vocabulary is most of a
// header), only their lengths.
func decode(rs io.ReadSeeker) (f *ggml.GGML, err error) {
	defer func() {
		if p := recover(); p != nil {
			f, err = nil, invalidf("malformed GGUF header (%v)", p)
		}
	}()
	return ggml.Decode(rs, 0)
}

// countingReader counts the bytes read and remembers the first error other
// than EOF, so Inspect can tell a failing upload from a bad file.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// streamSeeker gives ggml.Decode the io.ReadSeeker it wants over a plain
// stream. Decode only moves forward, but it reads through a 32 KiB bufio
// buffer and its Seek(n, io.SeekCurrent) subtracts what is still buffered,
// so the seeks that reach here can go back by up to a buffer. The seeker
// keeps the most recent bytes for that and discards skipped bytes (tensor
// data) without keeping them.
type streamSeeker struct {
	r    io.Reader
	pos  int64  // logical position
	end  int64  // bytes read from r
	hist []byte // the bytes just before end, at most histMax
	skip []byte // buffer for discarding
}

// histMax is comfortably more than Decode's 32 KiB read buffer.
const histMax = 64 << 10

func newStreamSeeker(r io.Reader) *streamSeeker {
	return &streamSeeker{r: r, hist: make([]byte, 0, 2*histMax)}
}

func (s *streamSeeker) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.pos < s.end {
		n := copy(p, s.hist[len(s.hist)-int(s.end-s.pos):])
		s.pos += int64(n)
		return n, nil
	}
	n, err := s.r.Read(p)
	s.remember(p[:n])
	s.end += int64(n)
	s.pos = s.end
	return n, err
}

func (s *streamSeeker) remember(b []byte) {
	if len(b) >= histMax {
		s.hist = append(s.hist[:0], b[len(b)-histMax:]...)
		return
	}
	if len(s.hist)+len(b) > cap(s.hist) {
		keep := histMax - len(b)
		copy(s.hist, s.hist[len(s.hist)-keep:])
		s.hist = s.hist[:keep]
	}
	s.hist = append(s.hist, b...)
}

func (s *streamSeeker) Seek(offset int64, whence int) (int64, error) {
	if whence != io.SeekCurrent {
		return s.pos, fmt.Errorf("stream seeker: only relative seeks are supported (whence %d)", whence)
	}
	target := s.pos + offset
	switch {
	case offset < 0 && (target < s.end-int64(len(s.hist)) || target < 0):
		return s.pos, fmt.Errorf("stream seeker: cannot go back %d bytes", -offset)
	case target <= s.end:
		s.pos = target
		return s.pos, nil
	}
	if s.skip == nil {
		s.skip = make([]byte, 256<<10)
	}
	// The wrapper hides io.Discard's ReaderFrom, which would read in
	// small chunks instead of using our buffer.
	n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, io.LimitReader(s.r, target-s.end), s.skip)
	s.end += n
	s.pos = s.end
	// The skipped bytes are not kept, so nothing before here can be
	// revisited; Decode resets its buffer after a seek and never asks to.
	s.hist = s.hist[:0]
	if err == nil && s.pos < target {
		err = io.ErrUnexpectedEOF
	}
	return s.pos, err
}

// Limits on what a GGUF header may claim. They are far above any real model
// and keep a lying header from making Decode allocate or loop without
// bound: Decode allocates a string's length before reading it, and skips
// the elements of a string array ignoring read errors.
const (
	maxKVs            = 1 << 16
	maxTensors        = 1 << 16
	maxKeyLen         = 1 << 16
	maxStringLen      = 16 << 20 // chat templates are the largest real ones
	maxStringArrayLen = 1 << 22  // vocabularies are ≤ 300K tokens
	maxArrayBytes     = 64 << 20
	maxRetained       = 64 << 20 // keys, string values and tensor names Decode keeps
	maxTensorNameLen  = 63       // llama.cpp's GGML_MAX_NAME less the NUL
	maxDims           = 4        // llama.cpp's GGML_MAX_DIMS
)

// GGUF metadata value types.
const (
	ggufUint8 uint32 = iota
	ggufInt8
	ggufUint16
	ggufInt16
	ggufUint32
	ggufInt32
	ggufFloat32
	ggufBool
	ggufString
	ggufArray
	ggufUint64
	ggufInt64
	ggufFloat64
)

// scalarSize is the encoded size of a fixed-size type, 0 for the others.
func scalarSize(typ uint32) uint64 {
	switch typ {
	case ggufUint8, ggufInt8, ggufBool:
		return 1
	case ggufUint16, ggufInt16:
		return 2
	case ggufUint32, ggufInt32, ggufFloat32:
		return 4
	case ggufUint64, ggufInt64, ggufFloat64:
		return 8
	}
	return 0
}

// headerGuard sits between the upload and Decode and checks the GGUF
// header as its bytes go by, before Decode sees them. A checker that ran
// after Decode would be too late: Decode allocates as soon as it has read a
// length. The check is a plain recursive-descent parser run as a coroutine
// (iter.Pull): each chunk read from the upload is handed to it, and the
// chunk is passed on only once the parser has consumed all of it and asks
// for more. Past the tensor infos the guard only counts bytes, to name a
// truncated file as such.
type headerGuard struct {
	r     io.Reader
	check headerCheck
	next  func() (struct{}, bool)
	stop  func()
	done  bool  // the check has finished
	err   error // sticky verdict
	pos   int64
}

func newHeaderGuard(r io.Reader) *headerGuard {
	g := &headerGuard{r: r}
	g.next, g.stop = iter.Pull(func(yield func(struct{}) bool) {
		g.check.yield = yield
		g.check.err = g.check.run()
	})
	return g
}

func (g *headerGuard) close() { g.stop() }

func (g *headerGuard) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.r.Read(p)
	if !g.done {
		if n > 0 {
			g.check.in = p[:n]
			g.step()
		}
		if err == io.EOF && !g.done {
			g.check.eof = true
			g.step()
		}
		if g.err != nil {
			return 0, g.err
		}
	}
	g.pos += int64(n)
	if err == io.EOF && g.pos < g.check.dataEnd {
		g.err = invalidf("the file ends at byte %d but its tensor data runs to byte %d; was the upload cut off?", g.pos, g.check.dataEnd)
		return n, g.err
	}
	return n, err
}

// step lets the check consume what it was given.
func (g *headerGuard) step() {
	if _, more := g.next(); !more {
		g.done = true
		g.err = g.check.err
	}
}

// headerCheck parses a GGUF header (little-endian, version 2 or 3) from
// the chunks headerGuard feeds it, enforcing the limits above and the rules
// llama.cpp applies when loading, so a file that passes here loads there.
type headerCheck struct {
	in    []byte // the part of the current chunk not yet consumed
	eof   bool
	yield func(struct{}) bool
	err   error

	pos      int64  // bytes consumed
	where    string // what is being read, for truncation messages
	retained int64
	scratch  [8]byte

	// dataEnd is where the last tensor's data ends, once the check has
	// passed the tensor infos.
	dataEnd int64

	// meta is what the model check (ggufcheck.go) needs from the header,
	// collected on the way: Decode keeps neither array lengths nor
	// tensor shapes in a form it exports.
	meta headerMeta
}

// errCheckStopped ends the check when Inspect returns before the header
// was fully read (because Decode failed on its own).
var errCheckStopped = errors.New("header check stopped")

// fill reads exactly len(buf) bytes.
func (c *headerCheck) fill(buf []byte) error {
	for len(buf) > 0 {
		if err := c.wait(); err != nil {
			return err
		}
		n := copy(buf, c.in)
		c.in, buf = c.in[n:], buf[n:]
		c.pos += int64(n)
	}
	return nil
}

// discard consumes n bytes.
func (c *headerCheck) discard(n uint64) error {
	for n > 0 {
		if err := c.wait(); err != nil {
			return err
		}
		k := min(n, uint64(len(c.in)))
		c.in = c.in[k:]
		c.pos += int64(k)
		n -= k
	}
	return nil
}

// wait returns once there is input, suspending the check until the guard
// has more.
func (c *headerCheck) wait() error {
	for len(c.in) == 0 {
		if c.eof {
			return c.truncated()
		}
		if !c.yield(struct{}{}) {
			return errCheckStopped
		}
	}
	return nil
}

func (c *headerCheck) truncated() error {
	switch {
	case c.pos == 0:
		return invalidf("the file is empty")
	case c.where == "magic":
		return invalidf("not a GGUF file: it is only %d bytes long", c.pos)
	}
	return invalidf("the file ends at byte %d, inside the GGUF header (%s); was the upload cut off?", c.pos, c.where)
}

func (c *headerCheck) u32() (uint32, error) {
	err := c.fill(c.scratch[:4])
	return binary.LittleEndian.Uint32(c.scratch[:4]), err
}

func (c *headerCheck) u64() (uint64, error) {
	err := c.fill(c.scratch[:8])
	return binary.LittleEndian.Uint64(c.scratch[:8]), err
}

// length reads a string or array length and checks it against limit.
func (c *headerCheck) length(limit uint64, what string) (uint64, error) {
	at := c.pos
	n, err := c.u64()
	if err != nil {
		return 0, err
	}
	if n > limit {
		return 0, invalidf("the GGUF header claims a %s of %d at byte %d (the limit is %d); the file is corrupt", what, n, at, limit)
	}
	return n, nil
}

// retain accounts for bytes Decode will keep in memory.
func (c *headerCheck) retain(n uint64) error {
	c.retained += int64(n)
	if c.retained > maxRetained {
		return invalidf("the GGUF header's metadata exceeds %d MiB", maxRetained>>20)
	}
	return nil
}

// name reads a string that the check needs to look at (a key or tensor
// name).
func (c *headerCheck) name(limit uint64, what string) (string, error) {
	n, err := c.length(limit, what+" length")
	if err != nil {
		return "", err
	}
	if err := c.retain(n); err != nil {
		return "", err
	}
	b := make([]byte, n)
	if err := c.fill(b); err != nil {
		return "", err
	}
	return string(b), nil
}

func (c *headerCheck) run() error {
	c.where = "magic"
	var magic [4]byte
	if err := c.fill(magic[:]); err != nil {
		return err
	}
	switch string(magic[:]) {
	case "GGUF":
	case "FUGG":
		return invalidf("big-endian GGUF files are not supported")
	case "PK\x03\x04":
		return invalidf("not a GGUF file: this is a zip archive (a PyTorch checkpoint?); convert the model to GGUF with llama.cpp's convert_hf_to_gguf.py")
	default:
		return invalidf("not a GGUF file: bad magic %q, GGUF files start with \"GGUF\"", magic[:])
	}

	c.where = "version"
	version, err := c.u32()
	if err != nil {
		return err
	}
	switch version {
	case 2, 3:
	case 1:
		return invalidf("GGUF version 1 is no longer supported; convert the model again with a current llama.cpp")
	default:
		return invalidf("unsupported GGUF version %d", version)
	}

	c.where = "counts"
	nTensors, err := c.u64()
	if err != nil {
		return err
	}
	nKV, err := c.u64()
	if err != nil {
		return err
	}
	if nTensors > maxTensors {
		return invalidf("the GGUF header claims %d tensors (the limit is %d); the file is corrupt", nTensors, maxTensors)
	}
	if nKV > maxKVs {
		return invalidf("the GGUF header claims %d metadata entries (the limit is %d); the file is corrupt", nKV, maxKVs)
	}

	alignment := uint64(32)
	keys := make(map[string]bool, nKV)
	for i := range nKV {
		c.where = fmt.Sprintf("metadata entry %d of %d", i+1, nKV)
		key, err := c.name(maxKeyLen, "metadata key")
		if err != nil {
			return err
		}
		if keys[key] {
			return invalidf("the GGUF header has the metadata key %q twice", key)
		}
		keys[key] = true
		c.where = fmt.Sprintf("metadata entry %d of %d, %q", i+1, nKV, key)
		typ, err := c.u32()
		if err != nil {
			return err
		}
		if key == "general.alignment" {
			if typ != ggufUint32 {
				return invalidf("general.alignment must be a uint32, not type %d", typ)
			}
			a, err := c.u32()
			if err != nil {
				return err
			}
			if a == 0 || a&(a-1) != 0 {
				return invalidf("general.alignment is %d; it must be a power of two", a)
			}
			alignment = uint64(a)
			continue
		}
		if err := c.value(key, typ); err != nil {
			return err
		}
	}

	names := make(map[string]bool, nTensors)
	var next, dataLen uint64 // expected offset of the next tensor; end of the last
	for i := range nTensors {
		c.where = fmt.Sprintf("tensor info %d of %d", i+1, nTensors)
		name, err := c.name(maxTensorNameLen, "tensor name")
		if err != nil {
			return err
		}
		if names[name] {
			return invalidf("the GGUF file has two tensors named %q", name)
		}
		names[name] = true
		c.where = fmt.Sprintf("tensor info %d of %d, %q", i+1, nTensors, name)
		size, err := c.tensorInfo(name)
		if err != nil {
			return err
		}
		offset, err := c.u64()
		if err != nil {
			return err
		}
		// Decode and llama.cpp both expect the tensors back to back in
		// header order, each aligned; offsets that disagree would make
		// them read different bytes.
		if offset != next {
			return invalidf("tensor %q has data offset %d, expected %d", name, offset, next)
		}
		dataLen = offset + size // both < 2^63
		if dataLen > math.MaxInt64-alignment {
			return invalidf("the tensor data is impossibly large")
		}
		next = dataLen + pad(dataLen, alignment)
	}

	headerEnd := uint64(c.pos)
	c.dataEnd = int64(headerEnd)
	if nTensors > 0 {
		start := headerEnd + pad(headerEnd, alignment)
		if dataLen > math.MaxInt64-start {
			return invalidf("the tensor data is impossibly large")
		}
		c.dataEnd = int64(start + dataLen)
	}
	return nil
}

// value skips one metadata value of type typ, checking its lengths.
func (c *headerCheck) value(key string, typ uint32) error {
	switch {
	case typ == ggufString:
		n, err := c.length(maxStringLen, "string length")
		if err != nil {
			return err
		}
		if err := c.retain(n); err != nil {
			return err
		}
		return c.discard(n)
	case typ == ggufArray:
		elem, err := c.u32()
		if err != nil {
			return err
		}
		switch {
		case elem == ggufString:
			n, err := c.length(maxStringArrayLen, "string array length")
			if err != nil {
				return err
			}
			for range n {
				m, err := c.length(maxStringLen, "string length")
				if err != nil {
					return err
				}
				if err := c.discard(m); err != nil {
					return err
				}
			}
			c.meta.setArray(key, n, nil)
			return nil
		case scalarSize(elem) > 0:
			size := scalarSize(elem)
			n, err := c.length(maxArrayBytes/size, "metadata array length")
			if err != nil {
				return err
			}
			if elem == ggufBool || n > maxKeptArray {
				c.meta.setArray(key, n, nil)
				return c.discard(n * size)
			}
			// Short numeric arrays are per-layer hyperparameters
			// (head counts): keep their values.
			vals := make([]float64, n)
			for i := range vals {
				if vals[i], err = c.scalar(elem); err != nil {
					return err
				}
			}
			c.meta.setArray(key, n, vals)
			return nil
		default:
			return invalidf("metadata %q is an array of unsupported type %d", key, elem)
		}
	case scalarSize(typ) > 0:
		v, err := c.scalar(typ)
		if err != nil {
			return err
		}
		c.meta.setNum(key, v)
		return nil
	}
	return invalidf("metadata %q has unknown type %d", key, typ)
}

// scalar reads one fixed-size value of type typ as a float64 (exact for
// integers below 2^53, far beyond any sane hyperparameter; NaN and the
// infinities survive the conversion from float32).
func (c *headerCheck) scalar(typ uint32) (float64, error) {
	b := c.scratch[:scalarSize(typ)]
	if err := c.fill(b); err != nil {
		return 0, err
	}
	switch typ {
	case ggufUint8, ggufBool:
		return float64(b[0]), nil
	case ggufInt8:
		return float64(int8(b[0])), nil
	case ggufUint16:
		return float64(binary.LittleEndian.Uint16(b)), nil
	case ggufInt16:
		return float64(int16(binary.LittleEndian.Uint16(b))), nil
	case ggufUint32:
		return float64(binary.LittleEndian.Uint32(b)), nil
	case ggufInt32:
		return float64(int32(binary.LittleEndian.Uint32(b))), nil
	case ggufFloat32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), nil
	case ggufUint64:
		return float64(binary.LittleEndian.Uint64(b)), nil
	case ggufInt64:
		return float64(int64(binary.LittleEndian.Uint64(b))), nil
	case ggufFloat64:
		return math.Float64frombits(binary.LittleEndian.Uint64(b)), nil
	}
	return 0, fmt.Errorf("not a scalar type: %d", typ)
}

// tensorInfo reads a tensor's shape and type and returns its data size.
func (c *headerCheck) tensorInfo(name string) (uint64, error) {
	dims, err := c.u32()
	if err != nil {
		return 0, err
	}
	if dims > maxDims {
		return 0, invalidf("tensor %q has %d dimensions; at most %d are supported", name, dims, maxDims)
	}
	elements, first := uint64(1), uint64(1)
	shape := make([]uint64, dims)
	for d := range dims {
		n, err := c.u64()
		if err != nil {
			return 0, err
		}
		shape[d] = n
		if d == 0 {
			first = n
		}
		hi, lo := bits.Mul64(elements, n)
		if hi != 0 || lo > math.MaxInt64 || n > math.MaxInt64 {
			return 0, invalidf("tensor %q has an impossible shape", name)
		}
		elements = lo
	}
	c.meta.setShape(name, shape)
	kind, err := c.u32()
	if err != nil {
		return 0, err
	}
	tt := ggml.TensorType(kind)
	typeSize, blockSize := tt.TypeSize(), tt.BlockSize()
	if typeSize == 0 || blockSize == 0 {
		return 0, invalidf("tensor %q has type %d, which infer does not support", name, kind)
	}
	if first%blockSize != 0 {
		return 0, invalidf("tensor %q: its first dimension (%d) is not a multiple of its type's block size (%d)", name, first, blockSize)
	}
	hi, size := bits.Mul64(elements/blockSize, typeSize)
	if hi != 0 || size > math.MaxInt64 {
		return 0, invalidf("tensor %q is impossibly large", name)
	}
	return size, nil
}

// pad is how far offset is from the next multiple of align (a power of
// two).
func pad(offset, align uint64) uint64 {
	return (align - offset%align) % align
}
