package runner

// The KV cache grows with the work instead of being sized for the settings.
//
// A llama context's KV cache is one pool of cells that all of its sequences
// share (in this llama.cpp a sequence may take any free cell; the per-
// sequence context only bounds how long one sequence may grow). llama.cpp
// zeroes the whole pool when it creates the context, and on these machines
// first touching memory costs ~3 s per GiB (page faults under the
// hypervisor): an ~85M F16 model at --parallel 16 × 2048 tokens spent
// ~3 s of its 3.3 s cold start creating a 960 MiB pool, and its 838 MiB
// compute buffer, sized from the pool, was touched again by the first
// decode. Nothing in a cold start needs that pool: a burst of 16 short
// chats uses well under 1,024 cells.
//
// So a decoder starts with a small pool (kvInitialCells) and, when the
// cells its sequences hold plus what they are about to need pass three
// quarters of it, builds a larger context in the background while the
// small one keeps decoding, then moves every sequence's cells into it
// between two steps (copySequence) and frees the small one. A step never
// takes more cells than are free: decoding sequences come first, prompt
// chunks take what is left, and if nothing fits the step waits for the
// larger pool.

const (
	// kvInitialCells is a new context's pool: a burst of 16 requests
	// of ~50 prompt and 16 output tokens fits, and on the ~85M model it
	// is 30 MiB instead of 960.
	kvInitialCells = 1024
	// kvAlign rounds pool sizes (llama.cpp pads to 32, or 256 with
	// flash attention).
	kvAlign = 256
	// kvLookahead is the cells a decoding sequence is counted as about
	// to need when deciding to grow, so the larger pool is being built
	// before the current one fills (building 960 MiB takes seconds).
	kvLookahead = 32
)

// initialCells is the pool a context starts with, given the most it may
// ever need (sequences × tokens per sequence) and the configured start
// (zero: kvInitialCells; negative: all of it at once).
func initialCells(maxCells, configured int) int {
	switch {
	case configured < 0:
		return maxCells
	case configured == 0:
		configured = kvInitialCells
	}
	return min(maxCells, alignCells(configured))
}

// growTarget is the pool to grow to when need cells are held or about to
// be, or 0 when cells is enough: growth starts at three quarters full, at
// least doubles (a handful of growths reach any size), and never passes
// maxCells.
func growTarget(cells, maxCells, need int) int {
	if cells >= maxCells || 4*need <= 3*cells {
		return 0
	}
	return min(maxCells, alignCells(max(2*cells, need+need/2)))
}

func alignCells(n int) int { return (n + kvAlign - 1) / kvAlign * kvAlign }

// kvNeed counts the cells a decoder's sequences hold (used) and the cells
// they will need soon on top (soon): the rest of each admitted prompt and
// kvLookahead for each decoding sequence. Idle slots hold their cached
// prefix.
func kvNeed(slots []slot) (used, soon int) {
	for i := range slots {
		sl := &slots[i]
		s := sl.seq
		if s == nil {
			used += len(sl.cached)
			continue
		}
		used += s.nPast
		if s.decoding {
			soon += kvLookahead
		} else {
			soon += len(s.prompt) - s.prefilled
		}
	}
	return used, soon
}
