package main

import (
	"strings"
	"testing"
)

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

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://127.0.0.1:5432/infer?sslmode=disable", "postgres://127.0.0.1:5432/infer?sslmode=disable"},
		{"postgres://infer:s3cret@db:5432/infer", "postgres://infer:xxxxx@db:5432/infer"},
		{"postgres://infer@db/infer?password=s3cret", "postgres://infer@db/infer?password=xxxxx"},
		{"postgres://db/infer?sslmode=verify-full&PassWord=s3cret", "postgres://db/infer?PassWord=xxxxx&sslmode=verify-full"},
		{"postgres://db/infer?sslpassword=s3cret&sslkey=/k.pem", "postgres://db/infer?sslkey=%2Fk.pem&sslpassword=xxxxx"},
		{"postgres://db/infer?pass%77ord=s3cret", "postgres://db/infer?password=xxxxx"},
		{"postgres://u:p@db/infer?password=s3cret", "postgres://u:xxxxx@db/infer?password=xxxxx"},
		{"postgres://db/infer?password=s3cret;x=%zz", "postgres://db/infer?xxxxx"},
		{"host=db user=infer password=s3cret dbname=infer", "host=db user=infer password=xxxxx dbname=infer"},
		{"host=db password = 's3 cret' dbname=infer", "host=db password=xxxxx dbname=infer"},
		{"host=db sslpassword=s3cret", "host=db sslpassword=xxxxx"},
		{"minio:9000", "minio:9000"},
		{"https://s3.example.com", "https://s3.example.com"},
		{"https://AKIA:s3cret@s3.example.com", "https://AKIA:xxxxx@s3.example.com"},
		{"https://s3.example.com/?X-Amz-Signature=abc&X-Amz-Security-Token=tok&secret_key=s", "https://s3.example.com/?X-Amz-Security-Token=xxxxx&X-Amz-Signature=xxxxx&secret_key=xxxxx"},
		{"user:s3cret@minio:9000", "(connection string with credentials)"},
		{"postgres://u:p@[::1", "(unparsable connection string)"},
	}
	for _, tt := range tests {
		got := redactURL(tt.in)
		if got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
		if strings.Contains(got, "s3cret") {
			t.Errorf("redactURL(%q) = %q still holds the secret", tt.in, got)
		}
	}
}
