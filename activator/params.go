package activator

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/infer-run/infer/registry"
)

// Request values are checked here before any of them reaches Postgres,
// which refuses a NUL byte, invalid UTF-8 or a number past a column's
// range with an error that would otherwise read as an outage (503
// registry_unavailable). Each check names the parameter, as OpenAI's
// errors do.

// maxTextParam bounds a free-text query or path parameter (a key ID, a
// deployment name used as a filter); real ones are under 100 bytes.
const maxTextParam = 256

// textParam checks a query or path parameter that is looked up or
// compared in the registry: valid UTF-8, no control characters, at most
// maxTextParam bytes.
func textParam(name, v string) *apiError {
	if len(v) > maxTextParam {
		return errInvalid(name, "%s is %d bytes long; at most %d are allowed", name, len(v), maxTextParam)
	}
	if !utf8.ValidString(v) {
		return errInvalid(name, "%s is not valid UTF-8", name)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return errInvalid(name, "%s contains the control character %U", name, r)
		}
	}
	return nil
}

// sha256Pattern is an artifact's digest as the API spells it.
var sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)

// artifactParam checks an artifact digest before it is looked up.
func artifactParam(v string) *apiError {
	if !sha256Pattern.MatchString(v) {
		return errInvalid("artifact", "artifact must be the sha256 of uploaded weights: 64 lowercase hexadecimal digits")
	}
	return nil
}

// limitsParam checks a key's limits as registry.Limits.Validate does,
// naming the field.
func limitsParam(l registry.Limits) *apiError {
	err := l.Validate()
	if err == nil {
		return nil
	}
	param := ""
	if fe := (*registry.FieldError)(nil); errors.As(err, &fe) {
		param = fe.Field
	}
	return errInvalid(param, "%v", err)
}

// decodeError turns a JSON decoding error into a 400 that names the field
// and the type it needs, in JSON's words rather than Go's: encoding/json
// says "json: cannot unmarshal number 1e40 into Go struct field
// deploymentSpec.min_runners of type int", which names a Go type and
// struct that are none of the client's business. what is what the body
// is ("deployment", "request").
func decodeError(err error, what string) *apiError {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		want := jsonType(typeErr.Type)
		got := typeErr.Value
		typeErr.Field = jsonField(typeErr.Field)
		if typeErr.Field == "" {
			return errInvalid("", "the %s must be %s, not %s", what, want, got)
		}
		if strings.HasPrefix(got, "number") && (want == "an integer" || want == "a number") {
			// 1e40 for an int, 1.5 for an int, 1e400 for a float.
			return errInvalid(typeErr.Field, "%s must be %s within its range, not %s", typeErr.Field, want, got)
		}
		return errInvalid(typeErr.Field, "%s must be %s, not %s", typeErr.Field, want, got)
	case errors.As(err, &syntaxErr):
		return errInvalid("", "the %s is not valid JSON (at byte %d): %s", what, syntaxErr.Offset, strings.TrimPrefix(syntaxErr.Error(), "json: "))
	case isTimeout(err):
		return errBodyTimeout()
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errInvalid("", "the %s ends before its JSON does", what)
	case errors.Is(err, io.EOF):
		return errInvalid("", "the %s is empty; send a JSON object", what)
	}
	// The rest come from the fields' own UnmarshalJSON (a duration, stop,
	// prompt), whose messages are written for clients, or from reading
	// the body, whose are not.
	var fe *fieldDecodeError
	if errors.As(err, &fe) {
		return errInvalid("", "%s", fe.msg)
	}
	var ne net.Error
	if msg := err.Error(); !errors.As(err, &ne) && !strings.HasPrefix(msg, "json: ") && !strings.Contains(msg, "read ") {
		return errInvalid("", "could not parse the %s: %s", what, msg)
	}
	return errInvalid("", "could not parse the %s", what)
}

// isTimeout reports whether err is a read deadline passing.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errBodyTimeout answers a request whose body did not arrive before its
// deadline (see bodyDeadline), without the connection's addresses that
// the read error names.
func errBodyTimeout() *apiError {
	return errStatus(http.StatusRequestTimeout, "invalid_request_error", "request_timeout",
		"the request body did not arrive in time; send it at once")
}

// bodyReadError is a failed read of a request body, said for the client.
func bodyReadError(err error) *apiError {
	if isTimeout(err) {
		return errBodyTimeout()
	}
	return errInvalid("", "the request body could not be read to its end")
}

// jsonField is encoding/json's path of a field as the client wrote it:
// encoding/json puts the Go name of an embedded struct in the path
// ("Limits.requests_per_minute"), and every JSON name of this API is
// lowercase, so capitalised elements are Go's and are dropped.
func jsonField(path string) string {
	var out []string
	for _, e := range strings.Split(path, ".") {
		if e != "" && !unicode.IsUpper(rune(e[0])) {
			out = append(out, e)
		}
	}
	return strings.Join(out, ".")
}

// fieldDecodeError is an error an UnmarshalJSON of this package wrote for
// clients.
type fieldDecodeError struct{ msg string }

func (e *fieldDecodeError) Error() string { return e.msg }

// jsonType names a Go type as JSON would.
func jsonType(t reflect.Type) string {
	if t == nil {
		return "a value of another type"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice, reflect.Array:
		elem := strings.TrimPrefix(strings.TrimPrefix(jsonType(t.Elem()), "a "), "an ")
		if !strings.Contains(elem, " ") {
			elem += "s"
		}
		return "an array of " + elem
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a value of another type"
}
