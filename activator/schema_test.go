package activator_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestSchemaRefused: the hostile schemas of issue 19 get a 400 naming
// response_format from the server itself, at once and with no runner: the
// activator refuses them before they are queued (a queued job would wait
// for a runner until the queue timeout).
func TestSchemaRefused(t *testing.T) {
	h := newHarness(t)
	h.deploy("stories", map[string]any{"queue_timeout": "30s"})
	for name, s := range map[string]string{
		"impossible pattern":        `{"type":"string","pattern":"^(?!)$"}`,
		"integer range reversed":    `{"type":"object","properties":{"n":{"type":"integer","minimum":3,"maximum":2}},"required":["n"]}`,
		"empty anyOf":               `{"anyOf":[]}`,
		"deep nesting":              strings.Repeat(`{"anyOf":[`, 300) + `{}` + strings.Repeat(`]}`, 300),
		"maxLength 500000":          `{"type":"string","maxLength":500000}`,
		"2000 unresolvable $refs":   manyMissingRefs(2000),
		"recursion with no way out": `{"$defs":{"a":{"type":"object","properties":{"a":{"$ref":"#/$defs/a"}},"required":["a"]}},"$ref":"#/$defs/a"}`,
	} {
		t.Run(name, func(t *testing.T) {
			body := `{"model":"stories","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":` + s + `}}}`
			resp := h.do(http.MethodPost, "/v1/chat/completions", body)
			defer resp.Body.Close()
			var e struct {
				Error struct {
					Message, Type string
					Param, Code   *string
				}
			}
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusBadRequest || e.Error.Type != "invalid_request_error" ||
				e.Error.Param == nil || *e.Error.Param != "response_format" || e.Error.Message == "" {
				t.Fatalf("got %d %+v; want 400 invalid_request_error with param response_format", resp.StatusCode, e.Error)
			}
			t.Logf("%s", e.Error.Message)
		})
	}
}

// manyMissingRefs is an object schema of n properties, each a $ref to a
// definition that does not exist.
func manyMissingRefs(n int) string {
	var b strings.Builder
	b.WriteString(`{"type":"object","properties":{`)
	for i := range n {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"p%d":{"$ref":"#/$defs/missing%d"}`, i, i)
	}
	b.WriteString(`}}`)
	return b.String()
}
