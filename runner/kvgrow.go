package runner

import (
	"fmt"
	"time"

	"github.com/ollama/ollama/llama"
)

// How a decoder's KV pool grows (the policy is in kvpool.go): a larger
// context is built off the decode loop, and the loop adopts it between two
// steps.

// grownContext is a larger context built in the background.
type grownContext struct {
	lctx  *llama.Context
	cells int
	took  time.Duration
	err   error
}

// newContext creates a llama context whose KV pool has cells cells shared
// by seqs sequences.
func newContext(model *llama.Model, cells, batch, seqs, threads int) (*llama.Context, error) {
	params := llama.NewContextParams(cells, batch, seqs, threads, false, "")
	lctx, err := llama.NewContextWithModel(model, params)
	if err != nil {
		return nil, fmt.Errorf("creating llama context (%d KV cells for %d sequences): %w", cells, seqs, err)
	}
	return lctx, nil
}

// startGrowth starts building a context of cells cells, unless one is
// being built or the pool is that big already. Creating a context reads
// the model and writes only the new context, so it runs beside the
// decode loop's steps on the current one.
func (d *decoder) startGrowth(cells int) {
	if d.growTo != 0 || cells <= d.cells {
		return
	}
	d.growTo = cells
	go func() {
		start := time.Now()
		lctx, err := newContext(d.model, cells, d.batchCap, d.parallel, d.threads)
		d.grown <- grownContext{lctx: lctx, cells: cells, took: time.Since(start), err: err}
	}()
}

// adoptGrown moves every sequence into the larger context once it is
// built, waiting for it when wait is set, and frees the smaller one. It
// reports whether the pool is now larger (with wait set: false when no
// growth was under way or it failed).
func (d *decoder) adoptGrown(slots []slot, wait bool) bool {
	if d.growTo == 0 {
		return false
	}
	var g grownContext
	if wait {
		g = <-d.grown
	} else {
		select {
		case g = <-d.grown:
		default:
			return false
		}
	}
	d.growTo = 0
	if g.err != nil {
		// Serve within the pool there is; a later need tries again.
		d.log.Error("growing the KV cache failed; serving with the cells there are", "cells", d.cells, "want", g.cells, "err", g.err)
		d.maxCells = d.cells
		return false
	}
	start := time.Now()
	moved := 0
	for i := range slots {
		sl := &slots[i]
		held := len(sl.cached)
		if sl.seq != nil {
			held = sl.seq.nPast
		}
		if held == 0 {
			continue
		}
		var err error
		d.stateBuf, err = copySequence(d.lctx, g.lctx, i, d.stateBuf)
		switch {
		case err == nil:
			moved += held
		case sl.seq == nil:
			sl.cached = sl.cached[:0] // only a cached prefix is lost
		default:
			d.finish(sl, "", fmt.Errorf("moving the sequence to a larger KV cache: %w", err))
		}
	}
	freeContext(d.lctx)
	from := d.cells
	d.lctx, d.cells = g.lctx, g.cells
	d.kvCells.Store(int64(g.cells))
	if cap(d.stateBuf) > 64<<20 {
		d.stateBuf = nil // a long sequence's copy is not worth keeping
	}
	d.log.Info("KV cache grown", "from", from, "to", g.cells, "built", g.took, "moved_cells", moved, "move", time.Since(start))
	return true
}

// dropCached frees the cells that idle slots keep for prefix reuse and
// returns how many.
func (d *decoder) dropCached(slots []slot) int {
	n := 0
	for i := range slots {
		sl := &slots[i]
		if sl.seq == nil && len(sl.cached) > 0 {
			d.lctx.KvCacheSeqRm(i, 0, -1)
			n += len(sl.cached)
			sl.cached = sl.cached[:0]
		}
	}
	return n
}

// undoStep puts every sequence back where it was before fillBatch, for a
// step llama.cpp did not decode.
func (d *decoder) undoStep(slots []slot) {
	for i := range slots {
		if s := slots[i].seq; s != nil {
			s.nPast, s.prefilled = s.before[0], s.before[1]
			s.batchIdx = -1
		}
	}
}

// failAll ends every running sequence with err.
func (d *decoder) failAll(slots []slot, err error) {
	for i := range slots {
		if slots[i].seq != nil {
			d.finish(&slots[i], "", err)
		}
	}
}
