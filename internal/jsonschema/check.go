package jsonschema

import (
	"fmt"
	"unicode/utf8"
)

// check is the safety net between the converter and llama.cpp. llama.cpp's
// sampler throws (and so kills the runner) when it reaches a state that no
// character can continue, and loops forever on left recursion; a grammar
// that passes check has neither:
//
//   - every rule reachable from root exists, has an alternative, and every
//     alternative is productive (derives some finite string), so whatever
//     the sampler has written so far can always be finished;
//   - every character class is non-empty and every literal non-empty,
//     made of valid characters only (no surrogates, no NUL);
//   - no rule reaches itself without writing a character first;
//   - repetition counts are in order and bounded, and the expanded size is
//     under maxGrammarCost.
func (g *grammar) check() error {
	n := len(g.rules)
	if n == 0 {
		return fmt.Errorf("grammar has no root")
	}
	for ri, r := range g.rules {
		if len(r.alts) == 0 {
			return fmt.Errorf("rule %s has no alternative", g.ruleName(ri))
		}
		for _, a := range r.alts {
			for _, s := range a {
				if err := g.checkSym(s); err != nil {
					return fmt.Errorf("rule %s: %w", g.ruleName(ri), err)
				}
			}
		}
	}
	if c := g.cost(); c > maxGrammarCost {
		return fmt.Errorf("grammar too large: %d elements once expanded, the limit is %d", c, maxGrammarCost)
	}

	// Productive rules: those with an alternative whose every symbol is
	// a character, a literal, optional, or a productive rule.
	productive := g.closure(func(s sym) symNeed {
		if s.kind == symRef && s.min > 0 {
			return needRef
		}
		return needNothing
	})
	for i, r := range g.rules {
		for _, a := range r.alts {
			for _, s := range a {
				// A symbol repeated 0..n times may be entered too, so its
				// rule must be productive whatever its min.
				if s.kind == symRef && !productive[s.ref] {
					return fmt.Errorf("%s can never finish: it only leads back to itself (a recursive $ref with no way out)", g.describe(s.ref))
				}
			}
		}
		if !productive[i] {
			return fmt.Errorf("%s can never finish", g.describe(i))
		}
	}

	// Nullable rules (derive the empty string), then left recursion: a
	// rule reaching itself through first symbols that may all be empty.
	nullable := g.closure(func(s sym) symNeed {
		switch {
		case s.min == 0:
			return needNothing
		case s.kind == symRef:
			return needRef
		}
		return needNever
	})
	symNull := func(s sym) bool {
		return s.min == 0 || (s.kind == symRef && nullable[s.ref])
	}
	// A repetition of something that can be empty: llama.cpp expands S*
	// into S' ::= S S' | "", which recurses without end when S matches
	// nothing (a pattern of (a*)* overflowed the runner's stack in the
	// sampler), and S{m,n} into as many ambiguous ways to match.
	for _, r := range g.rules {
		for _, a := range r.alts {
			for _, s := range a {
				if s.kind == symRef && (s.max == unbounded || s.max > 1) && nullable[s.ref] {
					return fmt.Errorf("%s is repeated but can match the empty string (like (a*)* in a pattern)", g.describe(s.ref))
				}
			}
		}
	}
	first := make([][]int, n) // rules each rule may start with
	for i, r := range g.rules {
		for _, a := range r.alts {
			for _, s := range a {
				if s.kind == symRef {
					first[i] = append(first[i], s.ref)
				}
				if !symNull(s) {
					break
				}
			}
		}
	}
	const (
		white = iota
		grey
		black
	)
	color := make([]uint8, n)
	// Iterative depth-first search: the grammar may have thousands of
	// rules, and a recursive one would grow the goroutine stack with them.
	type frame struct{ rule, next int }
	for start := range n {
		if color[start] != white {
			continue
		}
		stack := []frame{{start, 0}}
		color[start] = grey
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if top.next == len(first[top.rule]) {
				color[top.rule] = black
				stack = stack[:len(stack)-1]
				continue
			}
			nx := first[top.rule][top.next]
			top.next++
			switch color[nx] {
			case grey:
				return fmt.Errorf("%s refers to itself before anything is written (left recursion)", g.describe(nx))
			case white:
				color[nx] = grey
				stack = append(stack, frame{nx, 0})
			}
		}
	}
	return nil
}

func (g *grammar) checkSym(s sym) error {
	if s.min < 0 || (s.max != unbounded && (s.max < s.min || s.max > maxRepeat)) || s.min > maxRepeat {
		return fmt.Errorf("repetition {%d,%d} out of bounds", s.min, s.max)
	}
	switch s.kind {
	case symLit:
		if s.lit == "" || !utf8.ValidString(s.lit) {
			return fmt.Errorf("empty or invalid literal")
		}
		for _, r := range s.lit {
			if r == 0 || r == utf8.RuneError || (r >= 0xd800 && r <= 0xdfff) {
				return fmt.Errorf("literal holds character %U", r)
			}
		}
	case symClass:
		if len(s.class) == 0 {
			return fmt.Errorf("empty character class")
		}
		for _, x := range s.class {
			if x.lo < 1 || x.hi > utf8.MaxRune || x.lo > x.hi {
				return fmt.Errorf("character range %U-%U out of bounds", x.lo, x.hi)
			}
			if x.lo <= 0xdfff && x.hi >= 0xd800 {
				return fmt.Errorf("character range %U-%U holds surrogates", x.lo, x.hi)
			}
		}
	case symRef:
		if s.ref < 0 || s.ref >= len(g.rules) {
			return fmt.Errorf("reference to a missing rule")
		}
	default:
		return fmt.Errorf("unknown symbol")
	}
	return nil
}

type symNeed uint8

const (
	needNothing symNeed = iota // the symbol satisfies the property alone
	needRef                    // it does if its rule does
	needNever                  // it never does
)

// closure returns the rules with an alternative whose every symbol
// satisfies a property (need says how), in time linear in the grammar: a
// worklist counts each alternative's unsatisfied rules, where repeating
// the fixed point over all rules took 250 ms on 5,000 properties.
func (g *grammar) closure(need func(sym) symNeed) []bool {
	n := len(g.rules)
	done := make([]bool, n)
	type use struct{ rule, alt int }
	users := make([][]use, n)
	missing := make([][]int, n)
	var work []int
	for i, r := range g.rules {
		missing[i] = make([]int, len(r.alts))
		for j, a := range r.alts {
			for _, s := range a {
				switch need(s) {
				case needRef:
					missing[i][j]++
					users[s.ref] = append(users[s.ref], use{i, j})
				case needNever:
					missing[i][j] = -1 << 30
				}
			}
			if missing[i][j] == 0 && !done[i] {
				done[i] = true
				work = append(work, i)
			}
		}
	}
	for len(work) > 0 {
		x := work[len(work)-1]
		work = work[:len(work)-1]
		for _, u := range users[x] {
			missing[u.rule][u.alt]--
			if missing[u.rule][u.alt] == 0 && !done[u.rule] {
				done[u.rule] = true
				work = append(work, u.rule)
			}
		}
	}
	return done
}
