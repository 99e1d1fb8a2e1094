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
	// The queue replicas setting is no secret: it is always in the spec.
	replicas := corev1.EnvVar{Name: "INFER_QUEUE_REPLICAS", Value: "3"}
	tests := []struct {
		url  string
		want []corev1.EnvVar
	}{
		{"nats://nats.infer:4222", []corev1.EnvVar{replicas, {Name: "INFER_NATS_URL", Value: "nats://nats.infer:4222"}}},
		{"tls://n1:4222,tls://n2:4222", []corev1.EnvVar{replicas, {Name: "INFER_NATS_URL", Value: "tls://n1:4222,tls://n2:4222"}}},
		{"nats://infer:s3cret@nats.infer:4222", []corev1.EnvVar{replicas}},
		{"nats://tok3n@nats.infer:4222", []corev1.EnvVar{replicas}},
		{"nats://n1:4222,nats://u:p@n2:4222", []corev1.EnvVar{replicas}},
	}
	for _, tt := range tests {
		if got := runnerNATSEnv(tt.url, 3); !slices.Equal(got, tt.want) {
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

// TestQueueReplicasUsage: a replica count JetStream cannot keep, from the
// flag or the environment, is a usage error before anything connects.
func TestQueueReplicasUsage(t *testing.T) {
	runner := []string{"runner", "--deployment-id", "dep_d", "--deployment", "d", "--artifact", "a", "--object-key", "k", "--blob-dir", t.TempDir()}
	tests := []struct {
		env  string
		args []string
	}{
		{"", append(slices.Clone(runner), "--queue-replicas", "0")},
		{"", append(slices.Clone(runner), "--queue-replicas", "7")},
		{"three", slices.Clone(runner)},
		{"", []string{"controlplane", "--nats", "nats://127.0.0.1:1", "--queue-replicas", "0"}},
		{"-1", []string{"controlplane", "--nats", "nats://127.0.0.1:1"}},
		{"", []string{"dev", "--queue-replicas", "6", "--home", t.TempDir()}},
	}
	for _, tt := range tests {
		t.Setenv("INFER_QUEUE_REPLICAS", tt.env)
		root := newRootCmd()
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		root.SetArgs(tt.args)
		if got := exitCode(root.Execute()); got != exitUsage {
			t.Errorf("INFER_QUEUE_REPLICAS=%q infer %v: exit status %d, want %d (usage)", tt.env, tt.args, got, exitUsage)
		}
	}
}
