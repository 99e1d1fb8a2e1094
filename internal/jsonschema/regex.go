package jsonschema

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// pattern compiles a JSON Schema pattern (ECMA-262 syntax) into grammar
// symbols for a string's content. Only a subset is accepted: literals,
// escapes, classes, ., groups, alternation and quantifiers; anchors only
// at the ends; no backreferences, lookaround or word boundaries (a grammar
// cannot express them exactly). A pattern matches anywhere in the string;
// the grammar writes only strings the whole of which match it, a subset.
type patternParser struct {
	g         *grammar
	src       []rune
	pos       int
	depth     int
	atomShape shape // of the last atom parsed
}

// shape bounds how many parse stacks llama.cpp's sampler may keep inside a
// piece of pattern at once (amb), and its width in characters (-1 when it
// varies). A run of optional parts that match the same text, like 500 of
// [a-z ]*, keeps one stack per part alive and llama.cpp's stack handling is
// quadratic in them: that pattern decoded under 32 tokens in a minute.
// Copies of a fixed-width part are told apart by where they start, so
// [a-z]{0,2000} is one stack; copies of a variable one are not.
type shape struct{ amb, width int }

func capAmb(n int) int { return min(n, maxAmbiguity+1) }

type patternError struct{ msg string }

func (e *patternError) Error() string { return e.msg }

func perr(format string, args ...any) error { return &patternError{fmt.Sprintf(format, args...)} }

func (g *grammar) pattern(src string) (sym, error) {
	if len(src) > maxPatternBytes {
		return sym{}, perr("pattern is %d bytes long, the limit is %d", len(src), maxPatternBytes)
	}
	if !utf8.ValidString(src) {
		return sym{}, perr("pattern is not valid UTF-8")
	}
	rs := []rune(src)
	if len(rs) > 0 && rs[0] == '^' {
		rs = rs[1:]
	}
	if n := len(rs); n > 0 && rs[n-1] == '$' {
		bs := 0
		for i := n - 2; i >= 0 && rs[i] == '\\'; i-- {
			bs++
		}
		if bs%2 == 0 {
			rs = rs[:n-1]
		}
	}
	p := &patternParser{g: g, src: rs}
	alts, sh, err := p.alternatives()
	if err != nil {
		return sym{}, err
	}
	if sh.amb > maxAmbiguity {
		return sym{}, perr("the pattern can be read more than %d ways at once: too many optional or repeated parts that can match the same text", maxAmbiguity)
	}
	if p.pos < len(p.src) {
		return sym{}, perr("unbalanced ) at offset %d", p.pos)
	}
	i := g.add("pat")
	g.set(i, alts...)
	return ref(i), nil
}

func (p *patternParser) peek() (rune, bool) {
	if p.pos < len(p.src) {
		return p.src[p.pos], true
	}
	return 0, false
}

func (p *patternParser) alternatives() ([]seq, shape, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxPatternDepth {
		return nil, shape{}, perr("groups nest more than %d deep", maxPatternDepth)
	}
	var alts []seq
	total := shape{amb: 0, width: -2} // -2: no alternative yet
	for {
		s, sh, err := p.sequence()
		if err != nil {
			return nil, shape{}, err
		}
		alts = append(alts, s)
		total.amb = capAmb(total.amb + sh.amb)
		switch {
		case total.width == -2:
			total.width = sh.width
		case total.width != sh.width:
			total.width = -1
		}
		if c, ok := p.peek(); ok && c == '|' {
			p.pos++
			continue
		}
		return alts, total, nil
	}
}

func (p *patternParser) sequence() (seq, shape, error) {
	var out seq
	// All fixed width: the offset tells the parts apart (the largest amb);
	// otherwise any part may be active with any other (the sum).
	sum, most, width := 0, 1, 0
	for {
		c, ok := p.peek()
		if !ok || c == '|' || c == ')' {
			if width >= 0 {
				return out, shape{most, width}, nil
			}
			return out, shape{max(1, sum), -1}, nil
		}
		atom, err := p.atom()
		if err != nil {
			return nil, shape{}, err
		}
		sh := p.atomShape
		lo, hi, quantified, err := p.quantifier()
		if err != nil {
			return nil, shape{}, err
		}
		if quantified {
			if lo == 0 && hi == 0 {
				continue
			}
			atom = p.g.repeat(atom, lo, hi)
			sh = repeatShape(sh, lo, hi)
		}
		sum, most = capAmb(sum+sh.amb), max(most, sh.amb)
		if width >= 0 && sh.width >= 0 {
			width += sh.width
		} else {
			width = -1
		}
		// Merge runs of plain characters into one literal.
		if n := len(out); n > 0 && atom.kind == symLit && atom.min == 1 && atom.max == 1 &&
			out[n-1].kind == symLit && out[n-1].min == 1 && out[n-1].max == 1 {
			out[n-1].lit += atom.lit
			continue
		}
		out = append(out, atom)
	}
}

// repeatShape is the shape of x{lo,hi}.
func repeatShape(x shape, lo, hi int) shape {
	fixed := hi == lo && x.width >= 0
	width := -1
	if fixed {
		width = lo * x.width
	}
	switch {
	case x.width >= 0:
		return shape{x.amb, width}
	case hi == unbounded:
		// x* is tail-recursive in llama.cpp: one more copy alive at most.
		return shape{capAmb(2 * x.amb), -1}
	default:
		return shape{capAmb(hi * x.amb), width}
	}
}

func (p *patternParser) quantifier() (lo, hi int, ok bool, err error) {
	c, has := p.peek()
	if !has {
		return 0, 0, false, nil
	}
	switch c {
	case '*':
		lo, hi = 0, unbounded
	case '+':
		lo, hi = 1, unbounded
	case '?':
		lo, hi = 0, 1
	case '{':
		end := p.pos + 1
		for end < len(p.src) && p.src[end] != '}' {
			end++
		}
		if end == len(p.src) {
			return 0, 0, false, perr("unterminated { at offset %d", p.pos)
		}
		body := string(p.src[p.pos+1 : end])
		a, b, comma := strings.Cut(body, ",")
		var e1, e2 error
		lo, e1 = strconv.Atoi(a)
		switch {
		case !comma:
			hi = lo
		case b == "":
			hi = unbounded
		default:
			hi, e2 = strconv.Atoi(b)
		}
		if e1 != nil || e2 != nil || lo < 0 || (comma && b != "" && hi < 0) {
			return 0, 0, false, perr("invalid quantifier {%s} at offset %d", body, p.pos)
		}
		if hi != unbounded && lo > hi {
			return 0, 0, false, perr("quantifier {%s} matches nothing: its minimum is above its maximum", body)
		}
		if lo > maxRepeat || hi > maxRepeat {
			return 0, 0, false, perr("quantifier {%s} repeats more than %d times", body, maxRepeat)
		}
		p.pos = end
	default:
		return 0, 0, false, nil
	}
	p.pos++
	if c, has := p.peek(); has && c == '?' {
		p.pos++ // lazy: the same strings match
	} else if has && c == '+' {
		return 0, 0, false, perr("possessive quantifiers are not supported")
	}
	if c2, has := p.peek(); has && strings.ContainsRune("*+?{", c2) {
		return 0, 0, false, perr("nothing to repeat at offset %d", p.pos)
	}
	return lo, hi, true, nil
}

func (p *patternParser) atom() (sym, error) {
	c := p.src[p.pos]
	p.pos++
	// One character of JSON string content; its escapes are prefix-free,
	// so copies of it are told apart like fixed-width ones.
	p.atomShape = shape{1, 1}
	switch c {
	case '(':
		if strings.HasPrefix(string(p.src[p.pos:]), "?:") {
			p.pos += 2
		} else if strings.HasPrefix(string(p.src[p.pos:]), "?<") && !strings.HasPrefix(string(p.src[p.pos:]), "?<=") && !strings.HasPrefix(string(p.src[p.pos:]), "?<!") {
			end := p.pos + 2
			for end < len(p.src) && p.src[end] != '>' {
				end++
			}
			if end == len(p.src) {
				return sym{}, perr("unterminated group name")
			}
			p.pos = end + 1
		} else if c2, ok := p.peek(); ok && c2 == '?' {
			return sym{}, perr("lookaround and other (? groups are not supported")
		}
		alts, sh, err := p.alternatives()
		if err != nil {
			return sym{}, err
		}
		if c2, ok := p.peek(); !ok || c2 != ')' {
			return sym{}, perr("missing ) in pattern")
		}
		p.pos++
		p.atomShape = sh
		return p.g.alt("pat", alts...), nil
	case ')':
		return sym{}, perr("unbalanced ) at offset %d", p.pos-1)
	case '*', '+', '?', '{':
		return sym{}, perr("nothing to repeat at offset %d", p.pos-1)
	case '^', '$':
		return sym{}, perr("anchors are supported only at the start and end of the pattern")
	case '.':
		return p.g.jsonChar(newSet(runeRange{'\n', '\n'}, runeRange{'\r', '\r'}, runeRange{0x2028, 0x2029}).complement())
	case '[':
		set, err := p.class()
		if err != nil {
			return sym{}, err
		}
		return p.g.jsonChar(set)
	case '\\':
		set, single, err := p.escape(false)
		if err != nil {
			return sym{}, err
		}
		if set != nil {
			return p.g.jsonChar(set)
		}
		return p.g.jsonChar(newSet(runeRange{single, single}))
	default:
		return p.g.jsonChar(newSet(runeRange{c, c}))
	}
}

// class parses a character class after its [.
func (p *patternParser) class() (charSet, error) {
	neg := false
	if c, ok := p.peek(); ok && c == '^' {
		neg = true
		p.pos++
	}
	set := charSet{}
	for {
		c, ok := p.peek()
		if !ok {
			return nil, perr("missing ] in pattern")
		}
		if c == ']' {
			p.pos++
			break
		}
		lo, loSet, err := p.classAtom()
		if err != nil {
			return nil, err
		}
		if loSet != nil {
			set = set.union(loSet)
			continue
		}
		if c, ok := p.peek(); ok && c == '-' && p.pos+1 < len(p.src) && p.src[p.pos+1] != ']' {
			p.pos++
			hi, hiSet, err := p.classAtom()
			if err != nil {
				return nil, err
			}
			if hiSet != nil {
				return nil, perr("a class escape cannot end a range")
			}
			if lo > hi {
				return nil, perr("range %q-%q is out of order", lo, hi)
			}
			set = set.union(newSet(runeRange{lo, hi}))
			continue
		}
		set = set.union(newSet(runeRange{lo, lo}))
	}
	if neg {
		set = set.complement()
	}
	return set, nil
}

func (p *patternParser) classAtom() (rune, charSet, error) {
	c := p.src[p.pos]
	p.pos++
	if c != '\\' {
		return c, nil, nil
	}
	set, single, err := p.escape(true)
	return single, set, err
}

// escape parses what follows a backslash: a class (\d, \w, \s and their
// negations) or a single character.
func (p *patternParser) escape(inClass bool) (charSet, rune, error) {
	c, ok := p.peek()
	if !ok {
		return nil, 0, perr("pattern ends with a backslash")
	}
	p.pos++
	digit := newSet(runeRange{'0', '9'})
	word := newSet(runeRange{'0', '9'}, runeRange{'A', 'Z'}, runeRange{'_', '_'}, runeRange{'a', 'z'})
	space := newSet(runeRange{'\t', '\r'}, runeRange{' ', ' '}, runeRange{0xa0, 0xa0}, runeRange{0x1680, 0x1680},
		runeRange{0x2000, 0x200a}, runeRange{0x2028, 0x2029}, runeRange{0x202f, 0x202f}, runeRange{0x205f, 0x205f},
		runeRange{0x3000, 0x3000}, runeRange{0xfeff, 0xfeff})
	switch c {
	case 'd':
		return digit, 0, nil
	case 'D':
		return digit.complement(), 0, nil
	case 'w':
		return word, 0, nil
	case 'W':
		return word.complement(), 0, nil
	case 's':
		return space, 0, nil
	case 'S':
		return space.complement(), 0, nil
	case 'n':
		return nil, '\n', nil
	case 't':
		return nil, '\t', nil
	case 'r':
		return nil, '\r', nil
	case 'f':
		return nil, '\f', nil
	case 'v':
		return nil, '\v', nil
	case '0':
		return nil, 0, nil
	case 'b':
		if inClass {
			return nil, '\b', nil
		}
		return nil, 0, perr(`word boundaries (\b) are not supported`)
	case 'x', 'u':
		n := 2
		if c == 'u' {
			n = 4
		}
		if p.pos+n > len(p.src) {
			return nil, 0, perr(`invalid \%c escape`, c)
		}
		v, err := strconv.ParseUint(string(p.src[p.pos:p.pos+n]), 16, 32)
		if err != nil {
			return nil, 0, perr(`invalid \%c escape`, c)
		}
		p.pos += n
		return nil, rune(v), nil
	}
	if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
		return nil, 0, perr(`escape \%c is not supported`, c)
	}
	return nil, c, nil
}

// jsonChar is one character from set, written as JSON string content:
// plain characters as themselves, quote, backslash and the usual control
// characters as their escapes. Other control characters are left out. A
// set with nothing left matches no string the grammar can write.
func (g *grammar) jsonChar(set charSet) (sym, error) {
	var alts []seq
	if plain := set.intersect(jsonPlain()); len(plain) > 0 {
		if len(plain) == 1 && plain[0].lo == plain[0].hi {
			alts = append(alts, seq{lit(string(plain[0].lo))})
		} else {
			alts = append(alts, seq{class(plain)})
		}
	}
	for _, r := range []rune{'"', '\\', '\n', '\t', '\r', '\b', '\f'} {
		if set.has(r) {
			esc, _ := jsonEscape(r)
			alts = append(alts, seq{lit(esc)})
		}
	}
	if len(alts) == 0 {
		return sym{}, perr("a character class in the pattern matches no character")
	}
	return g.alt("chr", alts...), nil
}
