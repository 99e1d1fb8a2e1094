package jsonschema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
)

// Shared rules: built once per grammar, on first use.

// ws is the whitespace between tokens: nothing, a space, or one line
// break and up to 20 characters of indentation. Bounded, so a model
// cannot spin in whitespace forever; one line break, because with any mix
// of 20 the test model wrote 19 newlines around every colon (142 tokens
// for {"n":3,"ok":true}).
func (c *converter) ws() sym {
	return c.g.shared("ws", func(i int) {
		c.g.set(i, seq{}, seq{lit(" ")}, seq{lit("\n"), class(newSet(runeRange{'\t', '\t'}, runeRange{' ', ' '})).rep(0, 20)})
	})
}

// char is one character of a JSON string: a plain character or a
// two-character escape (no \u escapes: the model writes the character).
func (c *converter) char() sym {
	return c.g.shared("char", func(i int) {
		c.g.set(i,
			seq{class(jsonPlain())},
			seq{lit(`\`), class(newSet(runeRange{'"', '"'}, runeRange{'/', '/'}, runeRange{'\\', '\\'},
				runeRange{'b', 'b'}, runeRange{'f', 'f'}, runeRange{'n', 'n'}, runeRange{'r', 'r'}, runeRange{'t', 't'}))})
	})
}

func (c *converter) str() sym {
	return c.g.shared("string", func(i int) {
		c.g.set(i, seq{lit(`"`), c.char().rep(0, unbounded), lit(`"`)})
	})
}

func digits() charSet { return newSet(runeRange{'0', '9'}) }

func (c *converter) integer() sym {
	return c.g.shared("integer", func(i int) {
		c.g.set(i, seq{lit("0")},
			seq{lit("-").rep(0, 1), class(newSet(runeRange{'1', '9'})), class(digits()).rep(0, maxIntDigits-1)})
	})
}

// number has no exponent: some parsers (Go's among them) refuse 1e999,
// and a grammar may allow less than the schema.
func (c *converter) number() sym {
	return c.g.shared("number", func(i int) {
		frac := c.g.alt("frac", seq{lit("."), class(digits()).rep(1, maxFracDigits)})
		c.g.set(i, seq{c.integer(), frac.rep(0, 1)})
	})
}

// anyValue is any JSON value, objects and arrays of any depth.
func (c *converter) anyValue() sym {
	return c.g.shared("value", func(i int) {
		c.g.set(i, seq{c.anyObject()}, seq{c.anyArray(ref(i))}, seq{c.str()}, seq{c.number()},
			seq{lit("true")}, seq{lit("false")}, seq{lit("null")})
	})
}

func (c *converter) anyObject() sym {
	return c.g.shared("object", func(i int) {
		c.g.set(i, c.mapOf(c.anyValue(), unbounded)...)
	})
}

func (c *converter) anyArray(value sym) sym {
	return c.g.shared("array", func(i int) {
		c.g.set(i, c.arrayOf(nil, value, 0, unbounded))
	})
}

// mapOf is an object with any keys and values of one kind, at most hi of
// them.
func (c *converter) mapOf(value sym, hi int) []seq {
	ws := c.ws()
	if hi == 0 {
		return []seq{{lit("{"), ws, lit("}")}}
	}
	member := c.g.alt("kv", seq{c.str(), ws, lit(":"), ws, value, ws})
	more := c.g.alt("kvs", seq{lit(","), ws, member})
	moreHi := unbounded
	if hi != unbounded {
		moreHi = hi - 1
	}
	rest := c.g.alt("kvl", seq{member, more.rep(0, moreHi)})
	return []seq{{lit("{"), ws, rest.rep(0, 1), lit("}")}}
}

// arrayOf is an array of the prefix items, then lo..hi more of item (hi
// counts the prefix too).
func (c *converter) arrayOf(prefix []sym, item sym, lo, hi int) seq {
	ws := c.ws()
	out := seq{lit("["), ws}
	for i, p := range prefix {
		if i > 0 {
			out = append(out, lit(","), ws)
		}
		out = append(out, p, ws)
	}
	k := len(prefix)
	if hi != unbounded && hi == k {
		return append(out, lit("]"))
	}
	itemWS := c.g.alt("it", seq{item, ws})
	next := c.g.alt("its", seq{lit(","), ws, itemWS})
	moreLo, moreHi := max(0, lo-k), unbounded
	if hi != unbounded {
		moreHi = hi - k
	}
	if k > 0 {
		return append(out, next.rep(moreLo, moreHi), lit("]"))
	}
	// No prefix: the first item has no comma.
	restHi := unbounded
	if moreHi != unbounded {
		restHi = moreHi - 1
	}
	if moreLo >= 1 {
		return append(out, itemWS, next.rep(moreLo-1, restHi), lit("]"))
	}
	list := c.g.alt("itl", seq{itemWS, next.rep(0, restHi)})
	return append(out, list.rep(0, 1), lit("]"))
}

// numBounds are a number's minimum and maximum as read from the schema;
// nil where absent.
type numBounds struct {
	lo, hi         *big.Rat
	loExcl, hiExcl bool
}

func readBounds(o *object, path string) (numBounds, error) {
	var nb numBounds
	if v, ok := o.get("exclusiveMinimum"); ok {
		if b, isBool := v.(bool); isBool {
			nb.loExcl = b // draft 4: a flag on minimum
		}
	}
	if v, ok := o.get("exclusiveMaximum"); ok {
		if b, isBool := v.(bool); isBool {
			nb.hiExcl = b
		}
	}
	for _, kw := range []string{"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"} {
		v, ok := o.get(kw)
		if !ok {
			continue
		}
		excl := kw == "exclusiveMinimum" || kw == "exclusiveMaximum"
		if _, isBool := v.(bool); isBool && excl {
			continue
		}
		n, isNum := v.(json.Number)
		if !isNum {
			return nb, errAt(path, kw, "must be a number")
		}
		r, err := parseRat(n)
		if err != nil {
			return nb, errAt(path, kw, "%v", err)
		}
		// Where both minimum and exclusiveMinimum are given, the tighter
		// one holds.
		if kw == "minimum" || kw == "exclusiveMinimum" {
			if c := cmpRat(r, nb.lo); nb.lo == nil || c > 0 || c == 0 && excl {
				nb.lo, nb.loExcl = r, excl || (kw == "minimum" && nb.loExcl)
			}
		} else {
			if c := cmpRat(r, nb.hi); nb.hi == nil || c < 0 || c == 0 && excl {
				nb.hi, nb.hiExcl = r, excl || (kw == "maximum" && nb.hiExcl)
			}
		}
	}
	return nb, nil
}

// contradiction refuses bounds no value satisfies whatever its type.
func (nb numBounds) contradiction(path string) error {
	if nb.lo == nil || nb.hi == nil {
		return nil
	}
	if c := nb.lo.Cmp(nb.hi); c > 0 || c == 0 && (nb.loExcl || nb.hiExcl) {
		return errAt(path, "minimum", "the minimum %s is above the maximum %s: nothing matches", nb.lo.RatString(), nb.hi.RatString())
	}
	return nil
}

func cmpRat(a, b *big.Rat) int {
	if b == nil {
		return 0
	}
	return a.Cmp(b)
}

func floorRat(r *big.Rat) *big.Int { return new(big.Int).Div(r.Num(), r.Denom()) } // Euclidean: floor, the denominator being positive

func ceilRat(r *big.Rat) *big.Int {
	f := floorRat(r)
	if !r.IsInt() {
		f.Add(f, big.NewInt(1))
	}
	return f
}

// ints are the integer bounds: the integers in [lo, hi] are exactly those
// the schema allows, clamped to what the grammar writes (±maxInt).
func (nb numBounds) ints() (lo, hi *big.Int) {
	lo, hi = big.NewInt(-maxInt), big.NewInt(maxInt)
	if nb.lo != nil {
		b := ceilRat(nb.lo)
		if nb.loExcl && nb.lo.IsInt() {
			b.Add(b, big.NewInt(1))
		}
		lo = maxBig(lo, b)
	}
	if nb.hi != nil {
		b := floorRat(nb.hi)
		if nb.hiExcl && nb.hi.IsInt() {
			b.Sub(b, big.NewInt(1))
		}
		hi = minBig(hi, b)
	}
	return lo, hi
}

func maxBig(a, b *big.Int) *big.Int {
	if a.Cmp(b) >= 0 {
		return a
	}
	return b
}

func minBig(a, b *big.Int) *big.Int {
	if a.Cmp(b) <= 0 {
		return a
	}
	return b
}

func (c *converter) genInteger(o *object, path string) (sym, error) {
	nb, err := readBounds(o, path)
	if err != nil {
		return sym{}, err
	}
	if nb.lo == nil && nb.hi == nil {
		return c.integer(), nil
	}
	if err := nb.contradiction(path); err != nil {
		return sym{}, err
	}
	lo, hi := nb.ints()
	if lo.Cmp(hi) > 0 {
		return sym{}, errAt(path, "minimum", "no integer of at most %d digits lies between the minimum and the maximum", maxIntDigits)
	}
	return c.g.alt("int", intRange(lo.Int64(), hi.Int64())...), nil
}

// genNumber writes a bounded number as a subset that is exact to check:
// the integers in range, "n.ddd" for n >= 0 where all of [n, n+1) is in
// range, and "-n.ddd" for n >= 0 where all of (-(n+1), -n] is.
func (c *converter) genNumber(o *object, path string) (sym, error) {
	nb, err := readBounds(o, path)
	if err != nil {
		return sym{}, err
	}
	if nb.lo == nil && nb.hi == nil {
		return c.number(), nil
	}
	if err := nb.contradiction(path); err != nil {
		return sym{}, err
	}
	loInt, hiInt := nb.ints()
	var alts []seq
	if loInt.Cmp(hiInt) <= 0 {
		alts = append(alts, intRange(loInt.Int64(), hiInt.Int64())...)
	}
	frac := c.g.alt("frac", seq{lit("."), class(digits()).rep(1, maxFracDigits)})
	big0, bigMax := big.NewInt(0), big.NewInt(maxInt)
	// n.ddd: n >= loInt (n itself is allowed) and n+1 <= hi.
	posHi := new(big.Int).Set(bigMax)
	if nb.hi != nil {
		posHi = minBig(posHi, new(big.Int).Sub(floorRat(nb.hi), big.NewInt(1)))
	}
	if posLo := maxBig(big0, loInt); posLo.Cmp(posHi) <= 0 {
		for _, a := range natRange(posLo.Int64(), posHi.Int64()) {
			alts = append(alts, append(a, frac))
		}
	}
	// -n.ddd: -n <= hiInt (-n itself is allowed) and -(n+1) >= lo.
	negHi := new(big.Int).Set(bigMax)
	if nb.lo != nil {
		negHi = minBig(negHi, new(big.Int).Sub(new(big.Int).Neg(ceilRat(nb.lo)), big.NewInt(1)))
	}
	if negLo := maxBig(big0, new(big.Int).Neg(hiInt)); negLo.Cmp(negHi) <= 0 {
		for _, a := range natRange(negLo.Int64(), negHi.Int64()) {
			alts = append(alts, append(append(seq{lit("-")}, a...), frac))
		}
	}
	if len(alts) == 0 {
		return sym{}, errAt(path, "minimum", "no number of at most %d digits lies between the minimum and the maximum", maxIntDigits)
	}
	return c.g.alt("num", alts...), nil
}

func (c *converter) genString(o *object, path string) (sym, error) {
	lo, hi, err := bounds(o, path, "minLength", "maxLength")
	if err != nil {
		return sym{}, err
	}
	_, hasMin := o.get("minLength")
	_, hasMax := o.get("maxLength")
	pat, hasPat := o.get("pattern")
	format, hasFormat := o.get("format")
	if hasPat && (hasMin || hasMax || hasFormat) {
		return sym{}, errAt(path, "pattern", "cannot be combined with minLength, maxLength or format: put the length in the pattern")
	}
	if hasFormat && (hasMin || hasMax) {
		return sym{}, errAt(path, "format", "cannot be combined with minLength or maxLength")
	}
	if hasPat {
		src, ok := pat.(string)
		if !ok {
			return sym{}, errAt(path, "pattern", "must be a string")
		}
		body, err := c.g.pattern(src)
		if err != nil {
			return sym{}, errAt(path, "pattern", "%v", err)
		}
		return c.g.alt("str", seq{lit(`"`), body, lit(`"`)}), nil
	}
	if hasFormat {
		name, ok := format.(string)
		if !ok {
			return sym{}, errAt(path, "format", "must be a string")
		}
		body, err := c.format(name)
		if err != nil {
			return sym{}, errAt(path, "format", "%v", err)
		}
		return c.g.alt("str", seq{lit(`"`), body, lit(`"`)}), nil
	}
	if lo == 0 && hi == unbounded {
		return c.str(), nil
	}
	return c.g.alt("str", seq{lit(`"`), c.char().rep(lo, hi), lit(`"`)}), nil
}

func (c *converter) genArray(o *object, path string, depth int) (sym, error) {
	lo, hi, err := bounds(o, path, "minItems", "maxItems")
	if err != nil {
		return sym{}, err
	}
	var prefixSchemas []any
	prefixKw := "prefixItems"
	if v, ok := o.get("prefixItems"); ok {
		a, isArr := v.([]any)
		if !isArr {
			return sym{}, errAt(path, "prefixItems", "must be an array of schemas")
		}
		prefixSchemas = a
	}
	items, hasItems := o.get("items")
	if a, isArr := items.([]any); isArr {
		// Draft 4 tuples: items as an array is prefixItems, and
		// additionalItems is ignored (no more items are written).
		if prefixSchemas != nil {
			return sym{}, errAt(path, "items", "an array of items cannot be combined with prefixItems")
		}
		prefixSchemas, prefixKw, items, hasItems = a, "items", false, true
	}
	// The prefix items written: as many as the schema lists, but no more
	// than maxItems.
	k := len(prefixSchemas)
	if hi != unbounded && hi < k {
		k = hi
	}
	if k > maxRepeat {
		return sym{}, errAt(path, prefixKw, "lists more than %d items", maxRepeat)
	}
	prefix := make([]sym, k)
	for i := range k {
		x, err := c.gen(prefixSchemas[i], fmt.Sprintf("%s/%s/%d", path, prefixKw, i), depth+1)
		if err != nil {
			return sym{}, err
		}
		prefix[i] = x
	}
	if hi == unbounded || hi > k {
		// More items than the prefix may follow.
		if b, isBool := items.(bool); hasItems && isBool && !b {
			if lo > k {
				return sym{}, errAt(path, "minItems", "%d items are required but only %d are allowed", lo, k)
			}
			hi = k
		} else if k < len(prefixSchemas) {
			hi = k // maxItems cut the prefix: nothing follows it
		}
	}
	item := sym{}
	if hi == unbounded || hi > k {
		if hasItems {
			item, err = c.gen(items, path+"/items", depth+1)
			if err != nil {
				return sym{}, err
			}
		} else if k > 0 && lo <= k {
			hi = k // a subset: no items past the prefix
		} else {
			item = c.anyValue()
		}
	}
	return c.g.alt("arr", c.arrayOf(prefix, item, lo, hi)), nil
}

func (c *converter) genObjectType(o *object, path string, depth int) (sym, error) {
	minP, maxP, err := bounds(o, path, "minProperties", "maxProperties")
	if err != nil {
		return sym{}, err
	}
	ap, hasAP := o.get("additionalProperties")
	apFalse := hasAP && ap == false
	var apSchema any = true
	if hasAP {
		switch ap.(type) {
		case bool, *object:
			apSchema = ap
		default:
			return sym{}, errAt(path, "additionalProperties", "must be a boolean or a schema")
		}
	}
	var props *object
	if v, ok := o.get("properties"); ok {
		p, isObj := v.(*object)
		if !isObj {
			return sym{}, errAt(path, "properties", "must be an object of schemas")
		}
		props = p
	}
	var required []string
	isRequired := map[string]bool{} // a set: 5,000 names compared pairwise took 200 ms
	if v, ok := o.get("required"); ok {
		a, isArr := v.([]any)
		if !isArr {
			return sym{}, errAt(path, "required", "must be an array of property names")
		}
		for _, x := range a {
			s, isStr := x.(string)
			if !isStr {
				return sym{}, errAt(path, "required", "must be an array of property names")
			}
			if !isRequired[s] {
				isRequired[s] = true
				required = append(required, s)
			}
		}
	}
	if props == nil && len(required) == 0 {
		// A map: any keys, values of additionalProperties.
		if minP > 0 {
			return sym{}, errAt(path, "minProperties", "not supported on an object without properties")
		}
		if apFalse {
			return c.g.alt("obj", c.mapOf(sym{}, 0)...), nil
		}
		if apSchema == true && maxP == unbounded {
			return c.anyObject(), nil
		}
		value, err := c.gen(apSchema, path+"/additionalProperties", depth+1)
		if err != nil {
			return sym{}, err
		}
		return c.g.alt("obj", c.mapOf(value, maxP)...), nil
	}
	type prop struct {
		name     string
		schema   any
		path     string
		required bool
	}
	var list []prop
	if props != nil {
		for _, k := range props.keys {
			list = append(list, prop{k, props.vals[k], path + "/properties/" + pointerEscape(k), isRequired[k]})
		}
	}
	for _, r := range required {
		if props != nil {
			if _, ok := props.get(r); ok {
				continue
			}
		}
		if apFalse {
			return sym{}, errAt(path, "required", "property %q is required but not allowed (additionalProperties is false)", r)
		}
		list = append(list, prop{r, apSchema, path + "/additionalProperties", true})
	}
	c.nprops += len(list)
	if c.nprops > maxProperties {
		return sym{}, errAt(path, "properties", "more than %d properties in the schema", maxProperties)
	}
	nreq := len(required)
	if minP > nreq {
		return sym{}, errAt(path, "minProperties", "more than the %d required properties: not supported", nreq)
	}
	if maxP != unbounded && maxP < len(list) {
		return sym{}, errAt(path, "maxProperties", "fewer than the %d properties listed: not supported", len(list))
	}
	ws := c.ws()
	members := make([]sym, len(list))
	for i, p := range list {
		v, err := c.gen(p.schema, p.path, depth+1)
		if err != nil {
			return sym{}, err
		}
		var key bytes.Buffer
		writeJSONString(&key, p.name)
		members[i] = c.g.alt("kv", seq{lit(key.String()), ws, lit(":"), ws, v, ws})
	}
	// Properties in declared order, required ones always, optional ones
	// maybe. after[i]: members i.. when one is already written (each
	// starts with a comma); first[i]: the same when none is.
	n := len(list)
	after := make([]sym, n+1)
	first := make([]sym, n+1)
	for i := n - 1; i >= 0; i-- {
		var a, f []seq
		withComma := seq{lit(","), ws, members[i]}
		if i+1 < n {
			withComma = append(withComma, after[i+1])
		}
		a = append(a, withComma)
		if !list[i].required && i+1 < n {
			a = append(a, seq{after[i+1]})
		}
		if !list[i].required && i+1 == n {
			a = append(a, seq{})
		}
		start := seq{members[i]}
		if i+1 < n {
			start = append(start, after[i+1])
		}
		f = append(f, start)
		if !list[i].required {
			if i+1 < n {
				f = append(f, seq{first[i+1]})
			} else {
				f = append(f, seq{})
			}
		}
		ai := c.g.add("after")
		c.g.set(ai, a...)
		after[i] = ref(ai)
		fi := c.g.add("props")
		c.g.set(fi, f...)
		first[i] = ref(fi)
	}
	if n == 0 {
		return c.g.alt("obj", seq{lit("{"), ws, lit("}")}), nil
	}
	return c.g.alt("obj", seq{lit("{"), ws, first[0], lit("}")}), nil
}

func pointerEscape(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		switch r {
		case '~':
			b.WriteString("~0")
		case '/':
			b.WriteString("~1")
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
