package runner

/*
#include <stdint.h>
typedef void (*infer_log_cb)(int level, const char * text, void * user_data);
void llama_log_set(infer_log_cb log_callback, void * user_data);
extern void inferLlamaLog(int level, char * text, void * user_data);
// The ollama llama package's own callback, which it installs at init.
extern void llamaLog(int level, char * text, void * user_data);

static void infer_llama_log_to(uintptr_t h) { llama_log_set((infer_log_cb)inferLlamaLog, (void *)h); }
static void infer_llama_log_reset(void) { llama_log_set((infer_log_cb)llamaLog, 0); }
*/
import "C"

import (
	"context"
	"io"
	"log/slog"
	"runtime/cgo"
	"strings"
	"sync"
	"time"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// llama.cpp's log levels (ggml.h, enum ggml_log_level).
const (
	ggmlInfo  = 2
	ggmlWarn  = 3
	ggmlError = 4
	ggmlCont  = 5 // continues the previous message
)

// llamaLogSink receives llama.cpp's log while a runner runs. Everything
// still goes to stderr as the ollama package's callback wrote it (raw
// text, when slog's default level lets it through); warnings and errors
// are also published with the runner's log, one line per message, so
// that `infer logs` says why llama.cpp refused a model ("the runner's log
// says why"). Its info chatter (~100 lines per model load) is not: it
// would push the runner's own lines out of a tail.
type llamaLogSink struct {
	mu      sync.Mutex
	stderr  io.Writer
	enabled func(slog.Level) bool
	q       *logRing
	level   int    // of the message being assembled
	line    []byte // a warning or error not yet ended by a newline
}

func llamaSlogLevel(level int) slog.Level { return slog.Level((level - ggmlInfo) * 4) }

func (s *llamaLogSink) write(level int, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if level == ggmlCont {
		level = s.level
	} else if len(s.line) > 0 {
		s.publish() // a new message ends one left without a newline
	}
	s.level = level
	if s.enabled(llamaSlogLevel(level)) {
		io.WriteString(s.stderr, text)
	}
	if level < ggmlWarn || level > ggmlError {
		return
	}
	for text != "" {
		part, rest, full := strings.Cut(text, "\n")
		if len(s.line)+len(part) <= queue.LogMaxLine {
			s.line = append(s.line, part...)
		}
		if !full {
			return
		}
		s.publish()
		text = rest
	}
}

func (s *llamaLogSink) publish() {
	msg := strings.TrimSpace(string(s.line))
	s.line = s.line[:0]
	if msg == "" {
		return
	}
	s.q.push(renderLogLine(wire.LogLine{Time: time.Now(), Level: llamaSlogLevel(s.level).String(), Msg: msg,
		Attrs: []wire.LogAttr{{Key: "source", Value: "llama.cpp"}}}))
}

// captureLlamaLog routes llama.cpp's log to s until the returned function
// is called, which puts the ollama package's callback back. llama.cpp has
// one callback per process; a process runs one runner (tests that run
// several in one process see llama.cpp's lines under the last one's).
func captureLlamaLog(s *llamaLogSink) (restore func()) {
	h := cgo.NewHandle(s)
	C.infer_llama_log_to(C.uintptr_t(h))
	return func() {
		C.infer_llama_log_reset()
		// A log call already past reading the callback may still use
		// the handle: keep it a moment.
		time.AfterFunc(time.Second, h.Delete)
	}
}

// enabledByDefault is what the ollama package's callback checks.
func enabledByDefault(l slog.Level) bool { return slog.Default().Enabled(context.Background(), l) }
