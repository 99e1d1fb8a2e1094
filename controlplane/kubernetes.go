package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/infer-run/infer/internal/hugepages"
)

// Labels and annotations on runner pods. The managed-by label is how the
// driver finds its pods; the deployment and runner-id labels map a pod
// back to its RunnerRef.
const (
	LabelName       = "app.kubernetes.io/name"
	LabelManagedBy  = "app.kubernetes.io/managed-by"
	LabelDeployment = "infer.run/deployment"
	// LabelDeploymentID is the deployment's ID, which the control plane
	// tracks runners by (a name may be reused; see wire.RequestStream).
	LabelDeploymentID = "infer.run/deployment-id"
	LabelRunnerID     = "infer.run/runner-id"
	// AnnotationArtifact holds the sha256 of the weights (64 characters:
	// too long for a label value).
	AnnotationArtifact = "infer.run/artifact"

	runnerAppName = "infer-runner"
	managedBy     = "infer-controlplane"
	// GPUResource is the extended resource runners with GPUs ask for
	// (the NVIDIA device plugin's).
	GPUResource corev1.ResourceName = "nvidia.com/gpu"

	defaultGracePeriod = 300 * time.Second
	defaultCacheDir    = "/var/cache/infer"
	runnerContainer    = "runner"
	maxPodNameLen      = 63
)

// KubernetesDriver runs each runner as a Pod. The control plane stays the
// only scheduler of runners: pods are bare (no Deployment or ReplicaSet)
// with RestartPolicy Never, so a runner that exits or crashes is gone
// and the control plane starts a replacement when the load asks for one.
type KubernetesDriver struct {
	Client    kubernetes.Interface
	Namespace string
	// Image is the runner image, one with the infer binary.
	Image string
	// Command is the container's command before the runner's arguments;
	// default ["infer", "runner"].
	Command []string
	// ExtraArgs are appended to every runner's arguments. Keep secrets
	// out of them (and out of Env): anyone who may read pods reads both.
	ExtraArgs []string
	// Env and EnvFrom configure every runner container, e.g.
	// INFER_NATS_URL, and the INFER_S3_* credentials from a Secret.
	Env     []corev1.EnvVar
	EnvFrom []corev1.EnvFromSource
	// ServiceAccount is the pods' service account; empty uses the
	// namespace's default.
	ServiceAccount string
	// CacheVolume, if set, is mounted at CacheDir and passed to runners as
	// --cache-dir, e.g. a hostPath so the runners on a node share one
	// weights cache instead of each downloading the model again.
	CacheVolume *corev1.Volume
	// CacheDir is where CacheVolume is mounted; default /var/cache/infer.
	CacheDir string
	// Tolerations are added to every pod, e.g. for tainted GPU nodes.
	Tolerations []corev1.Toleration
	// GracePeriod is how long a stopping runner may take to drain before
	// the kubelet kills it; default 5 minutes.
	GracePeriod time.Duration
	Log         *slog.Logger
}

func (d *KubernetesDriver) logger() *slog.Logger {
	if d.Log == nil {
		return slog.Default()
	}
	return d.Log
}

func (d *KubernetesDriver) gracePeriodSeconds() int64 {
	g := d.GracePeriod
	if g <= 0 {
		g = defaultGracePeriod
	}
	return int64((g + time.Second - 1) / time.Second)
}

func (d *KubernetesDriver) namespace() string {
	if d.Namespace == "" {
		return metav1.NamespaceDefault
	}
	return d.Namespace
}

func managedSelector() labels.Set {
	return labels.Set{LabelName: runnerAppName, LabelManagedBy: managedBy}
}

// Start creates the runner's pod and returns; the pod being scheduled,
// pulling its image and loading the weights is reported by the runner
// over NATS.
func (d *KubernetesDriver) Start(ctx context.Context, spec RunnerSpec) error {
	pod, err := d.pod(spec)
	if err != nil {
		return fmt.Errorf("building pod for runner %s of %s: %w", spec.ID, spec.Deployment, err)
	}
	created, err := d.Client.CoreV1().Pods(d.namespace()).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s for runner %s of %s: %w", d.namespace(), pod.Name, spec.ID, spec.Deployment, err)
	}
	d.logger().Info("runner pod created", "runner", spec.ID, "deployment", spec.Deployment, "pod", created.Name, "namespace", created.Namespace)
	return nil
}

// pod builds the Pod for one runner.
func (d *KubernetesDriver) pod(spec RunnerSpec) (*corev1.Pod, error) {
	if d.Image == "" {
		return nil, errors.New("no runner image configured")
	}
	for label, v := range map[string]string{LabelDeployment: spec.Deployment, LabelDeploymentID: spec.DeploymentID, LabelRunnerID: spec.ID} {
		if v == "" {
			return nil, fmt.Errorf("%s is empty", label)
		}
		if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
			return nil, fmt.Errorf("%q is not a valid value for label %s: %s", v, label, strings.Join(errs, "; "))
		}
	}
	res, err := podResources(spec.Resources)
	if err != nil {
		return nil, err
	}

	command := d.Command
	if len(command) == 0 {
		command = []string{"infer", "runner"}
	}
	args := append(append([]string{}, spec.Args()...), d.ExtraArgs...)
	container := corev1.Container{
		Name:      runnerContainer,
		Image:     d.Image,
		Command:   append([]string{}, command...),
		Env:       runnerPodEnv(d.Env),
		EnvFrom:   d.EnvFrom,
		Resources: res,
		// No ports: a runner listens on none. It talks only to NATS and
		// the object store.
	}
	var volumes []corev1.Volume
	if d.CacheVolume != nil {
		v := *d.CacheVolume
		if v.Name == "" {
			v.Name = "cache"
		}
		dir := d.CacheDir
		if dir == "" {
			dir = defaultCacheDir
		}
		volumes = append(volumes, v)
		container.VolumeMounts = append(container.VolumeMounts, corev1.VolumeMount{Name: v.Name, MountPath: dir})
		// After ExtraArgs: the last --cache-dir wins, and it must be
		// the mounted one.
		args = append(args, "--cache-dir", dir)
	}
	if spec.Resources.GPUs > 0 {
		// Offload every layer; llama.cpp caps it at the model's count.
		args = append(args, "--gpu-layers", "999")
	}
	container.Args = args

	grace := d.gracePeriodSeconds()
	noToken := false
	noServiceLinks := false
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      PodName(spec.Deployment, spec.ID),
			Namespace: d.namespace(),
			Labels: map[string]string{
				LabelName:         runnerAppName,
				LabelManagedBy:    managedBy,
				LabelDeployment:   spec.Deployment,
				LabelDeploymentID: spec.DeploymentID,
				LabelRunnerID:     spec.ID,
			},
			Annotations: map[string]string{AnnotationArtifact: spec.Artifact},
		},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{container},
			Volumes:    volumes,
			// The control plane replaces dead runners itself; a
			// restarted container would be a runner it did not start.
			RestartPolicy: corev1.RestartPolicyNever,
			// Stop deletes the pod: the kubelet sends SIGTERM (drain)
			// and waits this long for in-flight requests to finish.
			TerminationGracePeriodSeconds: &grace,
			NodeSelector:                  spec.Resources.NodeSelector,
			Tolerations:                   d.Tolerations,
			ServiceAccountName:            d.ServiceAccount,
			// Runners do not call the Kubernetes API, and need no
			// service environment variables.
			AutomountServiceAccountToken: &noToken,
			EnableServiceLinks:           &noServiceLinks,
		},
	}, nil
}

// podResources turns a deployment's Resources into container resources
// with requests equal to limits.
func podResources(r Resources) (corev1.ResourceRequirements, error) {
	list := corev1.ResourceList{}
	for _, q := range []struct {
		name  corev1.ResourceName
		value string
	}{{corev1.ResourceCPU, r.CPU}, {corev1.ResourceMemory, r.Memory}} {
		if q.value == "" {
			continue
		}
		v, err := resource.ParseQuantity(q.value)
		if err != nil {
			return corev1.ResourceRequirements{}, fmt.Errorf("parsing %s %q: %w", q.name, q.value, err)
		}
		list[q.name] = v
	}
	if r.GPUs < 0 {
		return corev1.ResourceRequirements{}, fmt.Errorf("negative GPU count %d", r.GPUs)
	}
	if r.GPUs > 0 {
		list[GPUResource] = *resource.NewQuantity(int64(r.GPUs), resource.DecimalSI)
	}
	if len(list) == 0 {
		return corev1.ResourceRequirements{}, nil
	}
	return corev1.ResourceRequirements{Requests: list, Limits: list.DeepCopy()}, nil
}

// PodName is the name of a runner's pod: infer-runner-<deployment>-<id>
// made a DNS label (lower case, '_' and other invalid characters turned
// into '-', at most 63 characters). A long deployment name is cut, never
// the ID, which keeps names unique.
func PodName(deployment, id string) string {
	const prefix = "infer-runner-"
	id = dnsLabel(id)
	dep := dnsLabel(deployment)
	if room := maxPodNameLen - len(prefix) - 1 - len(id); len(dep) > room {
		dep = strings.TrimRight(dep[:max(room, 0)], "-")
	}
	name := prefix + dep + "-" + id
	if dep == "" {
		name = prefix + id
	}
	if len(name) > maxPodNameLen {
		name = name[:maxPodNameLen]
	}
	return strings.TrimRight(name, "-")
}

// dnsLabel lower-cases s and replaces every character a DNS label may not
// hold with '-', trimming '-' from both ends.
func dnsLabel(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-")
}

// Stop deletes the runner's pod with the grace period: the kubelet sends
// SIGTERM, the runner drains and exits. Until then the pod carries a
// deletion timestamp, which Runners reports as Stopping.
func (d *KubernetesDriver) Stop(ctx context.Context, id string) error {
	return d.delete(ctx, id, d.gracePeriodSeconds(), "stopping")
}

// Kill deletes the runner's pod at once (grace period 0): the pod object
// goes immediately and the kubelet kills the container.
func (d *KubernetesDriver) Kill(ctx context.Context, id string) error {
	return d.delete(ctx, id, 0, "killing")
}

func (d *KubernetesDriver) delete(ctx context.Context, id string, grace int64, what string) error {
	if id == "" || len(validation.IsValidLabelValue(id)) > 0 {
		return nil // no pod of ours can carry this ID: it is gone
	}
	sel := managedSelector()
	sel[LabelRunnerID] = id
	pods, err := d.Client.CoreV1().Pods(d.namespace()).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return fmt.Errorf("%s runner %s: listing its pods: %w", what, id, err)
	}
	for _, p := range pods.Items {
		if grace > 0 && p.DeletionTimestamp != nil {
			continue // already stopping
		}
		if err := d.deletePod(ctx, p.Name, grace); err != nil {
			return fmt.Errorf("%s runner %s: %w", what, id, err)
		}
		d.logger().Info("runner pod deleted", "runner", id, "pod", p.Name, "grace_period_s", grace)
	}
	return nil
}

func (d *KubernetesDriver) deletePod(ctx context.Context, name string, grace int64) error {
	err := d.Client.CoreV1().Pods(d.namespace()).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", d.namespace(), name, err)
	}
	return nil
}

// Runners lists the runner pods in the namespace. Pods that have finished
// (Succeeded or Failed) are not runners any more: they are left out and
// deleted so they do not pile up.
func (d *KubernetesDriver) Runners(ctx context.Context) ([]RunnerRef, error) {
	pods, err := d.Client.CoreV1().Pods(d.namespace()).List(ctx, metav1.ListOptions{LabelSelector: managedSelector().String()})
	if err != nil {
		return nil, fmt.Errorf("listing runner pods in %s: %w", d.namespace(), err)
	}
	out := make([]RunnerRef, 0, len(pods.Items))
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			d.reap(ctx, p)
			continue
		}
		out = append(out, RunnerRef{
			ID:           p.Labels[LabelRunnerID],
			DeploymentID: p.Labels[LabelDeploymentID],
			Deployment:   p.Labels[LabelDeployment],
			Artifact:     p.Annotations[AnnotationArtifact],
			StartedAt:    p.CreationTimestamp.Time,
			Stopping:     p.DeletionTimestamp != nil,
		})
	}
	return out, nil
}

// reap deletes a finished pod, logging how its runner ended.
func (d *KubernetesDriver) reap(ctx context.Context, p *corev1.Pod) {
	log := d.logger().With("runner", p.Labels[LabelRunnerID], "deployment", p.Labels[LabelDeployment], "pod", p.Name, "phase", p.Status.Phase)
	for _, cs := range p.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil {
			log = log.With("exit_code", t.ExitCode, "reason", t.Reason)
		}
	}
	if p.Status.Phase == corev1.PodFailed {
		log.Warn("runner pod failed; deleting it", "message", p.Status.Message)
	} else {
		log.Info("runner pod finished; deleting it")
	}
	if err := d.deletePod(ctx, p.Name, 0); err != nil {
		log.Error("deleting finished runner pod", "err", err)
	}
}

// NewKubernetesClient connects to the Kubernetes API: with the pod's
// service account when kubeconfig is empty and this runs in a cluster,
// otherwise with the kubeconfig file (kubeconfig, else $KUBECONFIG, else
// ~/.kube/config) and its current context.
func NewKubernetesClient(kubeconfig string) (kubernetes.Interface, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("loading in-cluster Kubernetes config: %w", err)
		}
	} else {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rules.ExplicitPath = kubeconfig
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
		if err != nil {
			where := kubeconfig
			if where == "" {
				where = "$KUBECONFIG or ~/.kube/config"
			}
			return nil, fmt.Errorf("loading Kubernetes config from %s: %w", where, err)
		}
	}
	cfg = rest.CopyConfig(cfg)
	rest.AddUserAgent(cfg, "infer-controlplane")
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("creating Kubernetes client for %s: %w", cfg.Host, err)
	}
	return client, nil
}

var _ Driver = (*KubernetesDriver)(nil)

// runnerPodEnv is the runner container's environment: the driver's, with
// the huge-page tunable added unless it already decides it, so the runner
// does not start itself a second time to get it (internal/hugepages).
func runnerPodEnv(env []corev1.EnvVar) []corev1.EnvVar {
	flat := make([]string, len(env))
	for i, e := range env {
		flat[i] = e.Name + "=" + e.Value
	}
	withTHP, changed := hugepages.Env(flat)
	if !changed {
		return env
	}
	out := make([]corev1.EnvVar, 0, len(env)+1)
	for _, e := range env {
		if e.Name != "GLIBC_TUNABLES" {
			out = append(out, e)
		}
	}
	for _, kv := range withTHP {
		if v, ok := strings.CutPrefix(kv, "GLIBC_TUNABLES="); ok {
			out = append(out, corev1.EnvVar{Name: "GLIBC_TUNABLES", Value: v})
		}
	}
	return out
}
