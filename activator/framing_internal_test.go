package activator

import (
	"fmt"
	"strings"
	"testing"
)

// TestFraming feeds request streams to framing, whole and one byte at a
// time, and checks which heads it finds with both Content-Length and
// Transfer-Encoding.
func TestFraming(t *testing.T) {
	chunked := "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
		"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n"
	withLength := "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
	both := "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
	get := "GET /d HTTP/1.1\r\nHost: x\r\n\r\n"
	// A body that holds what looks like a request with both headers.
	inner := "GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
	smuggledInBody := fmt.Sprintf("POST /e HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s", len(inner), inner)
	innerChunk := "GET / HTTP/1.1\r\nContent-Length: 1\r\n\r\n"
	for _, tt := range []struct {
		name   string
		stream string
		want   []bool // per request: had both
	}{
		{"get", get, []bool{false}},
		{"chunked then length then both", chunked + withLength + both, []bool{false, false, true}},
		{"both first", both + get, []bool{true, false}},
		{"a request inside a body", smuggledInBody + get, []bool{false, false}},
		{"chunk holding a head", "POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" +
			fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(innerChunk), innerChunk) + both, []bool{false, true}},
	} {
		if n := strings.Count(tt.stream, "HTTP/1.1\r\n") - strings.Count(tt.stream, "GET /x") - strings.Count(tt.stream, "GET / "); n != len(tt.want) {
			t.Fatalf("%s: %d requests, %d wants", tt.name, n, len(tt.want))
		}
		for _, step := range []int{len(tt.stream), 1, 7} {
			var f framing
			for i := 0; i < len(tt.stream); i += step {
				f.feed([]byte(tt.stream[i:min(i+step, len(tt.stream))]))
			}
			if f.state == framingLost || f.heads != len(tt.want) {
				t.Errorf("%s (in %d-byte reads): %d heads, state %d; want %d heads", tt.name, step, f.heads, f.state, len(tt.want))
				continue
			}
			for i, w := range tt.want {
				if got := f.nextHadBoth(); got != w {
					t.Errorf("%s (in %d-byte reads): request %d had both: %v, want %v", tt.name, step, i, got, w)
				}
			}
		}
	}
}
