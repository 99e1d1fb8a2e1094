package jsonschema

import (
	"fmt"
	"unicode/utf8"
)

// Alphabet is the set of characters a model can write, each as a token of
// its own. A grammar that needs a character the model cannot write leaves
// the sampler with no token to continue, and llama.cpp then throws (the
// runner dies): with the model's alphabet, such a schema is refused
// instead, and character classes are narrowed to what the model can write.
// Models whose vocabulary has a token for every byte (byte-level BPE,
// SentencePiece with byte fallback: nearly all) can write everything.
type Alphabet struct {
	set charSet
}

// NewAlphabet is the characters given, plus every character when the
// vocabulary has a token for each byte a multi-byte UTF-8 sequence uses.
func NewAlphabet(chars []rune, everyByte bool) *Alphabet {
	rs := make([]runeRange, 0, len(chars)+1)
	for _, r := range chars {
		if r > 0 && utf8.ValidRune(r) {
			rs = append(rs, runeRange{r, r})
		}
	}
	if everyByte {
		rs = append(rs, runeRange{0x80, utf8.MaxRune})
	}
	return &Alphabet{set: newSet(rs...)}
}

// GrammarFor is Grammar for a model that can write only the characters of
// a (every character when a is nil).
func GrammarFor(schema []byte, a *Alphabet) (string, error) {
	g, err := build(schema, a)
	if err != nil {
		return "", err
	}
	return g.String(), nil
}

// restrict narrows every class to the alphabet and refuses a literal or a
// class the model cannot write.
func (g *grammar) restrict(a *Alphabet) error {
	for ri := range g.rules {
		for _, alt := range g.rules[ri].alts {
			for si := range alt {
				s := &alt[si]
				switch s.kind {
				case symLit:
					for _, r := range s.lit {
						if !a.set.has(r) {
							return fmt.Errorf("the model cannot write the character %q the schema needs", r)
						}
					}
				case symClass:
					s.class = s.class.intersect(a.set)
					if len(s.class) == 0 {
						return fmt.Errorf("the model cannot write any character of a set the schema needs")
					}
				}
			}
		}
	}
	return nil
}
