// Package jsonschema validates an OpenAI response_format JSON schema and
// turns it into a GBNF grammar for llama.cpp's sampler, in pure Go.
//
// llama.cpp's own converter (llama.SchemaToGrammar) accepts schemas whose
// grammars crash the sampler: a pattern that matches nothing or an integer
// range with minimum above maximum leaves a state where no token can
// continue, and the sampler throws an uncaught C++ exception that kills the
// whole runner. It also expands maxLength in memory without a bound and
// takes seconds on schemas full of unresolvable $refs. This package is
// the only way a schema becomes a grammar: it refuses what it cannot
// express exactly (with the keyword and its JSON path), bounds every
// count, and checks the grammar it built (every rule derives a finite
// string, every character class is non-empty, no left recursion) before
// anyone hands it to llama.cpp.
//
// A grammar may allow fewer documents than the schema does (a subset is
// always safe: whatever the model writes still matches the schema), never
// more. So optional properties keep their declared order, additional
// properties are never written, numbers have at most 16 integer and 16
// fraction digits and no exponent, and strings use no \u escapes.
package jsonschema
