package activator

import "testing"

func TestRedactPaths(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"open /var/lib/infer/cache/3f9c/model.gguf: no space left on device", "open model.gguf: no space left on device"},
		{`fetching weights into "/home/op/.infer/cache/ab.partial": EOF`, `fetching weights into "ab.partial": EOF`},
		{"/srv/weights/x.gguf: truncated", "x.gguf: truncated"},
		{"mkdir /tmp/infer/: permission denied", "mkdir infer: permission denied"},
		{"path=/a/b/c", "path=c"},
		// Not paths.
		{"fetching weights: 12/40 MiB", "fetching weights: 12/40 MiB"},
		{"GET http://minio:9000/infer/uploads/x.gguf: 503", "GET http://minio:9000/infer/uploads/x.gguf: 503"},
		{"3 tokens/s", "3 tokens/s"},
		{"loading model", "loading model"},
		{"a / b", "a / b"},
	} {
		if got := redactPaths(tt.in); got != tt.want {
			t.Errorf("redactPaths(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
