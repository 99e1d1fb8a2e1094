package jsonschema

// Bounds on what a schema may ask for. Conversion is linear in the schema
// (each subschema and each $ref target is built once), so these keep the
// grammar small enough for llama.cpp to parse per request and the largest
// schemas they admit under 100 ms to convert or refuse: BenchmarkLargest,
// 5,000 properties, 48–77 ms on this project's shared 2-core machine under
// load (a load average of 20); typical schemas take well under 1 ms.
const (
	// MaxSchemaBytes bounds the schema document. OpenAI's own limits (5,000
	// properties, 1,000 enum values, 120,000 characters of names and
	// values) fit in it.
	MaxSchemaBytes = 256 << 10

	// maxDepth bounds how deep subschemas nest, $refs followed included
	// (OpenAI allows 10 levels). The converter recurses once per level.
	maxDepth = 32

	// maxRefs bounds the $ref keywords followed. Each target becomes one
	// rule, built once.
	maxRefs = 1000

	// maxProperties bounds the properties of all objects together
	// (OpenAI's limit).
	maxProperties = 5000

	// maxEnumValues bounds enum values of all enums together (OpenAI's
	// limit).
	maxEnumValues = 1000

	// maxRepeat bounds every counted repetition (maxLength, maxItems,
	// {n,m} in a pattern): llama.cpp expands x{0,n} into n rules when it
	// parses the grammar. 2,000 is the cap upstream llama.cpp now puts on
	// repetitions (MAX_REPETITION_THRESHOLD).
	maxRepeat = 2000

	// maxPatternBytes bounds a pattern's source; maxPatternDepth its
	// nested groups.
	maxPatternBytes = 4096
	maxPatternDepth = 32

	// maxGrammarCost bounds the grammar's size once llama.cpp has expanded
	// its repetitions, in grammar elements (cost, in grammar.go). Measured
	// with stories260K on a loaded 2-core machine: a schema near the limit
	// (95 patterns of [a-z"]{2000}, ~190,000 elements) takes 19 ms in
	// Submit, conversion and llama.cpp's parse together, and decodes at the
	// usual speed.
	maxGrammarCost = 200_000

	// maxIntDigits bounds the digits of an integer the grammar writes:
	// 16 digits fit an int64 and a float64 exactly.
	maxIntDigits = 16
	// maxFracDigits bounds the digits after a number's decimal point.
	maxFracDigits = 16
)
