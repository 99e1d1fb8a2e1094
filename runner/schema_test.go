package runner

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/jsonschema"
	"github.com/infer-run/infer/internal/testenv"
	"github.com/infer-run/infer/internal/wire"
)

// TestSchemaDecoding runs accepted response_format schemas through real
// decoding with the test model, greedy and sampled: the runner survives
// every one (a dead-end grammar would abort the process in llama.cpp's
// sampler), what it writes is JSON or, cut off by max_tokens, a prefix of
// JSON, and a finished document satisfies the row's check. Then the
// hostile schemas of issue 19 are refused by Submit as the request's own
// error, and the engine still serves a plain request.
func TestSchemaDecoding(t *testing.T) {
	e := loadTestEngine(t, 4, 512)
	isInt := func(v any) bool { f, ok := v.(float64); return ok && f == float64(int64(f)) }
	cases := []struct {
		name, schema string
		check        func(v any) bool
	}{
		{"json_object", `{"type":"object"}`, func(v any) bool { _, ok := v.(map[string]any); return ok }},
		{"strict object", `{"type":"object","properties":{"ok":{"type":"boolean"},"n":{"type":"integer","minimum":-3,"maximum":250},"tag":{"enum":["a","b"]}},"required":["ok","n","tag"],"additionalProperties":false}`,
			func(v any) bool {
				m, _ := v.(map[string]any)
				n, _ := m["n"].(float64)
				_, ok := m["ok"].(bool)
				return len(m) == 3 && ok && isInt(m["n"]) && n >= -3 && n <= 250 && (m["tag"] == "a" || m["tag"] == "b")
			}},
		{"short string", `{"type":"string","maxLength":4}`, func(v any) bool { s, ok := v.(string); return ok && len([]rune(s)) <= 4 }},
		{"pattern", `{"type":"string","pattern":"^[a-z]{1,3}-[0-9]{2}$"}`, func(v any) bool {
			s, _ := v.(string)
			return len(s) >= 4 && strings.Contains(s, "-")
		}},
		{"array", `{"type":"array","items":{"type":"integer","minimum":0,"maximum":9},"minItems":1,"maxItems":3}`, func(v any) bool {
			a, ok := v.([]any)
			return ok && len(a) >= 1 && len(a) <= 3
		}},
		{"date-time", `{"type":"string","format":"date-time"}`, func(v any) bool { _, ok := v.(string); return ok }},
		{"recursive", `{"$defs":{"n":{"type":"object","properties":{"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["next"]}},"$ref":"#/$defs/n"}`,
			func(v any) bool { _, ok := v.(map[string]any); return ok }},
		{"overlapping anyOf", `{"anyOf":[{"type":"string"},{"type":"string","maxLength":2},{"type":"string","pattern":"^a*$"},{"type":"number"}]}`, func(any) bool { return true }},
		{"any value", `{}`, func(any) bool { return true }},
		// 64 ways to read the output at once: the most the converter allows.
		{"nested unions at the limit", nestedUnions(8, 2), func(v any) bool { _, ok := v.([]any); return ok }},
	}
	temp := float32(1.5)
	for _, c := range cases {
		for _, sampled := range []bool{false, true} {
			name := c.name + "/greedy"
			s := greedy()
			if sampled {
				name = c.name + "/sampled"
				s = wire.Sampling{Temperature: &temp}
			}
			t.Run(name, func(t *testing.T) {
				s.JSONSchema = json.RawMessage(c.schema)
				col := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 48, Sampling: s})
				text := col.wait(t)
				if col.err != nil {
					t.Fatalf("error: %v", col.err)
				}
				var v any
				err := json.Unmarshal([]byte(text), &v)
				t.Logf("%s after %d tokens: %q", col.reason, col.usage.CompletionTokens, text)
				switch col.reason {
				case "stop":
					if err != nil {
						t.Fatalf("finished output %q is not JSON: %v", text, err)
					}
					if !c.check(v) {
						t.Fatalf("finished output %q does not match the schema", text)
					}
				case "length":
					if !jsonPrefix(text) {
						t.Fatalf("cut-off output %q is not a prefix of JSON", text)
					}
				default:
					t.Fatalf("finish reason %q", col.reason)
				}
			})
		}
	}

	for name, schema := range map[string]string{
		"impossible pattern":     `{"type":"string","pattern":"^[^\\s\\S]$"}`,
		"integer range reversed": `{"type":"integer","minimum":10,"maximum":5}`,
		"empty anyOf":            `{"anyOf":[]}`,
		"deep nesting":           strings.Repeat(`{"type":"array","items":`, 400) + `{}` + strings.Repeat(`}`, 400),
		"maxLength 500000":       `{"type":"string","maxLength":500000}`,
		"left recursion":         `{"anyOf":[{"$ref":"#"},{"type":"null"}]}`,
		"repeated empty match":   `{"type":"string","pattern":"^(a*)*$"}`,
		// 500 parse stacks, quadratic in llama.cpp: under 32 tokens in a
		// minute before.
		"overlapping stars": `{"type":"string","pattern":"^` + strings.Repeat(`[a-z ]*`, 500) + `$"}`,
		// 27,000 parse stacks: under 64 tokens in a minute before.
		"nested unions": nestedUnions(30, 3),
	} {
		t.Run("refused/"+name, func(t *testing.T) {
			s := greedy()
			s.JSONSchema = json.RawMessage(schema)
			_, err := e.Submit(context.Background(), Request{Prompt: "Once", MaxTokens: 8, Sampling: s}, newCollect())
			if !errors.Is(err, ErrBadSchema) {
				t.Fatalf("Submit: %v, want ErrBadSchema", err)
			}
		})
	}
	col := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 8, Sampling: greedy()})
	col.wait(t)
	if col.err != nil || col.usage.CompletionTokens != 8 {
		t.Fatalf("plain request after the refusals: %v, %d tokens", col.err, col.usage.CompletionTokens)
	}
}

// jsonPrefix reports whether text is JSON or the start of some: the
// decoder reads it token by token and runs out of input, or finishes,
// before anything invalid.
func jsonPrefix(text string) bool {
	dec := json.NewDecoder(strings.NewReader(text))
	for {
		_, err := dec.Token()
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return true
		case err != nil:
			return false
		}
	}
}

// TestModelAlphabet: both test models have a token for every byte
// (SentencePiece byte fallback, byte-level BPE), so their alphabets admit
// any character; the vocabulary is read from the real model files.
func TestModelAlphabet(t *testing.T) {
	for _, m := range []string{"stories260K.gguf", "llama3-tiny.gguf"} {
		e := startEngine(t, EngineConfig{ModelPath: filepath.Join(filepath.Dir(testenv.ModelPath(t)), m), Parallel: 1, Context: 128})
		if _, err := jsonschema.GrammarFor([]byte(`{"const":"café ᚠ😀","type":"string"}`), modelAlphabet(e.model)); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
}

// nestedUnions is an anyOf of n arrays of anyOf of n arrays ... of strings,
// levels deep: every alternative begins alike, so the sampler follows all.
func nestedUnions(n, levels int) string {
	s := `{"type":"string"}`
	for range levels {
		alt := `{"type":"array","items":` + s + `}`
		s = `{"anyOf":[` + strings.TrimSuffix(strings.Repeat(alt+",", n), ",") + `]}`
	}
	return s
}
