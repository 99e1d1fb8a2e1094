package jsonschema

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// checkGBNF reads the grammar text back, independently of the converter's
// own data, and checks what keeps llama.cpp's sampler alive: every rule
// referred to is defined, every class and literal holds valid characters,
// every rule reachable from root derives a finite string. It understands
// exactly the subset of GBNF that grammar.String writes.
func checkGBNF(text string) error {
	type gsym struct {
		ref      string
		min, max int
	}
	rules := map[string][][]gsym{}
	var order []string
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		name, body, ok := strings.Cut(line, " ::= ")
		if !ok || name == "" {
			return fmt.Errorf("bad rule line %q", line)
		}
		if _, dup := rules[name]; dup {
			return fmt.Errorf("rule %s defined twice", name)
		}
		order = append(order, name)
		var alts [][]gsym
		cur := []gsym{}
		rs := []rune(body)
		readChar := func(i int) (rune, int, error) {
			if rs[i] != '\\' {
				return rs[i], i + 1, nil
			}
			n := map[rune]int{'x': 2, 'u': 4, 'U': 8}[rs[i+1]]
			if n == 0 {
				return 0, 0, fmt.Errorf("unexpected escape in %q", line)
			}
			v, err := strconv.ParseUint(string(rs[i+2:i+2+n]), 16, 32)
			return rune(v), i + 2 + n, err
		}
		valid := func(r rune) bool { return r > 0 && utf8.ValidRune(r) }
		for i := 0; i < len(rs); {
			switch c := rs[i]; {
			case c == ' ':
				i++
			case c == '|':
				alts = append(alts, cur)
				cur = []gsym{}
				i++
			case c == '"':
				i++
				for rs[i] != '"' {
					r, j, err := readChar(i)
					if err != nil {
						return err
					}
					if !valid(r) {
						return fmt.Errorf("invalid character %U in %q", r, line)
					}
					i = j
				}
				i++
				cur = append(cur, gsym{min: 1, max: 1})
			case c == '[':
				i++
				n := 0
				for rs[i] != ']' {
					lo, j, err := readChar(i)
					if err != nil {
						return err
					}
					hi := lo
					i = j
					if rs[i] == '-' {
						if hi, i, err = readChar(i + 1); err != nil {
							return err
						}
					}
					if !valid(lo) || !valid(hi) || lo > hi {
						return fmt.Errorf("bad range %U-%U in %q", lo, hi, line)
					}
					n++
				}
				if n == 0 {
					return fmt.Errorf("empty class in %q", line)
				}
				i++
				cur = append(cur, gsym{min: 1, max: 1})
			default:
				j := i
				for j < len(rs) && (rs[j] == '-' || rs[j] >= '0' && rs[j] <= '9' || rs[j] >= 'a' && rs[j] <= 'z' || rs[j] >= 'A' && rs[j] <= 'Z') {
					j++
				}
				if j == i {
					return fmt.Errorf("unexpected %q in %q", c, line)
				}
				cur = append(cur, gsym{ref: string(rs[i:j]), min: 1, max: 1})
				i = j
			}
			// A quantifier applies to the symbol just read.
			if i < len(rs) && len(cur) > 0 {
				last := &cur[len(cur)-1]
				switch rs[i] {
				case '?':
					last.min, last.max = 0, 1
					i++
				case '*':
					last.min, last.max = 0, -1
					i++
				case '+':
					last.min, last.max = 1, -1
					i++
				case '{':
					end := i + strings.IndexRune(string(rs[i:]), '}')
					a, b, comma := strings.Cut(string(rs[i+1:end]), ",")
					lo, err := strconv.Atoi(a)
					if err != nil {
						return err
					}
					hi := lo
					if comma {
						hi = -1
						if b != "" {
							if hi, err = strconv.Atoi(b); err != nil {
								return err
							}
						}
					}
					if hi != -1 && (hi < lo || hi > maxRepeat) {
						return fmt.Errorf("bad repetition in %q", line)
					}
					last.min, last.max = lo, hi
					i = end + 1
				}
			}
		}
		rules[name] = append(alts, cur)
	}
	if len(order) == 0 || order[0] != "root" {
		return fmt.Errorf("no root rule first")
	}
	productive := map[string]bool{}
	for changed := true; changed; {
		changed = false
		for name, alts := range rules {
			if productive[name] {
				continue
			}
			for _, a := range alts {
				ok := true
				for _, s := range a {
					ok = ok && (s.ref == "" || s.min == 0 || productive[s.ref])
				}
				if ok {
					productive[name], changed = true, true
					break
				}
			}
		}
	}
	for name, alts := range rules {
		for _, a := range alts {
			for _, s := range a {
				if s.ref == "" {
					continue
				}
				if _, ok := rules[s.ref]; !ok {
					return fmt.Errorf("rule %s refers to undefined %s", name, s.ref)
				}
				if !productive[s.ref] {
					return fmt.Errorf("rule %s refers to %s, which can never finish", name, s.ref)
				}
			}
		}
	}
	if !productive["root"] {
		return fmt.Errorf("root can never finish")
	}
	return nil
}
