package jsonschema

import "strings"

// Integer ranges as grammar: the decimal numbers in [lo, hi] exactly, with
// no leading zeros, as alternatives of digit classes. The classic
// construction: split the range by number of digits, then by first digit,
// recursing on the rest; O(digits²) symbols.

// maxInt is the largest integer the grammar writes (maxIntDigits digits).
const maxInt = 9_999_999_999_999_999

// intRange returns the alternatives writing every integer in [lo, hi],
// which must lie within ±maxInt with lo <= hi.
func intRange(lo, hi int64) []seq {
	switch {
	case lo >= 0:
		return natRange(lo, hi)
	case hi < 0:
		return prefixAll("-", natRange(-hi, -lo))
	default:
		return append(prefixAll("-", natRange(1, -lo)), natRange(0, hi)...)
	}
}

func prefixAll(p string, alts []seq) []seq {
	out := make([]seq, len(alts))
	for i, a := range alts {
		out[i] = append(seq{lit(p)}, a...)
	}
	return out
}

// natRange writes [lo, hi] for 0 <= lo <= hi.
func natRange(lo, hi int64) []seq {
	var out []seq
	los, his := itoa(lo), itoa(hi)
	for d := len(los); d <= len(his); d++ {
		l, h := los, his
		if d > len(los) {
			l = "1" + strings.Repeat("0", d-1)
		}
		if d < len(his) {
			h = strings.Repeat("9", d)
		}
		out = append(out, sameLen(l, h)...)
	}
	return out
}

// sameLen writes the numbers from l to h, digit strings of one length.
func sameLen(l, h string) []seq {
	if l == "" {
		return []seq{{}}
	}
	if l[0] == h[0] {
		return prefixSeqs(lit(l[:1]), sameLen(l[1:], h[1:]))
	}
	rest := len(l) - 1
	if allOf(l[1:], '0') && allOf(h[1:], '9') {
		return []seq{withDigits(digitClass(l[0], h[0]), rest)}
	}
	var out []seq
	lo, hi := l[0], h[0]
	if !allOf(l[1:], '0') {
		out = append(out, prefixSeqs(lit(l[:1]), sameLen(l[1:], strings.Repeat("9", rest)))...)
		lo++
	}
	last := []seq(nil)
	if !allOf(h[1:], '9') {
		last = prefixSeqs(lit(h[:1]), sameLen(strings.Repeat("0", rest), h[1:]))
		hi--
	}
	if lo <= hi {
		out = append(out, withDigits(digitClass(lo, hi), rest))
	}
	return append(out, last...)
}

func withDigits(first sym, n int) seq {
	s := seq{first}
	if n > 0 {
		s = append(s, class(newSet(runeRange{'0', '9'})).rep(n, n))
	}
	return s
}

func digitClass(lo, hi byte) sym {
	if lo == hi {
		return lit(string(lo))
	}
	return class(newSet(runeRange{rune(lo), rune(hi)}))
}

func prefixSeqs(p sym, alts []seq) []seq {
	out := make([]seq, len(alts))
	for i, a := range alts {
		out[i] = append(seq{p}, a...)
	}
	return out
}

func allOf(s string, c byte) bool {
	for i := range len(s) {
		if s[i] != c {
			return false
		}
	}
	return true
}

func itoa(v int64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}
