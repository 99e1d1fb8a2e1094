package jsonschema

import (
	"math/rand/v2"
	"strings"
)

// sample writes a random document the grammar allows: the tests parse
// samples as JSON and check them against the schema, which shows the
// grammar allows no more than the schema does.
func sample(g *grammar, rng *rand.Rand) string {
	// height[i]: the fewest nested rules rule i needs to finish, so deep
	// samples can take the way out.
	const inf = 1 << 30
	height := make([]int, len(g.rules))
	for i := range height {
		height[i] = inf
	}
	altHeight := func(a seq) int {
		h := 0
		for _, s := range a {
			if s.kind == symRef && s.min > 0 {
				h = max(h, height[s.ref]+1)
			}
		}
		return h
	}
	for changed := true; changed; {
		changed = false
		for i, r := range g.rules {
			for _, a := range r.alts {
				if h := altHeight(a); h < height[i] {
					height[i], changed = h, true
				}
			}
		}
	}
	var b strings.Builder
	var walk func(i, depth int)
	walkSym := func(s sym, depth int) {
		n := s.min
		hi := s.max
		if hi == unbounded {
			hi = s.min + 3
		}
		if depth < 8 && hi > n {
			n += rng.IntN(min(hi-n, 4) + 1)
		}
		for range n {
			switch s.kind {
			case symLit:
				b.WriteString(s.lit)
			case symClass:
				rg := s.class[rng.IntN(len(s.class))]
				b.WriteRune(rg.lo + rune(rng.Int64N(int64(rg.hi-rg.lo)+1)))
			case symRef:
				walk(s.ref, depth+1)
			}
		}
	}
	walk = func(i, depth int) {
		alts := g.rules[i].alts
		a := alts[rng.IntN(len(alts))]
		if depth > 8 {
			for _, x := range alts {
				if altHeight(x) < altHeight(a) {
					a = x
				}
			}
		}
		for _, s := range a {
			walkSym(s, depth)
		}
	}
	walk(0, 0)
	return b.String()
}
