package jsonschema

import (
	"fmt"
	"strconv"
	"strings"
)

// The grammar is built as data (rules of alternatives of symbols), checked
// (check.go), and only then written out as GBNF text for llama.cpp.

type symKind uint8

const (
	symLit   symKind = iota // a literal string
	symClass                // one character from a set
	symRef                  // another rule
)

// unbounded is a symbol's max for * and +.
const unbounded = -1

// sym is one symbol of a sequence, repeated min..max times (1..1 unless a
// quantifier says otherwise).
type sym struct {
	kind     symKind
	lit      string
	class    charSet
	ref      int
	min, max int
}

type seq []sym

type rule struct {
	name     string
	numbered bool // the name is a prefix; the rule's index follows it
	alts     []seq
}

// ruleName is the rule's name in the grammar text.
func (g *grammar) ruleName(i int) string {
	r := g.rules[i]
	if !r.numbered {
		return r.name
	}
	return r.name + strconv.Itoa(i)
}

// grammar is a set of rules; rule 0 is root.
type grammar struct {
	rules []rule
	named map[string]int // shared rules by name (string, number, ...)
	refOf map[int]string // the rule of each $ref, for messages
}

// describe names a rule for an error message: by its $ref where it has
// one, so the message points into the user's schema, not the grammar.
func (g *grammar) describe(i int) string {
	if r, ok := g.refOf[i]; ok {
		return fmt.Sprintf("$ref %q", r)
	}
	return "part of the schema"
}

func newGrammar() *grammar {
	g := &grammar{named: map[string]int{}, refOf: map[int]string{}}
	g.rules = append(g.rules, rule{name: "root"})
	return g
}

// add reserves a rule and returns its index; set fills it in later (so a
// $ref can point at a rule still being built).
func (g *grammar) add(prefix string) int {
	g.rules = append(g.rules, rule{name: prefix, numbered: true})
	return len(g.rules) - 1
}

func (g *grammar) set(i int, alts ...seq) { g.rules[i].alts = alts }

// rule returns a symbol for a new rule with these alternatives, or the
// only symbol itself where a rule would add nothing.
func (g *grammar) alt(prefix string, alts ...seq) sym {
	if len(alts) == 1 && len(alts[0]) == 1 {
		return alts[0][0]
	}
	i := g.add(prefix)
	g.set(i, alts...)
	return ref(i)
}

// shared returns the rule of a given name, building it once.
func (g *grammar) shared(name string, build func(i int)) sym {
	if i, ok := g.named[name]; ok {
		return ref(i)
	}
	g.rules = append(g.rules, rule{name: name})
	i := len(g.rules) - 1
	g.named[name] = i
	build(i)
	return ref(i)
}

func lit(s string) sym    { return sym{kind: symLit, lit: s, min: 1, max: 1} }
func class(c charSet) sym { return sym{kind: symClass, class: c, min: 1, max: 1} }
func ref(i int) sym       { return sym{kind: symRef, ref: i, min: 1, max: 1} }
func (s sym) rep(lo, hi int) sym {
	s.min, s.max = lo, hi
	return s
}

// repeat returns s repeated lo..hi times as one symbol, wrapping s in a rule
// when it already carries a quantifier.
func (g *grammar) repeat(s sym, lo, hi int) sym {
	if s.min != 1 || s.max != 1 {
		i := g.add("rep")
		g.set(i, seq{s})
		s = ref(i)
	}
	return s.rep(lo, hi)
}

// cost estimates the grammar's size in llama.cpp's elements after it
// expands repetitions: S{m,n} becomes m copies of S and n-m rules of S
// plus three elements each.
func (g *grammar) cost() int {
	total := 0
	for _, r := range g.rules {
		for _, a := range r.alts {
			total += 2 // alternative and end markers
			for _, s := range a {
				total += s.cost()
			}
		}
	}
	return total
}

func (s sym) cost() int {
	base := 1
	switch s.kind {
	case symLit:
		base = max(1, len([]rune(s.lit)))
	case symClass:
		base = max(1, 2*len(s.class))
	}
	opt := 1
	if s.max != unbounded {
		opt = s.max - s.min
	}
	return base*max(1, s.min) + opt*(base+3)
}

// String writes the grammar as GBNF.
func (g *grammar) String() string {
	var b strings.Builder
	for ri, r := range g.rules {
		b.WriteString(g.ruleName(ri))
		b.WriteString(" ::= ")
		for i, a := range r.alts {
			if i > 0 {
				b.WriteString(" | ")
			}
			if len(a) == 0 {
				b.WriteString(`""`)
			}
			for j, s := range a {
				if j > 0 {
					b.WriteByte(' ')
				}
				g.writeSym(&b, s)
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (g *grammar) writeSym(b *strings.Builder, s sym) {
	switch s.kind {
	case symLit:
		b.WriteByte('"')
		for _, r := range s.lit {
			writeChar(b, r, false)
		}
		b.WriteByte('"')
	case symClass:
		b.WriteByte('[')
		for _, rg := range s.class {
			writeChar(b, rg.lo, true)
			if rg.hi != rg.lo {
				b.WriteByte('-')
				writeChar(b, rg.hi, true)
			}
		}
		b.WriteByte(']')
	case symRef:
		b.WriteString(g.ruleName(s.ref))
	}
	switch {
	case s.min == 1 && s.max == 1:
	case s.min == 0 && s.max == 1:
		b.WriteByte('?')
	case s.min == 0 && s.max == unbounded:
		b.WriteByte('*')
	case s.min == 1 && s.max == unbounded:
		b.WriteByte('+')
	case s.max == unbounded:
		fmt.Fprintf(b, "{%d,}", s.min)
	case s.min == s.max:
		fmt.Fprintf(b, "{%d}", s.min)
	default:
		fmt.Fprintf(b, "{%d,%d}", s.min, s.max)
	}
}

// writeChar writes one character of a literal or class. Letters, digits
// and plain punctuation are written as themselves; everything llama.cpp's
// parser treats specially, and everything outside printable ASCII, as a
// hex escape, so the text needs no other quoting rules.
func writeChar(b *strings.Builder, r rune, inClass bool) {
	plain := r > 0x20 && r < 0x7f && r != '"' && r != '\\' && r != '#'
	if inClass {
		plain = plain && r != '[' && r != ']' && r != '-' && r != '^'
	}
	switch {
	case plain:
		b.WriteRune(r)
	case r <= 0xff:
		fmt.Fprintf(b, `\x%02X`, r)
	case r <= 0xffff:
		fmt.Fprintf(b, `\u%04X`, r)
	default:
		fmt.Fprintf(b, `\U%08X`, r)
	}
}
