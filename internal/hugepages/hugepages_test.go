package hugepages

import (
	"slices"
	"testing"
)

func TestHugePagesEnv(t *testing.T) {
	for _, c := range []struct {
		in      []string
		want    []string
		changed bool
	}{
		{[]string{"A=1"}, []string{"A=1", "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, true},
		{[]string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2"}, []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}, true},
		{[]string{"GLIBC_TUNABLES="}, []string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, true},
		// Already decided: the operator's value, or our own after the re-exec.
		{[]string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=0"}, []string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=0"}, false},
		{[]string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, []string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, false},
		{[]string{"INFER_RUNNER_HUGEPAGES=0"}, []string{"INFER_RUNNER_HUGEPAGES=0"}, false},
	} {
		got, changed := Env(c.in)
		if changed != c.changed || !slices.Equal(got, c.want) {
			t.Errorf("Env(%q) = %q, %v; want %q, %v", c.in, got, changed, c.want, c.changed)
		}
	}
}
