package jsonschema

import (
	"fmt"
	"strings"
	"testing"
)

// BenchmarkLargest converts the largest schemas the limits admit: 4,999
// properties with long names (refused as too large a grammar at the end),
// and 5,000 short required ones (accepted).
func BenchmarkLargest(b *testing.B) {
	long := func(n int) []byte {
		var s strings.Builder
		s.WriteString(`{"type":"object","properties":{`)
		for i := range n {
			if i > 0 {
				s.WriteString(",")
			}
			fmt.Fprintf(&s, `"property_number_%d":{"type":"integer"}`, i)
		}
		s.WriteString(`}}`)
		return []byte(s.String())
	}(4999)
	names := make([]string, 5000)
	for i := range names {
		names[i] = `"p` + itoa(int64(i)) + `"`
	}
	short := []byte(strings.TrimSuffix(manyProps(5000), "}") + `,"required":[` + strings.Join(names, ",") + `]}`)
	if err := Validate(short); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		schema []byte
	}{{"long names", long}, {"short names", short}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				_ = Validate(c.schema)
			}
		})
	}
}
