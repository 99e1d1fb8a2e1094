package jsonschema

import "fmt"

// Alternatives (anyOf, oneOf, a list of types) that can begin with the
// same character are all followed by llama.cpp's sampler at once, one
// parse stack each, and every token is checked against every stack. Nested,
// they multiply: 30 alternatives of arrays of 30 of arrays of 30 strings
// kept 27,000 stacks alive and decoded less than 64 tokens in a minute,
// stalling every request on the runner. checkAmbiguity bounds the product
// along any nesting path of the alternatives that may be alive together.
// Alternatives are told apart by the JSON type they start with ('{', '[',
// '"', a digit, t/f, n), a conservative reading: two objects count as
// overlapping even if their keys differ.
const maxAmbiguity = 64

type ambWalk struct {
	c      *converter
	typeOf map[string]typeSet // $ref → what its target may start with
	seen   map[string]int     // $ref → the largest product it was walked with
	active map[string]int     // $refs being walked → the product at entry
}

func (c *converter) checkAmbiguity() error {
	w := &ambWalk{c: c, seen: map[string]int{}, active: map[string]int{}, typeOf: map[string]typeSet{}}
	return w.walk(c.root, "#", 1, 0)
}

func (w *ambWalk) walk(node any, path string, p, depth int) error {
	o, ok := node.(*object)
	if !ok || depth > 4*maxDepth {
		return nil
	}
	if v, ok := o.get("$ref"); ok {
		s, _ := v.(string)
		if q, on := w.active[s]; on {
			if p > q {
				return errAt(path, "$ref", "alternatives that begin alike (in anyOf, oneOf or a list of types) recurse through %q: the ways to read the output grow without bound", s)
			}
			return nil
		}
		if w.seen[s] >= p {
			return nil
		}
		target, err := resolve(w.c.root, s)
		if err != nil {
			return nil // refused by the converter already
		}
		w.seen[s], w.active[s] = p, p
		err = w.walk(target, s, p, depth+1)
		delete(w.active, s)
		return err
	}
	if v, ok := o.get("allOf"); ok {
		if a, isArr := v.([]any); isArr && len(a) == 1 {
			return w.walk(a[0], path+"/allOf/0", p, depth+1)
		}
	}
	for _, kw := range []string{"anyOf", "oneOf"} {
		v, ok := o.get(kw)
		if !ok {
			continue
		}
		alts, _ := v.([]any)
		sets := make([]typeSet, len(alts))
		for i, a := range alts {
			sets[i] = w.types(a, 0)
		}
		// How many alternatives may begin like each one: counted per
		// type, so thousands of alternatives take linear time (an
		// alternative of two types may be counted twice: an overestimate).
		var perType [6]int
		for _, ts := range sets {
			for b := range perType {
				if ts&(1<<b) != 0 {
					perType[b]++
				}
			}
		}
		for i, a := range alts {
			k := 0
			for b := range perType {
				if sets[i]&(1<<b) != 0 {
					k += perType[b]
				}
			}
			if p*k > maxAmbiguity {
				return errAt(path, kw, "alternatives that begin alike nest too deep: the output could be read %d ways at once, the limit is %d (give alternatives different types, or nest fewer of them)", p*k, maxAmbiguity)
			}
			if err := w.walk(a, fmt.Sprintf("%s/%s/%d", path, kw, i), p*k, depth+1); err != nil {
				return err
			}
		}
	}
	if v, ok := o.get("type"); ok {
		if list, isArr := v.([]any); isArr {
			k := 0
			var seen typeSet
			for _, t := range list {
				s, _ := t.(string)
				if ts := typeOf(s); seen&ts != 0 {
					k++ // integer and number overlap
				} else {
					seen |= ts
				}
			}
			p *= k + 1
			if p > maxAmbiguity {
				return errAt(path, "type", "types that begin alike nest too deep: the output could be read %d ways at once, the limit is %d", p, maxAmbiguity)
			}
		}
	}
	if props, ok := o.get("properties"); ok {
		if po, isObj := props.(*object); isObj && w.types(o, 0)&tObject != 0 {
			// Where a property may be left out, the sampler follows every
			// property that may come next until their names differ: 3,000
			// optional properties named property_number_N decoded at one
			// token a second on llama3-tiny.
			req, _ := o.get("required")
			reqList, _ := req.([]any)
			isRequired := make(map[any]bool, len(reqList))
			for _, r := range reqList {
				isRequired[r] = true
			}
			optional := 0
			for _, k := range po.keys {
				if !isRequired[k] {
					optional++
				}
			}
			if p*optional > maxAmbiguity {
				return errAt(path, "properties", "%d optional properties: the output could be read more than %d ways at once (make properties required, allowing null where a value may be missing)", optional, maxAmbiguity)
			}
		}
		if po, isObj := props.(*object); isObj {
			for _, k := range po.keys {
				if err := w.walk(po.vals[k], path+"/properties/"+pointerEscape(k), p, depth+1); err != nil {
					return err
				}
			}
		}
	}
	for _, kw := range []string{"items", "additionalProperties"} {
		if v, ok := o.get(kw); ok {
			if err := w.walk(v, path+"/"+kw, p, depth+1); err != nil {
				return err
			}
		}
	}
	for _, kw := range []string{"prefixItems", "items"} {
		if v, ok := o.get(kw); ok {
			if a, isArr := v.([]any); isArr {
				for i, x := range a {
					if err := w.walk(x, fmt.Sprintf("%s/%s/%d", path, kw, i), p, depth+1); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// typeSet is a set of JSON types by the character a value starts with.
type typeSet uint8

const (
	tObject typeSet = 1 << iota
	tArray
	tString
	tNumber
	tBool
	tNull
	tAll = tObject | tArray | tString | tNumber | tBool | tNull
)

func typeOf(name string) typeSet {
	switch name {
	case "object":
		return tObject
	case "array":
		return tArray
	case "string":
		return tString
	case "number", "integer":
		return tNumber
	case "boolean":
		return tBool
	case "null":
		return tNull
	}
	return tAll
}

func valueType(v any) typeSet {
	switch v.(type) {
	case nil:
		return tNull
	case bool:
		return tBool
	case string:
		return tString
	case []any:
		return tArray
	case *object:
		return tObject
	}
	return tNumber
}

// types is what a schema's values may start with.
func (w *ambWalk) types(node any, depth int) typeSet {
	o, ok := node.(*object)
	if !ok || depth > maxDepth {
		return tAll
	}
	if v, ok := o.get("$ref"); ok {
		// Each target once: a chain of definitions that each refer to
		// the next twice would otherwise be read 2^depth times. A cycle
		// (left recursion, refused already) reads as anything.
		s, _ := v.(string)
		if ts, ok := w.typeOf[s]; ok {
			return ts
		}
		w.typeOf[s] = tAll
		target, err := resolve(w.c.root, s)
		if err != nil {
			return tAll
		}
		ts := w.types(target, depth+1)
		w.typeOf[s] = ts
		return ts
	}
	if v, ok := o.get("allOf"); ok {
		if a, isArr := v.([]any); isArr && len(a) == 1 {
			return w.types(a[0], depth+1)
		}
	}
	for _, kw := range []string{"anyOf", "oneOf"} {
		if v, ok := o.get(kw); ok {
			var ts typeSet
			alts, _ := v.([]any)
			for _, a := range alts {
				ts |= w.types(a, depth+1)
			}
			return ts
		}
	}
	var ts typeSet
	if v, ok := o.get("const"); ok {
		return valueType(v)
	}
	if v, ok := o.get("enum"); ok {
		vals, _ := v.([]any)
		for _, x := range vals {
			ts |= valueType(x)
		}
		return ts
	}
	switch t := o.vals["type"].(type) {
	case string:
		return typeOf(t)
	case []any:
		for _, x := range t {
			s, _ := x.(string)
			ts |= typeOf(s)
		}
		return ts
	}
	return tAll
}
