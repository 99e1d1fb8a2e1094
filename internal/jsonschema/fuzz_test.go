package jsonschema

import (
	"errors"
	"testing"
)

// FuzzSchemaToGrammar: no input panics the converter, for a model that
// writes every character or ASCII only; whatever it accepts
// passes the independent GBNF check (every rule productive, every class
// non-empty) and stays within the size bound; whatever it refuses is an
// *Error.
func FuzzSchemaToGrammar(f *testing.F) {
	for _, s := range []string{
		`{"type":"object"}`, `{}`, `true`, `false`,
		`{"type":"object","properties":{"a":{"type":"integer","minimum":-5,"maximum":123},"b":{"type":"string","maxLength":3},"c":{"enum":["x",1,null]}},"required":["a"]}`,
		`{"type":"string","pattern":"^[a-c]{2}\\d+(x|\"y)?$"}`,
		`{"type":"string","pattern":"^(?:[^\\s\\S]|a{3,1})$"}`,
		`{"$defs":{"n":{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}}}},"$ref":"#/$defs/n"}`,
		`{"type":"array","prefixItems":[{"type":"string","format":"date-time"}],"items":{"type":"number"},"minItems":2,"maxItems":5}`,
		`{"type":"integer","minimum":10,"maximum":5}`, `{"anyOf":[]}`, `{"anyOf":[{"$ref":"#"},{"type":"null"}]}`,
		`{"type":"object","additionalProperties":{"type":"string","format":"uuid"},"maxProperties":3}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	var ascii []rune
	for r := rune(0x09); r < 0x7f; r++ {
		ascii = append(ascii, r)
	}
	narrow := NewAlphabet(ascii, false)
	f.Fuzz(func(t *testing.T, schema []byte, asciiOnly bool) {
		var a *Alphabet
		if asciiOnly {
			a = narrow // a model that writes ASCII only
		}
		out, err := GrammarFor(schema, a)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		if err := checkGBNF(out); err != nil {
			t.Fatalf("accepted grammar fails the check: %v\n%s", err, out)
		}
		// Each grammar element is written in a few bytes at most, so the
		// text is bounded with the expanded size.
		if len(out) > 16*maxGrammarCost {
			t.Fatalf("grammar is %d bytes", len(out))
		}
	})
}
