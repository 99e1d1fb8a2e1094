package jsonschema

import (
	"slices"
	"unicode/utf8"
)

type runeRange struct{ lo, hi rune }

// charSet is a sorted list of disjoint, non-adjacent character ranges.
type charSet []runeRange

func newSet(rs ...runeRange) charSet {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b runeRange) int { return int(a.lo - b.lo) })
	out := charSet{}
	for _, r := range s {
		if r.lo > r.hi {
			continue
		}
		if n := len(out); n > 0 && r.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

func (s charSet) union(o charSet) charSet { return newSet(append(slices.Clone(s), o...)...) }

// complement is every valid character not in s.
func (s charSet) complement() charSet {
	out := charSet{}
	next := rune(0)
	for _, r := range s {
		if r.lo > next {
			out = append(out, runeRange{next, r.lo - 1})
		}
		next = r.hi + 1
	}
	if next <= utf8.MaxRune {
		out = append(out, runeRange{next, utf8.MaxRune})
	}
	return out
}

func (s charSet) intersect(o charSet) charSet {
	return s.complement().union(o.complement()).complement()
}

func (s charSet) has(r rune) bool {
	for _, x := range s {
		if r >= x.lo && r <= x.hi {
			return true
		}
	}
	return false
}

// jsonPlain is every character a JSON string may hold unescaped, less DEL
// and the surrogates (no UTF-8 text holds them, so a class of them only
// would be a dead end for the sampler).
func jsonPlain() charSet {
	return newSet(
		runeRange{0x20, 0x21}, runeRange{0x23, 0x5b}, runeRange{0x5d, 0x7e},
		runeRange{0x80, 0xd7ff}, runeRange{0xe000, utf8.MaxRune},
	)
}

// jsonEscape gives the characters a JSON string writes as two-character
// escapes, with their escapes. Other control characters are left out of
// the grammar (it may allow less than the schema).
func jsonEscape(r rune) (string, bool) {
	switch r {
	case '"':
		return `\"`, true
	case '\\':
		return `\\`, true
	case '\n':
		return `\n`, true
	case '\t':
		return `\t`, true
	case '\r':
		return `\r`, true
	case '\b':
		return `\b`, true
	case '\f':
		return `\f`, true
	}
	return "", false
}
