package wire

import (
	"strings"
	"testing"
)

func TestValidKey(t *testing.T) {
	for _, tc := range []struct {
		key  string
		want bool
	}{
		{"dep_abcdefghijklmnopqrstuvwxyz", true},
		{"dep_234567", true},
		{"stories-2", true},
		{strings.Repeat("a", 64), true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"dep.x", false}, // a subject token separator
		{"*", false},
		{">", false},
		{"dep x", false},
		{"Dep_X", false},
		{"dep/x", false},
	} {
		if got := ValidKey(tc.key); got != tc.want {
			t.Errorf("ValidKey(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
}
