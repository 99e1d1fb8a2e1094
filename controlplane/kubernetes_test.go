package controlplane

// No Kubernetes API server can run on this machine, so these tests run
// the KubernetesDriver against client-go's fake clientset
// (k8s.io/client-go/kubernetes/fake): an in-memory object tracker that
// records every call as an action. They check the pods the driver asks
// for and the calls it makes, not what a real API server, scheduler or
// kubelet would do with them (graceful deletion, for one: the fake
// removes a deleted pod at once whatever the grace period).

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/infer-run/infer/internal/hugepages"
)

const testNS = "infer"

func testSpec() RunnerSpec {
	return RunnerSpec{
		ID:           "a1b2c3d4e5f6",
		DeploymentID: "dep_7xq2llama",
		Deployment:   "llama_small",
		Artifact:     strings.Repeat("ab", 32),
		ObjectKey:    "weights/abab.gguf",
		Size:         12345,
		Parallel:     8,
		Context:      2048,
		ChatTemplate: "chatml",
	}
}

func newTestDriver(objs ...runtime.Object) (*KubernetesDriver, *fake.Clientset) {
	client := fake.NewClientset(objs...)
	return &KubernetesDriver{
		Client:    client,
		Namespace: testNS,
		Image:     "ghcr.io/infer-run/infer:test",
		Env:       []corev1.EnvVar{{Name: "INFER_NATS_URL", Value: "nats://nats.infer:4222"}},
		Log:       slog.New(slog.DiscardHandler),
	}, client
}

// containsSeq reports whether want appears in args as a contiguous run.
func containsSeq(args, want []string) bool {
	for i := 0; i+len(want) <= len(args); i++ {
		if slices.Equal(args[i:i+len(want)], want) {
			return true
		}
	}
	return false
}

func TestKubernetesStartPod(t *testing.T) {
	hostPath := &corev1.Volume{Name: "weights", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/lib/infer-cache"}}}
	tests := []struct {
		name      string
		configure func(*KubernetesDriver)
		resources Resources
		// want
		command   []string
		cpu, mem  string
		gpus      int64
		gpuLayers bool
		cacheDir  string
		grace     int64
	}{
		{
			name:    "defaults, no resources",
			command: []string{"infer", "runner"},
			grace:   300,
		},
		{
			name:      "cpu and memory",
			resources: Resources{CPU: "4", Memory: "8Gi", NodeSelector: map[string]string{"pool": "cpu"}},
			command:   []string{"infer", "runner"},
			cpu:       "4", mem: "8Gi",
			grace: 300,
		},
		{
			name:      "gpu",
			resources: Resources{CPU: "8", Memory: "32Gi", GPUs: 2, NodeSelector: map[string]string{"nvidia.com/gpu.product": "NVIDIA-L4"}},
			command:   []string{"infer", "runner"},
			cpu:       "8", mem: "32Gi", gpus: 2, gpuLayers: true,
			grace: 300,
		},
		{
			name: "custom command, cache volume, grace period, service account",
			configure: func(d *KubernetesDriver) {
				d.Command = []string{"/usr/local/bin/infer", "runner"}
				d.CacheVolume = hostPath
				d.CacheDir = "/cache"
				d.GracePeriod = 90 * time.Second
				d.ServiceAccount = "infer-runner"
				d.Env = []corev1.EnvVar{{Name: "INFER_LOG_LEVEL", Value: "debug"}}
				d.EnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "infer-s3"}}}}
			},
			command:  []string{"/usr/local/bin/infer", "runner"},
			cacheDir: "/cache",
			grace:    90,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, client := newTestDriver()
			if tt.configure != nil {
				tt.configure(d)
			}
			spec := testSpec()
			spec.Resources = tt.resources
			if err := d.Start(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			pods, err := client.CoreV1().Pods(testNS).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items) != 1 {
				t.Fatalf("got %d pods, want 1", len(pods.Items))
			}
			p := pods.Items[0]

			if want := "infer-runner-llama-small-a1b2c3d4e5f6"; p.Name != want {
				t.Errorf("name = %q, want %q", p.Name, want)
			}
			wantLabels := map[string]string{
				"app.kubernetes.io/name":       "infer-runner",
				"app.kubernetes.io/managed-by": "infer-controlplane",
				"infer.run/deployment":         "llama_small",
				"infer.run/runner-id":          "a1b2c3d4e5f6",
			}
			for k, v := range wantLabels {
				if p.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, p.Labels[k], v)
				}
			}
			if got := p.Annotations["infer.run/artifact"]; got != spec.Artifact {
				t.Errorf("artifact annotation = %q, want %q", got, spec.Artifact)
			}
			if p.Spec.RestartPolicy != corev1.RestartPolicyNever {
				t.Errorf("restart policy = %q, want Never", p.Spec.RestartPolicy)
			}
			if g := p.Spec.TerminationGracePeriodSeconds; g == nil || *g != tt.grace {
				t.Errorf("termination grace period = %v, want %d", g, tt.grace)
			}
			if len(p.Spec.Containers) != 1 {
				t.Fatalf("got %d containers, want 1", len(p.Spec.Containers))
			}
			c := p.Spec.Containers[0]
			if c.Image != d.Image {
				t.Errorf("image = %q, want %q", c.Image, d.Image)
			}
			if len(c.Ports) != 0 {
				t.Errorf("container ports = %v, want none", c.Ports)
			}
			if !slices.Equal(c.Command, tt.command) {
				t.Errorf("command = %q, want %q", c.Command, tt.command)
			}
			for _, want := range [][]string{
				{"--deployment", "llama_small"},
				{"--deployment-id", "dep_7xq2llama"},
				{"--id", "a1b2c3d4e5f6"},
				{"--artifact", spec.Artifact},
				{"--object-key", "weights/abab.gguf"},
				{"--size", "12345"},
				{"--parallel", "8"},
				{"--context", "2048"},
				{"--chat-template", "chatml"},
			} {
				if !containsSeq(c.Args, want) {
					t.Errorf("args %q lack %q", c.Args, want)
				}
			}
			// Connection settings come through the environment: a URL
			// with a password must not be in the arguments.
			// Huge pages from the pod's first exec (internal/hugepages).
			wantEnv := append(slices.Clone(d.Env), corev1.EnvVar{Name: "GLIBC_TUNABLES", Value: hugepages.Tunable})
			if !slices.Equal(c.Env, wantEnv) || slices.Contains(c.Args, "--nats") {
				t.Errorf("env %v, args %q: want env %v and no --nats", c.Env, c.Args, wantEnv)
			}
			if got := containsSeq(c.Args, []string{"--gpu-layers", "999"}); got != tt.gpuLayers {
				t.Errorf("args %q: --gpu-layers 999 present = %v, want %v", c.Args, got, tt.gpuLayers)
			}

			checkQuantity := func(name corev1.ResourceName, want string) {
				t.Helper()
				for what, list := range map[string]corev1.ResourceList{"request": c.Resources.Requests, "limit": c.Resources.Limits} {
					q, ok := list[name]
					switch {
					case want == "" && ok:
						t.Errorf("%s %s = %s, want none", name, what, q.String())
					case want != "" && !ok:
						t.Errorf("%s %s missing, want %s", name, what, want)
					case want != "" && q.Cmp(resource.MustParse(want)) != 0:
						t.Errorf("%s %s = %s, want %s", name, what, q.String(), want)
					}
				}
			}
			checkQuantity(corev1.ResourceCPU, tt.cpu)
			checkQuantity(corev1.ResourceMemory, tt.mem)
			if tt.gpus > 0 {
				checkQuantity("nvidia.com/gpu", resource.NewQuantity(tt.gpus, resource.DecimalSI).String())
			} else {
				checkQuantity("nvidia.com/gpu", "")
			}
			if !equalMaps(p.Spec.NodeSelector, tt.resources.NodeSelector) {
				t.Errorf("node selector = %v, want %v", p.Spec.NodeSelector, tt.resources.NodeSelector)
			}

			if tt.cacheDir == "" {
				if len(p.Spec.Volumes) != 0 || len(c.VolumeMounts) != 0 || slices.Contains(c.Args, "--cache-dir") {
					t.Errorf("unexpected cache: volumes %v, mounts %v, args %q", p.Spec.Volumes, c.VolumeMounts, c.Args)
				}
			} else {
				if len(p.Spec.Volumes) != 1 || p.Spec.Volumes[0].HostPath == nil || p.Spec.Volumes[0].HostPath.Path != "/var/lib/infer-cache" {
					t.Errorf("volumes = %+v, want the cache hostPath", p.Spec.Volumes)
				}
				if len(c.VolumeMounts) != 1 || c.VolumeMounts[0].Name != p.Spec.Volumes[0].Name || c.VolumeMounts[0].MountPath != tt.cacheDir {
					t.Errorf("volume mounts = %+v, want %s at %s", c.VolumeMounts, hostPath.Name, tt.cacheDir)
				}
				if n := len(c.Args); n < 2 || c.Args[n-2] != "--cache-dir" || c.Args[n-1] != tt.cacheDir {
					t.Errorf("args %q do not end with --cache-dir %s", c.Args, tt.cacheDir)
				}
			}
			if p.Spec.ServiceAccountName != d.ServiceAccount {
				t.Errorf("service account = %q, want %q", p.Spec.ServiceAccountName, d.ServiceAccount)
			}
			if wantEnv := append(slices.Clone(d.Env), corev1.EnvVar{Name: "GLIBC_TUNABLES", Value: hugepages.Tunable}); !slices.Equal(c.Env, wantEnv) || len(c.EnvFrom) != len(d.EnvFrom) {
				t.Errorf("env = %v / %v, want %v / %v", c.Env, c.EnvFrom, wantEnv, d.EnvFrom)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func TestKubernetesStartErrors(t *testing.T) {
	tests := []struct {
		name      string
		configure func(*KubernetesDriver, *fake.Clientset)
		spec      func(*RunnerSpec)
		wantErr   string
	}{
		{name: "bad cpu quantity", spec: func(s *RunnerSpec) { s.Resources.CPU = "four" }, wantErr: "parsing cpu"},
		{name: "bad memory quantity", spec: func(s *RunnerSpec) { s.Resources.Memory = "8 GB" }, wantErr: "parsing memory"},
		{name: "no image", configure: func(d *KubernetesDriver, _ *fake.Clientset) { d.Image = "" }, wantErr: "no runner image"},
		{name: "deployment not a label value", spec: func(s *RunnerSpec) { s.Deployment = "bad name" }, wantErr: "infer.run/deployment"},
		{
			name: "API error",
			configure: func(_ *KubernetesDriver, c *fake.Clientset) {
				c.PrependReactor("create", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, apierrors.NewForbidden(corev1.Resource("pods"), "", errors.New("quota exceeded"))
				})
			},
			wantErr: "creating pod infer/infer-runner-llama-small-a1b2c3d4e5f6",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, client := newTestDriver()
			if tt.configure != nil {
				tt.configure(d, client)
			}
			spec := testSpec()
			if tt.spec != nil {
				tt.spec(&spec)
			}
			err := d.Start(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Start error = %v, want one containing %q", err, tt.wantErr)
			}
			pods, _ := client.CoreV1().Pods(testNS).List(context.Background(), metav1.ListOptions{})
			if len(pods.Items) != 0 {
				t.Errorf("%d pods created despite the error", len(pods.Items))
			}
		})
	}
}

func TestPodName(t *testing.T) {
	long := strings.Repeat("d", 63)
	tests := []struct {
		deployment, id, want string
	}{
		{"llama", "a1b2c3d4e5f6", "infer-runner-llama-a1b2c3d4e5f6"},
		{"llama_3_8b", "a1b2c3d4e5f6", "infer-runner-llama-3-8b-a1b2c3d4e5f6"},
		{"Llama_3.8B", "A1B2", "infer-runner-llama-3-8b-a1b2"},
		{long, "a1b2c3d4e5f6", "infer-runner-" + long[:63-len("infer-runner-")-1-12] + "-a1b2c3d4e5f6"},
		// The cut must not leave a '-' before the ID's separator.
		{strings.Repeat("a", 36) + "_b", "a1b2c3d4e5f6", "infer-runner-" + strings.Repeat("a", 36) + "-a1b2c3d4e5f6"},
	}
	for _, tt := range tests {
		got := PodName(tt.deployment, tt.id)
		if got != tt.want {
			t.Errorf("PodName(%q, %q) = %q, want %q", tt.deployment, tt.id, got, tt.want)
		}
		if errs := validation.IsDNS1123Label(got); len(errs) > 0 {
			t.Errorf("PodName(%q, %q) = %q is not a DNS label: %v", tt.deployment, tt.id, got, errs)
		}
	}
}

// runnerPod is a pod as Start makes it, in the given namespace and phase.
func runnerPod(t *testing.T, ns string, spec RunnerSpec, phase corev1.PodPhase, created time.Time) *corev1.Pod {
	t.Helper()
	d := &KubernetesDriver{Namespace: ns, Image: "img"}
	p, err := d.pod(spec)
	if err != nil {
		t.Fatal(err)
	}
	p.CreationTimestamp = metav1.NewTime(created)
	p.Status.Phase = phase
	return p
}

func TestKubernetesRunners(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	spec := func(dep, id string) RunnerSpec {
		s := testSpec()
		s.Deployment, s.DeploymentID, s.ID, s.Artifact = dep, "dep_"+dep, id, "sha-"+id
		return s
	}
	running := runnerPod(t, testNS, spec("llama", "r1"), corev1.PodRunning, t0)
	pending := runnerPod(t, testNS, spec("qwen_small", "r2"), corev1.PodPending, t0.Add(time.Minute))
	stopping := runnerPod(t, testNS, spec("llama", "r3"), corev1.PodRunning, t0.Add(2*time.Minute))
	deleting := metav1.NewTime(t0.Add(time.Hour))
	stopping.DeletionTimestamp = &deleting
	stopping.Finalizers = []string{"test/keep"} // a deleting object has finalizers
	succeeded := runnerPod(t, testNS, spec("llama", "r4"), corev1.PodSucceeded, t0)
	failed := runnerPod(t, testNS, spec("llama", "r5"), corev1.PodFailed, t0)
	failed.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "runner", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 137, Reason: "OOMKilled"}}}}
	otherNS := runnerPod(t, "elsewhere", spec("llama", "r6"), corev1.PodRunning, t0)
	otherNSDone := runnerPod(t, "elsewhere", spec("llama", "r7"), corev1.PodFailed, t0)
	unmanaged := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nats-0", Namespace: testNS, Labels: map[string]string{"app.kubernetes.io/name": "nats", "infer.run/runner-id": "r8"}},
		Status:     corev1.PodStatus{Phase: corev1.PodFailed},
	}

	d, client := newTestDriver(running, pending, stopping, succeeded, failed, otherNS, otherNSDone, unmanaged)
	refs, err := d.Runners(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(refs, func(a, b RunnerRef) int { return strings.Compare(a.ID, b.ID) })
	want := []RunnerRef{
		{ID: "r1", DeploymentID: "dep_llama", Deployment: "llama", Artifact: "sha-r1", StartedAt: t0},
		{ID: "r2", DeploymentID: "dep_qwen_small", Deployment: "qwen_small", Artifact: "sha-r2", StartedAt: t0.Add(time.Minute)},
		{ID: "r3", DeploymentID: "dep_llama", Deployment: "llama", Artifact: "sha-r3", StartedAt: t0.Add(2 * time.Minute), Stopping: true},
	}
	if len(refs) != len(want) {
		t.Fatalf("Runners = %+v, want %+v", refs, want)
	}
	for i := range want {
		if refs[i].ID != want[i].ID || refs[i].Deployment != want[i].Deployment || refs[i].DeploymentID != want[i].DeploymentID || refs[i].Artifact != want[i].Artifact ||
			!refs[i].StartedAt.Equal(want[i].StartedAt) || refs[i].Stopping != want[i].Stopping {
			t.Errorf("Runners[%d] = %+v, want %+v", i, refs[i], want[i])
		}
	}

	for _, a := range client.Actions() {
		if a.GetNamespace() != testNS {
			t.Errorf("action %s %s in namespace %q", a.GetVerb(), a.GetResource().Resource, a.GetNamespace())
		}
		if l, ok := a.(k8stesting.ListAction); ok {
			if sel := l.GetListRestrictions().Labels.String(); !strings.Contains(sel, "app.kubernetes.io/managed-by=infer-controlplane") {
				t.Errorf("list selector %q lacks the managed-by label", sel)
			}
		}
	}

	// Finished runner pods of this namespace were deleted; nothing else was.
	for _, p := range []*corev1.Pod{succeeded, failed} {
		if _, err := client.CoreV1().Pods(testNS).Get(context.Background(), p.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("finished pod %s still exists (err %v)", p.Name, err)
		}
	}
	for _, p := range []*corev1.Pod{running, pending, stopping, otherNS, otherNSDone, unmanaged} {
		if _, err := client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("pod %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
	// A second listing finds the same runners and deletes nothing more.
	client.ClearActions()
	refs, err = d.Runners(context.Background())
	if err != nil || len(refs) != 3 {
		t.Fatalf("second Runners = %+v, %v", refs, err)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() == "delete" {
			t.Errorf("second Runners deleted %v", a)
		}
	}
}

func TestKubernetesRunnersListError(t *testing.T) {
	d, client := newTestDriver()
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	if _, err := d.Runners(context.Background()); err == nil || !strings.Contains(err.Error(), "listing runner pods in infer") {
		t.Fatalf("Runners error = %v, want a wrapped list error", err)
	}
}

// deletes returns the pod deletions among the client's actions.
func deletes(client *fake.Clientset) []k8stesting.DeleteActionImpl {
	var out []k8stesting.DeleteActionImpl
	for _, a := range client.Actions() {
		if del, ok := a.(k8stesting.DeleteActionImpl); ok && del.GetResource().Resource == "pods" {
			out = append(out, del)
		}
	}
	return out
}

func TestKubernetesStopKill(t *testing.T) {
	tests := []struct {
		name      string
		grace     time.Duration // driver's GracePeriod
		op        func(*KubernetesDriver, context.Context, string) error
		wantGrace int64
	}{
		{"stop", 0, (*KubernetesDriver).Stop, 300},
		{"stop with a set grace period", 45 * time.Second, (*KubernetesDriver).Stop, 45},
		{"kill", 0, (*KubernetesDriver).Kill, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, client := newTestDriver()
			d.GracePeriod = tt.grace
			ctx := context.Background()
			keep := testSpec()
			keep.ID = "other"
			for _, s := range []RunnerSpec{testSpec(), keep} {
				if err := d.Start(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			client.ClearActions()
			if err := tt.op(d, ctx, testSpec().ID); err != nil {
				t.Fatal(err)
			}
			dels := deletes(client)
			if len(dels) != 1 {
				t.Fatalf("got %d pod deletions, want 1: %v", len(dels), client.Actions())
			}
			del := dels[0]
			if want := PodName(testSpec().Deployment, testSpec().ID); del.GetName() != want || del.GetNamespace() != testNS {
				t.Errorf("deleted %s/%s, want %s/%s", del.GetNamespace(), del.GetName(), testNS, want)
			}
			if g := del.DeleteOptions.GracePeriodSeconds; g == nil || *g != tt.wantGrace {
				t.Errorf("grace period = %v, want %d", g, tt.wantGrace)
			}
			refs, err := d.Runners(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(refs) != 1 || refs[0].ID != "other" {
				t.Errorf("runners after %s = %+v, want only the other one", tt.name, refs)
			}
		})
	}
}

func TestKubernetesStopKillMissing(t *testing.T) {
	ops := map[string]func(*KubernetesDriver, context.Context, string) error{
		"stop": (*KubernetesDriver).Stop,
		"kill": (*KubernetesDriver).Kill,
	}
	for name, op := range ops {
		t.Run(name+" unknown runner", func(t *testing.T) {
			d, client := newTestDriver()
			for _, id := range []string{"nope", "", "not a label value!"} {
				if err := op(d, context.Background(), id); err != nil {
					t.Errorf("%s(%q) = %v, want nil", name, id, err)
				}
			}
			if n := len(deletes(client)); n != 0 {
				t.Errorf("%d deletions for unknown runners", n)
			}
		})
		t.Run(name+" pod gone before the delete", func(t *testing.T) {
			d, client := newTestDriver()
			if err := d.Start(context.Background(), testSpec()); err != nil {
				t.Fatal(err)
			}
			client.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, apierrors.NewNotFound(corev1.Resource("pods"), a.(k8stesting.DeleteAction).GetName())
			})
			if err := op(d, context.Background(), testSpec().ID); err != nil {
				t.Errorf("%s = %v, want nil", name, err)
			}
		})
		t.Run(name+" API error", func(t *testing.T) {
			d, client := newTestDriver()
			if err := d.Start(context.Background(), testSpec()); err != nil {
				t.Fatal(err)
			}
			client.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				return true, nil, errors.New("etcdserver: timeout")
			})
			err := op(d, context.Background(), testSpec().ID)
			if err == nil || !strings.Contains(err.Error(), "runner "+testSpec().ID) || !strings.Contains(err.Error(), "etcdserver: timeout") {
				t.Errorf("%s = %v, want a wrapped delete error", name, err)
			}
		})
	}
}

// A stopping runner is not deleted again by Stop (that would restart
// nothing, but it is a pointless write), while Kill cuts its drain short.
func TestKubernetesStopKillStopping(t *testing.T) {
	p := runnerPod(t, testNS, testSpec(), corev1.PodRunning, time.Now())
	now := metav1.Now()
	p.DeletionTimestamp = &now
	p.Finalizers = []string{"test/keep"}
	d, client := newTestDriver(p)
	if err := d.Stop(context.Background(), testSpec().ID); err != nil {
		t.Fatal(err)
	}
	if n := len(deletes(client)); n != 0 {
		t.Errorf("Stop of a stopping runner made %d deletions, want 0", n)
	}
	if err := d.Kill(context.Background(), testSpec().ID); err != nil {
		t.Fatal(err)
	}
	dels := deletes(client)
	if len(dels) != 1 || dels[0].DeleteOptions.GracePeriodSeconds == nil || *dels[0].DeleteOptions.GracePeriodSeconds != 0 {
		t.Errorf("Kill of a stopping runner: deletions %+v, want one with grace 0", dels)
	}
}

func TestNewKubernetesClient(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	dir := t.TempDir()
	path := dir + "/kubeconfig"
	const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://k8s.example.test:6443
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
users:
- name: test
  user:
    token: abc
`
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKubernetesClient(path); err != nil {
		t.Errorf("NewKubernetesClient(%s) = %v", path, err)
	}
	t.Setenv("KUBECONFIG", path)
	if _, err := NewKubernetesClient(""); err != nil {
		t.Errorf("NewKubernetesClient with $KUBECONFIG = %v", err)
	}
	if _, err := NewKubernetesClient(dir + "/missing"); err == nil || !strings.Contains(err.Error(), "loading Kubernetes config from") {
		t.Errorf("NewKubernetesClient(missing) = %v, want a wrapped error", err)
	}
}

// TestRunnerPodNetworkPolicy checks that deploy/kubernetes's NetworkPolicy
// for runners selects the pods this driver creates and lets nothing in:
// runners only dial NATS and the object store.
func TestRunnerPodNetworkPolicy(t *testing.T) {
	f, err := os.Open("../deploy/kubernetes/40-networkpolicy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var policy *networkingv1.NetworkPolicy
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var p networkingv1.NetworkPolicy
		if err := sigsyaml.UnmarshalStrict(doc, &p); err != nil {
			t.Fatal(err)
		}
		if p.Name == "infer-runner" {
			policy = &p
		}
	}
	if policy == nil {
		t.Fatal("no NetworkPolicy infer-runner in deploy/kubernetes/40-networkpolicy.yaml")
	}
	pod := runnerPod(t, policy.Namespace, testSpec(), corev1.PodRunning, time.Now())
	sel, err := metav1.LabelSelectorAsSelector(&policy.Spec.PodSelector)
	if err != nil {
		t.Fatal(err)
	}
	if !sel.Matches(labels.Set(pod.Labels)) {
		t.Errorf("policy selector %v does not select runner pods labelled %v", sel, pod.Labels)
	}
	if !slices.Contains(policy.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || len(policy.Spec.Ingress) != 0 {
		t.Errorf("policy %+v lets connections in to runners", policy.Spec)
	}
}
