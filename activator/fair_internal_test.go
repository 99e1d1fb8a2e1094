package activator

import "testing"

func TestNextKey(t *testing.T) {
	for _, c := range []struct {
		name string
		keys []keyLoad
		want int
	}{
		{"none", nil, -1},
		{"one", []keyLoad{{"a", 3, 9}}, 0},
		{"fewest admitted", []keyLoad{{"a", 4, 1}, {"b", 1, 8}}, 1},
		{"tie: longest unserved", []keyLoad{{"a", 0, 7}, {"b", 0, 5}}, 1},
		{"tie: never served first", []keyLoad{{"a", 0, 1}, {"b", 0, 0}}, 1},
		{"the burst's key waits its turn", []keyLoad{{"burst", 1, 10}, {"small", 0, 9}}, 1},
	} {
		if got := nextKey(c.keys); got != c.want {
			t.Errorf("%s: nextKey(%+v) = %d, want %d", c.name, c.keys, got, c.want)
		}
	}
}
