package jsonschema

import (
	"strings"
	"testing"
)

// TestAlphabet: for a model that can write only some characters, classes
// narrow to them and a schema needing another is refused (its grammar
// would leave the sampler with no token to continue).
func TestAlphabet(t *testing.T) {
	var ascii []rune
	for r := rune(0x09); r < 0x7f; r++ {
		ascii = append(ascii, r)
	}
	a := NewAlphabet(ascii, false)
	if _, err := GrammarFor([]byte(`{"const":"café"}`), a); err == nil || !strings.Contains(err.Error(), `cannot write the character 'é'`) {
		t.Errorf("const needing é: %v", err)
	}
	if _, err := GrammarFor([]byte(`{"type":"string","pattern":"^[é-ü]$"}`), a); err == nil || !strings.Contains(err.Error(), "cannot write any character") {
		t.Errorf("class of only non-ASCII: %v", err)
	}
	g, err := GrammarFor([]byte(`{"type":"string","pattern":"^[a-cé]+$"}`), a)
	if err != nil || !strings.Contains(g, "[a-c]") {
		t.Errorf("class narrowed to ASCII: %v\n%s", err, g)
	}
	g, err = GrammarFor([]byte(`{"type":"object"}`), a)
	if err != nil || strings.Contains(g, `\u`) || strings.Contains(g, `\U`) {
		t.Errorf("generic strings narrowed to ASCII: %v\n%s", err, g)
	}
	if err := checkGBNF(g); err != nil {
		t.Error(err)
	}
	full, err := GrammarFor([]byte(`{"const":"café ᚠ"}`), NewAlphabet(ascii, true))
	if err != nil {
		t.Errorf("every byte: %v\n%s", err, full)
	}
}
