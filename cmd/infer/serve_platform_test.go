//go:build !activatoronly

package main

import (
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
