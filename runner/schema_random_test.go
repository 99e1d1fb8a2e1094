package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/jsonschema"
	"github.com/infer-run/infer/internal/wire"
)

// TestRandomSchemas decodes 150 random schemas (types, bounds, patterns,
// formats, enums, unions, $refs, recursion; fixed seed) with the test
// model, greedy and at temperature 1.5: every schema the converter accepts
// runs without killing the process, and finished output is JSON.
func TestRandomSchemas(t *testing.T) {
	e := loadTestEngine(t, 4, 256)
	rng := rand.New(rand.NewPCG(19, 2026))
	temp := float32(1.5)
	accepted := 0
	for i := range 150 {
		schema := fmt.Sprintf(`{"$defs":{"d":%s},%s`, randomSchema(rng, 2), strings.TrimPrefix(randomSchema(rng, 3), "{"))
		if jsonschema.Validate([]byte(schema)) != nil {
			continue
		}
		accepted++
		s := greedy()
		if i%2 == 1 {
			s = wire.Sampling{Temperature: &temp}
		}
		s.JSONSchema = json.RawMessage(schema)
		c := newCollect()
		if _, err := e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 24, Sampling: s}, c); err != nil {
			t.Fatalf("accepted schema refused by the engine: %v\n%s", err, schema)
		}
		text := c.wait(t)
		if c.err != nil {
			t.Fatalf("%v\n%s", c.err, schema)
		}
		if c.reason == "stop" && !json.Valid([]byte(text)) {
			t.Fatalf("finished output %q is not JSON\n%s", text, schema)
		}
		if c.reason == "length" && !jsonPrefix(text) {
			t.Fatalf("cut-off output %q is not a JSON prefix\n%s", text, schema)
		}
	}
	t.Logf("%d of 150 random schemas accepted and decoded", accepted)
	if accepted < 50 {
		t.Fatalf("only %d random schemas accepted: the generator tests little", accepted)
	}
}

func randomSchema(rng *rand.Rand, depth int) string {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	kinds := []string{"string", "integer", "number", "boolean", "null", "enum", "const"}
	if depth > 0 {
		kinds = append(kinds, "object", "object", "array", "anyOf", "ref", "map")
	}
	switch pick(kinds...) {
	case "string":
		return pick(`{"type":"string"}`, `{"type":"string","maxLength":3}`, `{"type":"string","minLength":1,"maxLength":6}`,
			`{"type":"string","pattern":"^[a-c]+x?$"}`, `{"type":"string","pattern":"(ab|c)\\d{2}"}`, `{"type":"string","pattern":"^[^\"]*$"}`,
			`{"type":"string","format":"date"}`, `{"type":"string","format":"uuid"}`, `{"type":"string","format":"email"}`, `{"type":"string","format":"time"}`)
	case "integer":
		return pick(`{"type":"integer"}`, `{"type":"integer","minimum":-20,"maximum":7}`, `{"type":"integer","exclusiveMinimum":100}`, `{"type":"integer","maximum":-5}`)
	case "number":
		return pick(`{"type":"number"}`, `{"type":"number","minimum":0,"maximum":1}`, `{"type":"number","exclusiveMaximum":-0.5}`)
	case "boolean":
		return `{"type":"boolean"}`
	case "null":
		return `{"type":"null"}`
	case "enum":
		return pick(`{"enum":["a","b c",1,null,true]}`, `{"type":"string","enum":["x","y"]}`, `{"enum":[{"k":[1,2]},[]]}`)
	case "const":
		return pick(`{"const":"fixed"}`, `{"const":42}`)
	case "ref":
		return pick(`{"$ref":"#/$defs/d"}`, `{"anyOf":[{"$ref":"#"},{"type":"null"}]}`)
	case "map":
		return `{"type":"object","additionalProperties":` + randomSchema(rng, depth-1) + `,"maxProperties":3}`
	case "array":
		extra := pick(``, `,"minItems":1`, `,"maxItems":2`, `,"minItems":1,"maxItems":3`)
		return `{"type":"array","items":` + randomSchema(rng, depth-1) + extra + `}`
	case "anyOf":
		n := 1 + rng.IntN(3)
		alts := make([]string, n)
		for i := range alts {
			alts[i] = randomSchema(rng, depth-1)
		}
		return `{"anyOf":[` + strings.Join(alts, ",") + `]}`
	}
	n := rng.IntN(4)
	props := make([]string, n)
	var req []string
	for i := range props {
		name := fmt.Sprintf("p%d", i)
		props[i] = fmt.Sprintf(`"%s":%s`, name, randomSchema(rng, depth-1))
		if rng.IntN(2) == 0 {
			req = append(req, `"`+name+`"`)
		}
	}
	return `{"type":"object","properties":{` + strings.Join(props, ",") + `},"required":[` + strings.Join(req, ",") + `]` + pick(``, `,"additionalProperties":false`) + `}`
}
