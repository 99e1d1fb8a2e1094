package main

import "testing"

func TestRedactNATS(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"127.0.0.1:4222", "127.0.0.1:4222"},
		{"nats://infer:s3cret@h:4222", "nats://infer:xxxxx@h:4222"},
		{"tls://tok3n@h:4222", "tls://xxxxx@h:4222"},
		{"nats://a:p1@h1:4222, nats://a:p2@h2:4222", "nats://a:xxxxx@h1:4222,nats://a:xxxxx@h2:4222"},
		{"u:p@h:4222", "(NATS URL with credentials)"},
	}
	for _, tt := range tests {
		if got := redactNATS(tt.in); got != tt.want {
			t.Errorf("redactNATS(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
