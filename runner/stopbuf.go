package runner

import (
	"bytes"
	"unicode/utf8"
)

// stopBuffer sits between the sampler and the client. It holds back the
// bytes that may not be sent yet: the tail of an unfinished UTF-8 character
// (a token can end in the middle of one) and any suffix that could still
// grow into a stop string (a partial stop string is never emitted).
type stopBuffer struct {
	stops [][]byte
	held  []byte
	// spare is the second half of a double buffer: what emit returns stays
	// valid while the held tail moves to the other array, so steady-state
	// generation allocates nothing here.
	spare []byte
}

func newStopBuffer(stops []string) stopBuffer {
	b := stopBuffer{held: make([]byte, 0, 64), spare: make([]byte, 0, 64)}
	for _, s := range stops {
		if s != "" {
			b.stops = append(b.stops, []byte(s))
		}
	}
	return b
}

// add appends generated text and returns what may be emitted now and
// whether a stop string was reached (in which case out is everything before
// it and the rest is dropped). out aliases the buffer: use it before the
// next call.
func (b *stopBuffer) add(piece string) (out []byte, stopped bool) {
	b.held = append(b.held, piece...)
	if cut, ok := b.firstStop(); ok {
		out = b.held[:cut]
		b.held = b.held[:0]
		return out, true
	}
	safe := len(b.held) - b.partialStopLen()
	safe = completeRunes(b.held[:safe])
	if safe == 0 {
		return nil, false
	}
	return b.emit(safe), false
}

// emit returns the first n held bytes and keeps the rest held, moving the
// tail to the spare array so the returned slice stays valid until the next
// add.
func (b *stopBuffer) emit(n int) []byte {
	out := b.held[:n:n]
	b.spare = append(b.spare[:0], b.held[n:]...)
	b.held, b.spare = b.spare, b.held
	return out
}

// flush returns what is still held at the end of generation: a partial stop
// string that never completed is real output, but an unfinished UTF-8
// character is not text and is dropped.
func (b *stopBuffer) flush() []byte {
	out := b.held[:completeRunes(b.held)]
	b.held = b.held[:0]
	return out
}

func (b *stopBuffer) firstStop() (int, bool) {
	first := -1
	for _, s := range b.stops {
		if i := bytes.Index(b.held, s); i >= 0 && (first < 0 || i < first) {
			first = i
		}
	}
	return first, first >= 0
}

// partialStopLen is the length of the longest suffix of held that is a
// proper prefix of a stop string.
func (b *stopBuffer) partialStopLen() int {
	longest := 0
	for _, s := range b.stops {
		for n := min(len(s)-1, len(b.held)); n > longest; n-- {
			if bytes.HasSuffix(b.held, s[:n]) {
				longest = n
				break
			}
		}
	}
	return longest
}

// completeRunes returns the length of the longest prefix of p that does not
// end inside a multi-byte UTF-8 character.
func completeRunes(p []byte) int {
	// A character is at most 4 bytes, so only the last 3 can start one
	// that is still incomplete.
	for i := len(p) - 1; i >= 0 && i >= len(p)-3; i-- {
		if utf8.RuneStart(p[i]) {
			if utf8.FullRune(p[i:]) {
				return len(p)
			}
			return i
		}
	}
	return len(p)
}
