//go:build !activatoronly

package main

import (
	"io"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestRunnerNATSEnv: a NATS URL with credentials never goes into a runner
// pod's spec; one without does, so runners find NATS without a Secret.
func TestRunnerNATSEnv(t *testing.T) {
	tests := []struct {
		url  string
		want []corev1.EnvVar
	}{
		{"nats://nats.infer:4222", []corev1.EnvVar{{Name: "INFER_NATS_URL", Value: "nats://nats.infer:4222"}}},
		{"tls://n1:4222,tls://n2:4222", []corev1.EnvVar{{Name: "INFER_NATS_URL", Value: "tls://n1:4222,tls://n2:4222"}}},
		{"nats://infer:s3cret@nats.infer:4222", nil},
		{"nats://tok3n@nats.infer:4222", nil},
		{"nats://n1:4222,nats://u:p@n2:4222", nil},
	}
	for _, tt := range tests {
		if got := runnerNATSEnv(tt.url); !slices.Equal(got, tt.want) {
			t.Errorf("runnerNATSEnv(%q) = %v, want %v", tt.url, got, tt.want)
		}
	}
}

// TestRunnerDecodeNiceUsage: a nice value out of range, from the flag or
// the environment, is a usage error before the runner connects anywhere.
func TestRunnerDecodeNiceUsage(t *testing.T) {
	required := []string{"runner", "--deployment-id", "dep_d", "--deployment", "d", "--artifact", "a", "--object-key", "k", "--blob-dir", t.TempDir()}
	tests := []struct {
		env  string
		args []string
	}{
		{"", []string{"--decode-nice", "20"}},
		{"", []string{"--decode-nice", "-1"}},
		{"ten", nil},
		{"25", nil},
	}
	for _, tt := range tests {
		t.Setenv("INFER_DECODE_NICE", tt.env)
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(append(slices.Clone(required), tt.args...))
		if got := exitCode(root.Execute()); got != exitUsage {
			t.Errorf("INFER_DECODE_NICE=%q infer runner %v: exit status %d, want %d (usage)", tt.env, tt.args, got, exitUsage)
		}
	}
}
