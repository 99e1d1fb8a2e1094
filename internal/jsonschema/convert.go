package jsonschema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Grammar validates a JSON schema and returns the GBNF grammar (root rule
// "root") of JSON documents matching it. A refused schema is an *Error
// naming the keyword and where it is.
func Grammar(schema []byte) (string, error) {
	return GrammarFor(schema, nil)
}

// Validate reports whether Grammar accepts the schema, without writing the
// grammar out.
func Validate(schema []byte) error {
	_, err := build(schema, nil)
	return err
}

func build(schema []byte, a *Alphabet) (*grammar, error) {
	if len(schema) > MaxSchemaBytes {
		return nil, errAt("#", "", "the schema is %d bytes, the limit is %d", len(schema), MaxSchemaBytes)
	}
	root, err := parseOrdered(schema)
	if err != nil {
		return nil, errAt("#", "", "not valid JSON: %v", err)
	}
	c := &converter{g: newGrammar(), root: root, refs: map[string]int{}}
	top, err := c.gen(root, "#", 0)
	if err != nil {
		return nil, err
	}
	c.g.set(0, seq{top})
	if a != nil {
		if err := c.g.restrict(a); err != nil {
			return nil, errAt("#", "", "%v", err)
		}
	}
	if err := c.g.check(); err != nil {
		return nil, errAt("#", "", "the schema cannot be turned into a safe grammar: %v", err)
	}
	if err := c.checkAmbiguity(); err != nil {
		return nil, err
	}
	return c.g, nil
}

type converter struct {
	g      *grammar
	root   any
	refs   map[string]int // $ref → its rule
	nrefs  int
	nprops int
	nenum  int
}

// unsupported are validation keywords a grammar cannot enforce exactly;
// a schema using one is refused rather than answered with output that
// may not match it. Keywords not listed anywhere are annotations
// (title, description, default, examples, ...) and are ignored, as JSON
// Schema says of unknown keywords.
func unsupported() []string {
	return []string{
		"not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
		"patternProperties", "propertyNames", "unevaluatedProperties", "unevaluatedItems",
		"contains", "minContains", "maxContains", "multipleOf", "$dynamicRef", "$recursiveRef",
	}
}

// validation are the keywords this converter enforces.
func validation() []string {
	return []string{
		"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref",
		"properties", "required", "additionalProperties", "minProperties", "maxProperties",
		"items", "prefixItems", "minItems", "maxItems", "uniqueItems",
		"minLength", "maxLength", "pattern", "format",
		"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
	}
}

// typeKeywords are the validation keywords of each type.
func typeKeywords(t string) []string {
	return map[string][]string{
		"object":  {"properties", "required", "additionalProperties", "minProperties", "maxProperties"},
		"array":   {"items", "prefixItems", "minItems", "maxItems", "uniqueItems"},
		"string":  {"minLength", "maxLength", "pattern", "format"},
		"number":  {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
		"integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
	}[t]
}

func (c *converter) gen(node any, path string, depth int) (sym, error) {
	if depth > maxDepth {
		return sym{}, errAt(path, "", "subschemas nest more than %d levels deep", maxDepth)
	}
	switch n := node.(type) {
	case bool:
		if !n {
			return sym{}, errAt(path, "", "the schema false matches nothing")
		}
		return c.anyValue(), nil
	case *object:
		return c.genObject(n, path, depth)
	}
	return sym{}, errAt(path, "", "a schema must be an object or a boolean")
}

func (c *converter) genObject(o *object, path string, depth int) (sym, error) {
	for _, k := range unsupported() {
		if _, ok := o.get(k); ok {
			return sym{}, errAt(path, k, "not supported: a grammar cannot enforce it")
		}
	}
	if v, ok := o.get("uniqueItems"); ok && v != false {
		if mx, ok := o.get("maxItems"); !ok || !isNumber(mx, "0", "1") {
			return sym{}, errAt(path, "uniqueItems", "not supported: a grammar cannot enforce it")
		}
	}
	present := func(except ...string) []string {
		var out []string
		for _, k := range validation() {
			if _, ok := o.get(k); ok && !slices.Contains(except, k) {
				out = append(out, k)
			}
		}
		return out
	}
	// Keywords that stand for a whole schema take no validation siblings:
	// their intersection with them is not expressible in general.
	for _, k := range []string{"$ref", "anyOf", "oneOf", "allOf", "const", "enum"} {
		if _, ok := o.get(k); !ok {
			continue
		}
		allowed := []string{k}
		if k == "const" || k == "enum" {
			allowed = append(allowed, "type")
		}
		if others := present(allowed...); len(others) > 0 {
			return sym{}, errAt(path, k, "cannot be combined with %q in the same schema: move it into the alternatives or the referenced schema", others[0])
		}
	}
	if v, ok := o.get("$ref"); ok {
		return c.genRef(v, path, depth)
	}
	if v, ok := o.get("allOf"); ok {
		a, isArr := v.([]any)
		if !isArr || len(a) != 1 {
			return sym{}, errAt(path, "allOf", "only an allOf of exactly one schema is supported")
		}
		return c.gen(a[0], path+"/allOf/0", depth+1)
	}
	for _, k := range []string{"anyOf", "oneOf"} {
		if v, ok := o.get(k); ok {
			// oneOf is written as anyOf: the grammar cannot rule out a
			// document matching two alternatives (documented in api.md).
			a, isArr := v.([]any)
			if !isArr {
				return sym{}, errAt(path, k, "must be an array of schemas")
			}
			if len(a) == 0 {
				return sym{}, errAt(path, k, "an empty %s matches nothing", k)
			}
			alts := make([]seq, len(a))
			for i, s := range a {
				x, err := c.gen(s, fmt.Sprintf("%s/%s/%d", path, k, i), depth+1)
				if err != nil {
					return sym{}, err
				}
				alts[i] = seq{x}
			}
			return c.g.alt("any", alts...), nil
		}
	}
	types, err := schemaTypes(o, path)
	if err != nil {
		return sym{}, err
	}
	if v, ok := o.get("const"); ok {
		return c.literals([]any{v}, types, path, "const")
	}
	if v, ok := o.get("enum"); ok {
		a, isArr := v.([]any)
		if !isArr {
			return sym{}, errAt(path, "enum", "must be an array")
		}
		return c.literals(a, types, path, "enum")
	}
	if types == nil {
		// No type: the types whose keywords appear, or any value.
		for _, t := range []string{"object", "array", "string", "number"} {
			for _, k := range typeKeywords(t) {
				if _, ok := o.get(k); ok {
					types = append(types, t)
					break
				}
			}
		}
		if types == nil {
			return c.anyValue(), nil
		}
	}
	alts := make([]seq, 0, len(types))
	for _, t := range types {
		x, err := c.genType(t, o, path, depth)
		if err != nil {
			return sym{}, err
		}
		alts = append(alts, seq{x})
	}
	return c.g.alt("t", alts...), nil
}

func schemaTypes(o *object, path string) ([]string, error) {
	v, ok := o.get("type")
	if !ok {
		return nil, nil
	}
	var names []string
	switch t := v.(type) {
	case string:
		names = []string{t}
	case []any:
		if len(t) == 0 {
			return nil, errAt(path, "type", "an empty list of types matches nothing")
		}
		for _, x := range t {
			s, ok := x.(string)
			if !ok {
				return nil, errAt(path, "type", "must be a type name or a list of them")
			}
			if slices.Contains(names, s) {
				return nil, errAt(path, "type", "lists %q twice", s)
			}
			if typeOf(s) == tAll {
				return nil, errAt(path, "type", "unknown type %q", s)
			}
			names = append(names, s)
		}
	default:
		return nil, errAt(path, "type", "must be a type name or a list of them")
	}
	for _, s := range names {
		switch s {
		case "object", "array", "string", "number", "integer", "boolean", "null":
		default:
			return nil, errAt(path, "type", "unknown type %q", s)
		}
	}
	return names, nil
}

func (c *converter) genType(t string, o *object, path string, depth int) (sym, error) {
	switch t {
	case "null":
		return lit("null"), nil
	case "boolean":
		return c.g.alt("t", seq{lit("true")}, seq{lit("false")}), nil
	case "integer":
		return c.genInteger(o, path)
	case "number":
		return c.genNumber(o, path)
	case "string":
		return c.genString(o, path)
	case "array":
		return c.genArray(o, path, depth)
	case "object":
		return c.genObjectType(o, path, depth)
	}
	return sym{}, errAt(path, "type", "unknown type %q", t)
}

func (c *converter) genRef(v any, path string, depth int) (sym, error) {
	s, ok := v.(string)
	if !ok {
		return sym{}, errAt(path, "$ref", "must be a string")
	}
	if i, ok := c.refs[s]; ok {
		return ref(i), nil
	}
	c.nrefs++
	if c.nrefs > maxRefs {
		return sym{}, errAt(path, "$ref", "more than %d distinct references", maxRefs)
	}
	if !strings.HasPrefix(s, "#") {
		return sym{}, errAt(path, "$ref", "only references inside the schema (#/$defs/..., #/definitions/...) are supported, not %q", s)
	}
	target, err := resolve(c.root, s)
	if err != nil {
		return sym{}, errAt(path, "$ref", "%q does not resolve: %v", s, err)
	}
	i := c.g.add("ref")
	c.refs[s] = i
	c.g.refOf[i] = s
	x, err := c.gen(target, s, depth+1)
	if err != nil {
		return sym{}, err
	}
	c.g.set(i, seq{x})
	return ref(i), nil
}

// resolve follows a JSON pointer fragment ("#/$defs/a") from the root.
func resolve(root any, ref string) (any, error) {
	frag, err := url.PathUnescape(ref[1:])
	if err != nil {
		return nil, fmt.Errorf("invalid escape")
	}
	if frag == "" {
		return root, nil
	}
	if !strings.HasPrefix(frag, "/") {
		return nil, fmt.Errorf("not a JSON pointer (anchors are not supported)")
	}
	cur := root
	for _, part := range strings.Split(frag[1:], "/") {
		part = strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")
		switch n := cur.(type) {
		case *object:
			v, ok := n.get(part)
			if !ok {
				return nil, fmt.Errorf("no member %q", part)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil || i < 0 || i >= len(n) {
				return nil, fmt.Errorf("no element %q", part)
			}
			cur = n[i]
		default:
			return nil, fmt.Errorf("%q goes past a value", part)
		}
	}
	return cur, nil
}

// literals writes enum or const values as JSON text, keeping those that
// match the schema's type when it has one.
func (c *converter) literals(vals []any, types []string, path, kw string) (sym, error) {
	c.nenum += len(vals)
	if c.nenum > maxEnumValues {
		return sym{}, errAt(path, kw, "more than %d enum and const values in the schema", maxEnumValues)
	}
	var alts []seq
	for _, v := range vals {
		if types != nil && !slices.ContainsFunc(types, func(t string) bool { return hasType(v, t) }) {
			continue
		}
		var b bytes.Buffer
		marshalValue(&b, v)
		alts = append(alts, seq{lit(b.String())})
	}
	if len(alts) == 0 {
		if kw == "enum" && len(vals) == 0 {
			return sym{}, errAt(path, kw, "an empty enum matches nothing")
		}
		return sym{}, errAt(path, kw, "no value matches the schema's type")
	}
	return c.g.alt("lit", alts...), nil
}

func hasType(v any, t string) bool {
	switch x := v.(type) {
	case nil:
		return t == "null"
	case bool:
		return t == "boolean"
	case string:
		return t == "string"
	case []any:
		return t == "array"
	case *object:
		return t == "object"
	case json.Number:
		if t == "number" {
			return true
		}
		if t != "integer" {
			return false
		}
		r, err := parseRat(x)
		return err == nil && r.IsInt()
	}
	return false
}

// parseRat reads a JSON number exactly. Exponents are bounded first:
// big.Rat would compute 10^1000000000 for "1e1000000000".
func parseRat(n json.Number) (*big.Rat, error) {
	s := n.String()
	if len(s) > 64 {
		return nil, fmt.Errorf("number %.20s... is too long", s)
	}
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil || e > 400 || e < -400 {
			return nil, fmt.Errorf("number %s is out of range", s)
		}
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		return nil, fmt.Errorf("invalid number %s", s)
	}
	return r, nil
}

func isNumber(v any, vals ...string) bool {
	n, ok := v.(json.Number)
	return ok && slices.Contains(vals, n.String())
}

// count reads a non-negative integer keyword (minLength, maxItems, ...),
// bounded by maxRepeat.
func count(o *object, path, kw string) (int, bool, error) {
	v, ok := o.get(kw)
	if !ok {
		return 0, false, nil
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return 0, false, errAt(path, kw, "must be a non-negative integer")
	}
	r, err := parseRat(n)
	if err != nil || !r.IsInt() || r.Sign() < 0 {
		return 0, false, errAt(path, kw, "must be a non-negative integer")
	}
	if r.Cmp(big.NewRat(maxRepeat, 1)) > 0 {
		return 0, false, errAt(path, kw, "%s is above the limit of %d", n, maxRepeat)
	}
	return int(r.Num().Int64()), true, nil
}

// bounds reads a min/max pair of counts; the max is unbounded when absent.
func bounds(o *object, path, minKw, maxKw string) (lo, hi int, err error) {
	lo, _, err = count(o, path, minKw)
	if err != nil {
		return 0, 0, err
	}
	hi, hasMax, err := count(o, path, maxKw)
	if err != nil {
		return 0, 0, err
	}
	if !hasMax {
		return lo, unbounded, nil
	}
	if lo > hi {
		return 0, 0, errAt(path, minKw, "%s %d is above %s %d: nothing matches", minKw, lo, maxKw, hi)
	}
	return lo, hi, nil
}
