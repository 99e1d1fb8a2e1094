package deploy

import (
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// ingressAllowed says whether a pod (namespace ns, labels pod) accepts a
// TCP connection on its container port from a pod in namespace fromNS with
// labels from, under NetworkPolicy's rules: a pod that no ingress policy
// selects accepts everything; one that some policy selects accepts what a
// rule of one of them allows, by port and by peer. Namespaces are taken
// to carry only their kubernetes.io/metadata.name label.
func ingressAllowed(t *testing.T, pols []*networkingv1.NetworkPolicy, ns string, pod labels.Set, port corev1.ContainerPort, fromNS string, from labels.Set) bool {
	t.Helper()
	selected := false
	for _, p := range pols {
		if p.Namespace != ns || !matches(t, p.Spec.PodSelector, pod) || !hasIngress(p) {
			continue
		}
		selected = true
		for _, rule := range p.Spec.Ingress {
			if portMatches(rule.Ports, port) && peerMatches(t, rule.From, p.Namespace, fromNS, from) {
				return true
			}
		}
	}
	return !selected
}

// hasIngress: a policy without policyTypes restricts ingress (and egress
// only if it has egress rules).
func hasIngress(p *networkingv1.NetworkPolicy) bool {
	return len(p.Spec.PolicyTypes) == 0 || slices.Contains(p.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
}

func matches(t *testing.T, sel metav1.LabelSelector, set labels.Set) bool {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(&sel)
	if err != nil {
		t.Fatalf("label selector %v: %v", sel, err)
	}
	return s.Matches(set)
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		switch {
		case p.Port == nil,
			p.Port.Type == intstr.String && p.Port.StrVal == port.Name,
			p.Port.Type == intstr.Int && p.Port.IntVal == port.ContainerPort:
			return true
		}
	}
	return false
}

func peerMatches(t *testing.T, peers []networkingv1.NetworkPolicyPeer, policyNS, fromNS string, from labels.Set) bool {
	t.Helper()
	if len(peers) == 0 {
		return true
	}
	for _, peer := range peers {
		if peer.IPBlock != nil {
			return true // an address range: take it to cover the client
		}
		nsOK := fromNS == policyNS
		if peer.NamespaceSelector != nil {
			nsOK = matches(t, *peer.NamespaceSelector, labels.Set{"kubernetes.io/metadata.name": fromNS})
		}
		podOK := peer.PodSelector == nil || matches(t, *peer.PodSelector, from)
		if nsOK && podOK {
			return true
		}
	}
	return false
}

// TestManifestsNetworkPolicies checks who can reach what: the activator's
// API from anywhere, the /metrics ports from Prometheus's namespace only,
// runners from nowhere.
func TestManifestsNetworkPolicies(t *testing.T) {
	m := loadTyped(t)
	activator := m.deployment(t, "activator")
	controlplane := m.deployment(t, "controlplane")
	port := func(d *appsv1.Deployment, name string) corev1.ContainerPort {
		for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
			if p.Name == name {
				return p
			}
		}
		t.Fatalf("%s has no container port %q", d.Name, name)
		return corev1.ContainerPort{}
	}
	// As the control plane's Kubernetes driver labels runner pods
	// (controlplane.KubernetesDriver.pod; its TestRunnerPodNetworkPolicy
	// checks that the manifest selects them).
	runnerPod := labels.Set{"app.kubernetes.io/name": "infer-runner", "app.kubernetes.io/managed-by": "infer-controlplane"}
	someClient := labels.Set{"app": "client"}
	tests := []struct {
		name    string
		pod     labels.Set
		port    corev1.ContainerPort
		fromNS  string
		from    labels.Set
		allowed bool
	}{
		{"API from another namespace", activator.Spec.Template.Labels, port(activator, "http"), "default", someClient, true},
		{"API from a runner", activator.Spec.Template.Labels, port(activator, "http"), "infer", runnerPod, true},
		{"activator metrics from Prometheus", activator.Spec.Template.Labels, port(activator, "metrics"), "monitoring", labels.Set{"app": "prometheus"}, true},
		{"activator metrics from another namespace", activator.Spec.Template.Labels, port(activator, "metrics"), "default", someClient, false},
		{"activator metrics from a runner", activator.Spec.Template.Labels, port(activator, "metrics"), "infer", runnerPod, false},
		{"control plane metrics from Prometheus", controlplane.Spec.Template.Labels, port(controlplane, "metrics"), "monitoring", labels.Set{"app": "prometheus"}, true},
		{"control plane metrics from another namespace", controlplane.Spec.Template.Labels, port(controlplane, "metrics"), "default", someClient, false},
		{"control plane metrics from an activator", controlplane.Spec.Template.Labels, port(controlplane, "metrics"), "infer", activator.Spec.Template.Labels, false},
		{"runner from an activator", runnerPod, corev1.ContainerPort{ContainerPort: 8080}, "infer", activator.Spec.Template.Labels, false},
		{"runner from Prometheus", runnerPod, corev1.ContainerPort{ContainerPort: 9090}, "monitoring", labels.Set{"app": "prometheus"}, false},
	}
	for _, tt := range tests {
		if got := ingressAllowed(t, m.networkPolicies, "infer", tt.pod, tt.port, tt.fromNS, tt.from); got != tt.allowed {
			t.Errorf("%s: allowed = %v, want %v", tt.name, got, tt.allowed)
		}
	}
}
