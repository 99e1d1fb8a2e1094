package runner

import (
	"context"
	"syscall"
	"testing"

	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// niceSink records the nice value of the thread the engine delivers
// tokens on: the decode thread.
type niceSink struct {
	nice chan int
	done chan struct{}
}

func (s *niceSink) Start(int) {}
func (s *niceSink) Deliver([]byte) {
	// The raw syscall returns 20 - nice.
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
	if err != nil {
		prio = 100 // impossible nice: the test fails
	}
	select {
	case s.nice <- 20 - prio:
	default:
	}
}
func (s *niceSink) Finish(string, wire.Usage, error) { close(s.done) }

// TestDecodeNice: decode threads run at DecodeNice, and only they: the
// thread that submits (as the runner's job intake does) keeps its priority.
func TestDecodeNice(t *testing.T) {
	base, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	baseNice := 20 - base
	for _, want := range []int{0, 7} {
		e := startEngine(t, EngineConfig{ModelPath: testenv.ModelPath(t), Parallel: 2, Context: 256, DecodeNice: want})
		s := &niceSink{nice: make(chan int, 1), done: make(chan struct{})}
		if _, err := e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 4, Sampling: greedy()}, s); err != nil {
			t.Fatal(err)
		}
		<-s.done
		got := <-s.nice
		wantNice := want
		if want == 0 {
			wantNice = baseNice // left alone
		}
		if got != wantNice {
			t.Errorf("DecodeNice %d: decode thread at nice %d, want %d", want, got, wantNice)
		}
		prio, _ := syscall.Getpriority(syscall.PRIO_PROCESS, syscall.Gettid())
		if 20-prio != baseNice && want != 0 {
			// This goroutine may run on any thread but never a locked
			// decode thread.
			t.Errorf("a non-decode thread is at nice %d, want %d", 20-prio, baseNice)
		}
	}
}
