package jsonschema

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestAccepted converts schemas users send and checks the grammar: it
// passes the independent GBNF check, and 200 random documents it allows
// each parse as JSON and satisfy the schema (the row's check).
func TestAccepted(t *testing.T) {
	obj := func(v any) map[string]any { m, _ := v.(map[string]any); return m }
	isInt := func(v any) bool { f, ok := v.(float64); return ok && f == float64(int64(f)) }
	cases := []struct {
		name, schema string
		check        func(v any) bool
	}{
		{"json_object", `{"type":"object"}`, func(v any) bool { return obj(v) != nil }},
		{"any", `{}`, func(any) bool { return true }},
		{"true", `true`, func(any) bool { return true }},
		{"null", `{"type":"null"}`, func(v any) bool { return v == nil }},
		{"boolean", `{"type":"boolean"}`, func(v any) bool { _, ok := v.(bool); return ok }},
		{"number", `{"type":"number"}`, func(v any) bool { _, ok := v.(float64); return ok }},
		{"integer", `{"type":"integer"}`, isInt},
		{"integer range", `{"type":"integer","minimum":-37,"maximum":1204}`, func(v any) bool {
			f, _ := v.(float64)
			return isInt(v) && f >= -37 && f <= 1204
		}},
		{"integer exclusive", `{"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":10}`, func(v any) bool {
			f, _ := v.(float64)
			return isInt(v) && f > 0 && f < 10
		}},
		{"integer fractional bounds", `{"type":"integer","minimum":2.5,"maximum":7.5}`, func(v any) bool {
			f, _ := v.(float64)
			return isInt(v) && f >= 3 && f <= 7
		}},
		{"integer minimum only", `{"type":"integer","minimum":99}`, func(v any) bool {
			f, _ := v.(float64)
			return isInt(v) && f >= 99
		}},
		{"integer negative maximum", `{"type":"integer","maximum":-1000}`, func(v any) bool {
			f, _ := v.(float64)
			return isInt(v) && f <= -1000
		}},
		{"number 0..1", `{"type":"number","minimum":0,"maximum":1}`, numIn(0, false, 1, false)},
		{"number exclusive", `{"type":"number","exclusiveMinimum":-2.5,"exclusiveMaximum":3}`, numIn(-2.5, true, 3, true)},
		{"number negative", `{"type":"number","minimum":-10.25,"maximum":-3}`, numIn(-10.25, false, -3, false)},
		{"number minimum only", `{"type":"number","minimum":12.5}`, numIn(12.5, false, 1e17, false)},
		{"number draft 4 exclusive", `{"type":"number","minimum":0,"exclusiveMinimum":true,"maximum":2}`, numIn(0, true, 2, false)},
		{"string lengths", `{"type":"string","minLength":2,"maxLength":5}`, func(v any) bool {
			s, ok := v.(string)
			return ok && len([]rune(s)) >= 2 && len([]rune(s)) <= 5
		}},
		{"pattern", `{"type":"string","pattern":"^[A-Z]{2}-\\d{3,4}(\\.x|_y)?$"}`, matches(`^[A-Z]{2}-\d{3,4}(\.x|_y)?$`)},
		{"pattern with quote and backslash", `{"type":"string","pattern":"^a\"b\\\\c[\"\\\\]$"}`, matches(`^a"b\\c["\\]$`)},
		{"pattern classes", `{"type":"string","pattern":"^[^a-z\\s]+\\w*.?$"}`, matches(`^[^a-z\s]+\w*.?$`)},
		{"pattern phone number", `{"type":"string","pattern":"^\\+?1?[ ]*\\(?\\d{3}\\)?[-. ]*\\d{3}[-. ]*\\d{4}$"}`, matches(`^\+?1?[ ]*\(?\d{3}\)?[-. ]*\d{3}[-. ]*\d{4}$`)},
		{"pattern long fixed repeat", `{"type":"string","pattern":"^[a-z]{0,2000}x$"}`, matches(`^[a-z]*x$`)},
		{"pattern unanchored", `{"type":"string","pattern":"ab+"}`, matches(`ab+`)},
		{"date", `{"type":"string","format":"date"}`, parses("2006-01-02")},
		{"date-time", `{"type":"string","format":"date-time"}`, parses(time.RFC3339Nano)},
		{"uuid", `{"type":"string","format":"uuid"}`, matches(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)},
		{"email", `{"type":"string","format":"email"}`, matches(`^[\w+-]+(\.[\w+-]+)*@[a-zA-Z0-9]+(\.[a-zA-Z0-9]+)+$`)},
		{"enum", `{"enum":["red","gr\"een",3,null,{"a":[1]}]}`, func(v any) bool {
			b, _ := json.Marshal(v)
			return strings.Contains(`"red" "gr\"een" 3 null {"a":[1]}`, string(b))
		}},
		{"enum filtered by type", `{"type":"string","enum":["a",1]}`, func(v any) bool { return v == "a" }},
		{"const", `{"const":"fixed"}`, func(v any) bool { return v == "fixed" }},
		{"type list", `{"type":["string","null"],"maxLength":2}`, func(v any) bool {
			s, ok := v.(string)
			return v == nil || ok && len([]rune(s)) <= 2
		}},
		{"object strict", `{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer","minimum":0,"maximum":150},"tags":{"type":"array","items":{"type":"string"},"maxItems":3}},"required":["name","age","tags"],"additionalProperties":false}`,
			func(v any) bool {
				m := obj(v)
				tags, _ := m["tags"].([]any)
				age, _ := m["age"].(float64)
				_, name := m["name"].(string)
				return len(m) == 3 && name && age >= 0 && age <= 150 && isInt(m["age"]) && m["tags"] != nil && len(tags) <= 3
			}},
		{"object optional", `{"type":"object","properties":{"a":{"type":"boolean"},"b":{"type":"null"},"c":{"type":"integer"}},"required":["b"]}`,
			func(v any) bool {
				m := obj(v)
				_, hasB := m["b"]
				for k := range m {
					if k != "a" && k != "b" && k != "c" {
						return false
					}
				}
				return m != nil && hasB
			}},
		{"map", `{"type":"object","additionalProperties":{"type":"integer"}}`, func(v any) bool {
			m := obj(v)
			for _, x := range m {
				if !isInt(x) {
					return false
				}
			}
			return m != nil
		}},
		{"empty object only", `{"type":"object","additionalProperties":false}`, func(v any) bool { m := obj(v); return m != nil && len(m) == 0 }},
		{"array bounds", `{"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":4}`, func(v any) bool {
			a, ok := v.([]any)
			return ok && len(a) >= 2 && len(a) <= 4
		}},
		{"tuple", `{"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":false}`, func(v any) bool {
			a, ok := v.([]any)
			if !ok || len(a) != 2 {
				return false
			}
			_, s := a[0].(string)
			return s && isInt(a[1])
		}},
		{"anyOf", `{"anyOf":[{"type":"string","maxLength":1},{"type":"integer","minimum":5,"maximum":6}]}`, func(v any) bool {
			s, ok := v.(string)
			f, _ := v.(float64)
			return ok && len([]rune(s)) <= 1 || f == 5 || f == 6
		}},
		{"recursive $ref", `{"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#/$defs/node"},{"type":"null"}]}},"required":["v","next"],"additionalProperties":false}},"$ref":"#/$defs/node"}`,
			func(v any) bool {
				for v != nil {
					m := obj(v)
					if m == nil || len(m) != 2 || !isInt(m["v"]) {
						return false
					}
					v = m["next"]
				}
				return true
			}},
		{"definitions and root ref", `{"definitions":{"leaf":{"type":"boolean"}},"type":"object","properties":{"l":{"$ref":"#/definitions/leaf"},"self":{"type":"array","maxItems":1,"items":{"$ref":"#"}}},"required":["l"]}`,
			func(v any) bool { _, ok := obj(v)["l"].(bool); return ok }},
		{"unions of objects", `{"type":"array","items":{"anyOf":[{"type":"object","properties":{"a":{"anyOf":[{"type":"object","properties":{"x":{"type":"null"}},"required":["x"]},{"type":"object","properties":{"y":{"type":"null"}},"required":["y"]}]}},"required":["a"]},{"type":"object","properties":{"b":{"type":"null"}},"required":["b"]}]}}`,
			func(v any) bool { _, ok := v.([]any); return ok }},
		{"allOf of one", `{"allOf":[{"type":"integer","minimum":1,"maximum":1}]}`, func(v any) bool { return v == 1.0 }},
		{"annotations ignored", `{"title":"T","description":"d","type":"boolean","default":true,"examples":[true],"x-vendor":1}`, func(v any) bool { _, ok := v.(bool); return ok }},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, err := build([]byte(c.schema), nil)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			text := g.String()
			if err := checkGBNF(text); err != nil {
				t.Fatalf("grammar fails the GBNF check: %v\n%s", err, text)
			}
			for range 200 {
				doc := sample(g, rng)
				var v any
				if err := json.Unmarshal([]byte(doc), &v); err != nil {
					t.Fatalf("sample %q is not JSON: %v\n%s", doc, err, text)
				}
				if !c.check(v) {
					t.Fatalf("sample %q does not match the schema\n%s", doc, text)
				}
			}
		})
	}
}

func matches(re string) func(any) bool {
	r := regexp.MustCompile(re)
	return func(v any) bool { s, ok := v.(string); return ok && r.MatchString(s) }
}

func parses(layout string) func(any) bool {
	return func(v any) bool {
		s, ok := v.(string)
		if !ok {
			return false
		}
		_, err := time.Parse(layout, s)
		return err == nil
	}
}

// TestRefused: schemas that cannot be expressed, contradict themselves or
// exceed a bound are refused with the keyword and where it is.
func TestRefused(t *testing.T) {
	deep := strings.Repeat(`{"type":"array","items":`, 200) + `{}` + strings.Repeat(`}`, 200)
	var refs strings.Builder
	refs.WriteString(`{"type":"object","properties":{`)
	for i := range 2000 {
		if i > 0 {
			refs.WriteString(",")
		}
		refs.WriteString(`"p` + itoa(int64(i)) + `":{"$ref":"#/$defs/missing` + itoa(int64(i)) + `"}`)
	}
	refs.WriteString(`}}`)
	cases := []struct {
		name, schema, want string
	}{
		{"impossible pattern", `{"type":"string","pattern":"^[^\\s\\S]$"}`, `"pattern" at #`},
		{"empty class", `{"type":"string","pattern":"[]"}`, `"pattern" at #`},
		{"pattern reversed count", `{"type":"string","pattern":"a{5,2}"}`, `minimum is above its maximum`},
		{"pattern repeats an empty match", `{"type":"string","pattern":"^(a*)*$"}`, `can match the empty string`},
		{"pattern repeats an empty alternative", `{"type":"string","pattern":"^(a|)+b$"}`, `can match the empty string`},
		{"nested overlapping anyOf", nestedAnyOf(10, 3), `alternatives that begin alike nest too deep`},
		{"overlapping anyOf in recursion", `{"$defs":{"n":{"anyOf":[{"type":"array","items":{"$ref":"#/$defs/n"}},{"type":"array","maxItems":1,"items":{"$ref":"#/$defs/n"}},{"type":"null"}]}},"$ref":"#/$defs/n"}`, `grow without bound`},
		{"pattern of many overlapping stars", `{"type":"string","pattern":"^` + strings.Repeat(`[a-z ]*`, 500) + `$"}`, `more than 64 ways at once`},
		{"pattern of variable copies", `{"type":"string","pattern":"^(a|aa){0,2000}$"}`, `more than 64 ways at once`},
		{"many optional properties", manyProps(65), `65 optional properties`},
		{"optional properties in a union", `{"anyOf":[{"type":"object","properties":{` + strings.TrimSuffix(strings.Repeat(`"a":{},`, 1), ",") + `}},{"type":"object","properties":` + optionalProps(40) + `}]}`, `40 optional properties`},
		// Inputs whose checks were quadratic or exponential: each would
		// take seconds to refuse, or hang.
		{"30,000 overlapping alternatives", `{"anyOf":[` + strings.TrimSuffix(strings.Repeat(`{},`, 30000), ",") + `]}`, `nest too deep`},
		{"chain of doubled refs", doubledRefs(12), `nest too deep`},
		{"20,000 unknown types", `{"type":["t"` + unknownTypes(20000) + `]}`, `unknown type "t"`},
		{"pattern lookahead", `{"type":"string","pattern":"(?!a)b"}`, `lookaround`},
		{"pattern backreference", `{"type":"string","pattern":"(a)\\1"}`, `escape \1`},
		{"pattern NUL only", `{"type":"string","pattern":"^\\x00$"}`, `matches no character`},
		{"pattern huge count", `{"type":"string","pattern":"a{100000}"}`, `more than 2000`},
		{"integer min above max", `{"type":"integer","minimum":10,"maximum":5}`, `"minimum" at #: the minimum 10 is above the maximum 5`},
		{"integer exclusive empty", `{"type":"integer","exclusiveMinimum":1,"exclusiveMaximum":2}`, `"minimum" at #`},
		{"integer out of range", `{"type":"integer","minimum":1e30}`, `no integer of at most 16 digits`},
		{"huge exponent", `{"type":"integer","minimum":1e1000000000}`, `out of range`},
		{"empty anyOf", `{"anyOf":[]}`, `"anyOf" at #: an empty anyOf matches nothing`},
		{"empty enum", `{"enum":[]}`, `"enum" at #: an empty enum matches nothing`},
		{"enum of wrong type", `{"type":"integer","enum":["a"]}`, `no value matches`},
		{"false", `{"type":"object","properties":{"a":false},"required":["a"]}`, `#/properties/a: the schema false matches nothing`},
		{"deep nesting", deep, `nest more than 32 levels`},
		{"maxLength 500000", `{"type":"string","maxLength":500000}`, `"maxLength" at #: 500000 is above the limit of 2000`},
		{"minLength above maxLength", `{"type":"string","minLength":3,"maxLength":2}`, `"minLength" at #`},
		{"minItems above maxItems", `{"type":"array","minItems":3,"maxItems":2}`, `"minItems" at #`},
		{"negative count", `{"type":"string","maxLength":-1}`, `non-negative integer`},
		{"unresolvable refs", refs.String(), `"$ref" at #/properties/p0: "#/$defs/missing0" does not resolve`},
		{"remote ref", `{"$ref":"https://example.com/s.json"}`, `only references inside the schema`},
		{"ref cycle", `{"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"}`, `can never finish`},
		{"left recursion", `{"anyOf":[{"$ref":"#"},{"type":"null"}]}`, `left recursion`},
		{"self only", `{"$ref":"#"}`, `can never finish`},
		{"required not allowed", `{"type":"object","required":["x"],"additionalProperties":false}`, `"required" at #`},
		{"unsupported keyword", `{"type":"integer","multipleOf":3}`, `"multipleOf" at #: not supported`},
		{"not", `{"not":{"type":"string"}}`, `"not" at #`},
		{"uniqueItems", `{"type":"array","uniqueItems":true}`, `"uniqueItems"`},
		{"number min above max", `{"type":"number","minimum":0.5,"maximum":0.25}`, `the minimum 1/2 is above the maximum 1/4`},
		{"number exclusive equal", `{"type":"number","exclusiveMinimum":1,"maximum":1}`, `nothing matches`},
		{"integer between bounds", `{"type":"integer","minimum":2.2,"maximum":2.8}`, `no integer of at most 16 digits`},
		{"unknown format", `{"type":"string","format":"hostname"}`, `format "hostname" is not supported`},
		{"unknown type", `{"type":"decimal"}`, `unknown type`},
		{"empty type list", `{"type":[]}`, `"type" at #`},
		{"anyOf with siblings", `{"type":"string","anyOf":[{"maxLength":1}]}`, `"anyOf" at #: cannot be combined with "type"`},
		{"allOf of two", `{"allOf":[{},{}]}`, `"allOf"`},
		{"not a schema", `[1]`, `must be an object or a boolean`},
		{"not JSON", `{"type":`, `not valid JSON`},
		{"too big", `{"description":"` + strings.Repeat("x", MaxSchemaBytes) + `"}`, `the limit is`},
		{"too many properties", manyProps(5001), `more than 5000 properties`},
		{"grammar too large", `{"type":"object","properties":{` + manyPatterns(120) + `}}`, `grammar too large`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, err := Grammar([]byte(c.schema))
			took := time.Since(start)
			if err == nil {
				t.Fatalf("accepted:\n%.2000s", out)
			}
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			t.Logf("%v (%v)", err, took)
		})
	}
}

func manyProps(n int) string {
	var b strings.Builder
	b.WriteString(`{"type":"object","properties":{`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"p` + itoa(int64(i)) + `":{"type":"null"}`)
	}
	b.WriteString(`}}`)
	return b.String()
}

func manyPatterns(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"p` + itoa(int64(i)) + `":{"type":"string","pattern":"^[a-z\"]{2000}$"}`)
	}
	return b.String()
}

func numIn(lo float64, loExcl bool, hi float64, hiExcl bool) func(any) bool {
	return func(v any) bool {
		f, ok := v.(float64)
		return ok && (f > lo || !loExcl && f == lo) && (f < hi || !hiExcl && f == hi)
	}
}

// nestedAnyOf is an anyOf of n arrays of anyOf of n arrays ... of strings,
// levels deep: every alternative begins alike.
func nestedAnyOf(n, levels int) string {
	s := `{"type":"string"}`
	for range levels {
		alt := `{"type":"array","items":` + s + `}`
		s = `{"anyOf":[` + strings.TrimSuffix(strings.Repeat(alt+",", n), ",") + `]}`
	}
	return s
}

func optionalProps(n int) string {
	var b strings.Builder
	b.WriteString(`{`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(`"p` + itoa(int64(i)) + `":{"type":"null"}`)
	}
	b.WriteString(`}`)
	return b.String()
}

// doubledRefs is a chain of n definitions, each an anyOf of two
// references to the next.
func doubledRefs(n int) string {
	var b strings.Builder
	b.WriteString(`{"$defs":{`)
	for i := range n {
		fmt.Fprintf(&b, `"d%d":{"anyOf":[{"$ref":"#/$defs/d%d"},{"$ref":"#/$defs/d%d"}]},`, i, i+1, i+1)
	}
	fmt.Fprintf(&b, `"d%d":{"type":"string"}},"$ref":"#/$defs/d0"}`, n)
	return b.String()
}

func unknownTypes(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, `,"x%d"`, i)
	}
	return b.String()
}
