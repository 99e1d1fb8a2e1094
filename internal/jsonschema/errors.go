package jsonschema

import "fmt"

// Error is a schema the converter refuses: the keyword at fault and the
// JSON pointer of the subschema holding it.
type Error struct {
	Path    string // JSON pointer into the schema, "#" for the root
	Keyword string // the keyword at fault; empty for the document itself
	Reason  string
}

func (e *Error) Error() string {
	if e.Keyword == "" {
		return fmt.Sprintf("schema at %s: %s", e.Path, e.Reason)
	}
	return fmt.Sprintf("schema keyword %q at %s: %s", e.Keyword, e.Path, e.Reason)
}

func errAt(path, keyword, format string, args ...any) *Error {
	return &Error{Path: path, Keyword: keyword, Reason: fmt.Sprintf(format, args...)}
}
