package runner

import "testing"

func TestStopBuffer(t *testing.T) {
	tests := []struct {
		name    string
		stops   []string
		pieces  []string
		want    []string // what each add emits
		stopped bool
		flushed string
	}{
		{"no stops", nil, []string{"Once", " upon"}, []string{"Once", " upon"}, false, ""},
		{"stop inside a piece", []string{"END"}, []string{"a b", "cENDd"}, []string{"a b", "c"}, true, ""},
		{"stop split over pieces", []string{"END"}, []string{"xE", "N", "Dy"}, []string{"x", "", ""}, true, ""},
		{"partial stop released", []string{"END"}, []string{"xE", "Nope"}, []string{"x", "ENope"}, false, ""},
		{"partial stop at the end is output", []string{"END"}, []string{"xEN"}, []string{"x"}, false, "EN"},
		{"earliest of several stops", []string{"b", "a"}, []string{"xyab"}, []string{"xy"}, true, ""},
		{"utf-8 split over tokens", nil, []string{"caf\xc3", "\xa9!"}, []string{"caf", "é!"}, false, ""},
		{"4-byte rune in three pieces", nil, []string{"\xf0\x9f", "\x98", "\x80"}, []string{"", "", "😀"}, false, ""},
		{"unfinished rune dropped at flush", nil, []string{"ok\xe2\x82"}, []string{"ok"}, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newStopBuffer(tt.stops)
			var stopped bool
			for i, p := range tt.pieces {
				out, s := b.add(p)
				if string(out) != tt.want[i] {
					t.Errorf("add(%q) emitted %q, want %q", p, out, tt.want[i])
				}
				if s {
					stopped = true
					break
				}
			}
			if stopped != tt.stopped {
				t.Errorf("stopped = %v, want %v", stopped, tt.stopped)
			}
			if !stopped {
				if got := string(b.flush()); got != tt.flushed {
					t.Errorf("flush = %q, want %q", got, tt.flushed)
				}
			}
		})
	}
}

func BenchmarkStopBuffer(b *testing.B) {
	sb := newStopBuffer([]string{"\n\n", "User:"})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		sb.add(" word")
	}
}
