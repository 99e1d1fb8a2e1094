// Package deploy checks the deployment files — docker-compose.yml, the
// Dockerfiles and the Kubernetes manifests — by parsing them the way their
// tools do, since no Docker engine or cluster is needed to catch a typo, a
// dangling reference or a missing healthcheck.
package deploy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/infer-run/infer/registry"
)

// repoRoot is the repository root: tests run in deploy/.
const repoRoot = ".."

// testAdminKey is the INFER_ADMIN_KEY loadCompose sets when the test gives
// no environment: docker-compose.yml has no default.
const testAdminKey = "3f9c1a7e5b2d8046c1e9a7b3d5f20486"

// ---------------------------------------------------------------------------
// docker-compose.yml

func loadCompose(t *testing.T, env map[string]string) *types.Project {
	t.Helper()
	p, err := tryLoadCompose(t, env)
	if err != nil {
		t.Fatalf("loading docker-compose.yml: %v", err)
	}
	return p
}

// tryLoadCompose loads docker-compose.yml as `docker compose` does, with
// env as the environment (INFER_ADMIN_KEY=testAdminKey when env is nil).
func tryLoadCompose(t *testing.T, env map[string]string) (*types.Project, error) {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, "docker-compose.yml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if env == nil {
		env = map[string]string{"INFER_ADMIN_KEY": testAdminKey}
	}
	return loader.LoadWithContext(t.Context(), types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: path, Content: data}},
		Environment: env,
	})
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("docker-compose.yml: no service %q", name)
	}
	return s
}

func envValue(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// flagValue returns the argument after flag (or any of its aliases).
func flagValue(args []string, flags ...string) (string, bool) {
	for i, a := range args {
		if slices.Contains(flags, a) && i+1 < len(args) {
			return args[i+1], true
		}
		for _, f := range flags {
			if v, ok := strings.CutPrefix(a, f+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

func TestComposeServices(t *testing.T) {
	p := loadCompose(t, nil)
	for _, name := range []string{"nats", "postgres", "minio", "minio-init", "activator", "controlplane"} {
		service(t, p, name)
	}
	if p.Name != "infer" {
		t.Errorf("project name is %q, want infer", p.Name)
	}
}

// TestComposeActivatorPublishes8080: on loopback by default (the API
// holds every tenant's endpoints; serving other hosts is a decision), on
// INFER_BIND when set.
func TestComposeActivatorPublishes8080(t *testing.T) {
	p := loadCompose(t, nil)
	a := service(t, p, "activator")
	published := func(a types.ServiceConfig) []string {
		var out []string
		for _, port := range a.Ports {
			if port.Target == 8080 && port.Published == "8080" && (port.Protocol == "" || port.Protocol == "tcp") {
				out = append(out, port.HostIP)
			}
		}
		return out
	}
	if got := published(a); !slices.Equal(got, []string{"127.0.0.1"}) {
		t.Errorf("activator publishes 8080 on %q, want only 127.0.0.1 by default; ports: %+v", got, a.Ports)
	}
	bound := loadCompose(t, map[string]string{"INFER_ADMIN_KEY": testAdminKey, "INFER_BIND": "0.0.0.0"})
	if got := published(service(t, bound, "activator")); !slices.Equal(got, []string{"0.0.0.0"}) {
		t.Errorf("with INFER_BIND=0.0.0.0 the activator publishes 8080 on %q", got)
	}
	// The binary defaults to 127.0.0.1:8080, unreachable from outside the
	// container.
	if addr := envValue(a, "INFER_ADDR"); addr != "0.0.0.0:8080" && addr != ":8080" {
		t.Errorf("activator INFER_ADDR = %q, want it to listen on all interfaces, port 8080", addr)
	}
	for name, s := range p.Services {
		if name != "activator" && len(s.Ports) > 0 {
			t.Errorf("service %s publishes ports %+v; only the activator should", name, s.Ports)
		}
	}
}

func TestComposeStatefulServicesHaveNamedVolumes(t *testing.T) {
	p := loadCompose(t, nil)
	nats := service(t, p, "nats")
	storeDir, _ := flagValue(nats.Command, "-sd", "--store_dir")
	want := map[string]string{
		"nats":         storeDir,
		"postgres":     "/var/lib/postgresql/data",
		"minio":        "/data",
		"controlplane": envValue(service(t, p, "controlplane"), "INFER_HOME"),
	}
	for name, target := range want {
		s := service(t, p, name)
		if target == "" {
			t.Errorf("%s: cannot tell where its state lives", name)
			continue
		}
		ok := false
		for _, v := range s.Volumes {
			if v.Type != types.VolumeTypeVolume || v.Target != target {
				continue
			}
			if _, declared := p.Volumes[v.Source]; !declared {
				t.Errorf("%s: volume %q is not declared under top-level volumes", name, v.Source)
			}
			ok = true
		}
		if !ok {
			t.Errorf("%s: no named volume mounted at %s; volumes: %+v", name, target, s.Volumes)
		}
	}
	// The control plane's state is the weights cache under INFER_HOME.
	if cp := service(t, p, "controlplane"); envValue(cp, "INFER_CACHE_DIR") != "" {
		t.Errorf("controlplane sets INFER_CACHE_DIR, which its runners never read (they get --cache-dir INFER_HOME/cache)")
	}
}

func TestComposeHealthchecks(t *testing.T) {
	p := loadCompose(t, nil)
	for name, mustMention := range map[string]string{
		"nats":         "8222/healthz",
		"postgres":     "pg_isready",
		"minio":        "/minio/health/live",
		"activator":    "/dev/tcp/127.0.0.1/8080",
		"controlplane": "/dev/tcp/127.0.0.1/9090",
	} {
		s := service(t, p, name)
		hc := s.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 {
			t.Errorf("%s has no healthcheck", name)
			continue
		}
		if hc.Test[0] != "CMD" && hc.Test[0] != "CMD-SHELL" {
			t.Errorf("%s healthcheck test starts with %q, want CMD or CMD-SHELL", name, hc.Test[0])
		}
		if !strings.Contains(strings.Join(hc.Test, " "), mustMention) {
			t.Errorf("%s healthcheck %q does not check %s", name, hc.Test, mustMention)
		}
		if hc.Interval == nil || hc.Retries == nil {
			t.Errorf("%s healthcheck has no interval or retries", name)
		}
	}
	// The NATS healthcheck needs the monitoring port it asks.
	if m, _ := flagValue(service(t, p, "nats").Command, "-m", "--http_port"); m != "8222" {
		t.Errorf("nats monitoring port is %q, want 8222 (the healthcheck uses it)", m)
	}
}

func TestComposeNATSJetStream(t *testing.T) {
	p := loadCompose(t, nil)
	cmd := service(t, p, "nats").Command
	if !slices.Contains(cmd, "-js") && !slices.Contains(cmd, "--jetstream") {
		t.Errorf("nats command %q does not enable JetStream (-js)", cmd)
	}
	if dir, ok := flagValue(cmd, "-sd", "--store_dir"); !ok || dir == "" {
		t.Errorf("nats command %q sets no JetStream store directory (-sd)", cmd)
	}
}

func TestComposeDependencies(t *testing.T) {
	p := loadCompose(t, nil)
	want := map[string]string{
		"nats":       types.ServiceConditionHealthy,
		"postgres":   types.ServiceConditionHealthy,
		"minio":      types.ServiceConditionHealthy,
		"minio-init": types.ServiceConditionCompletedSuccessfully,
	}
	for _, name := range []string{"activator", "controlplane"} {
		s := service(t, p, name)
		for dep, cond := range want {
			d, ok := s.DependsOn[dep]
			if !ok {
				t.Errorf("%s does not depend on %s", name, dep)
				continue
			}
			if d.Condition != cond {
				t.Errorf("%s depends on %s with condition %q, want %q", name, dep, d.Condition, cond)
			}
		}
	}
	if d := service(t, p, "minio-init").DependsOn["minio"]; d.Condition != types.ServiceConditionHealthy {
		t.Errorf("minio-init depends on minio with condition %q, want %q", d.Condition, types.ServiceConditionHealthy)
	}
}

func TestComposeInferServices(t *testing.T) {
	p := loadCompose(t, nil)
	mcInit := service(t, p, "minio-init")
	initScript := strings.Join(append(append([]string{}, mcInit.Entrypoint...), mcInit.Command...), " ")
	if !strings.Contains(initScript, "mc mb") {
		t.Errorf("minio-init does not create a bucket: %q", initScript)
	}
	for name, sub := range map[string]string{"activator": "activator", "controlplane": "controlplane"} {
		s := service(t, p, name)
		if len(s.Command) == 0 || s.Command[0] != sub {
			t.Errorf("%s command is %q, want %q (the image's entrypoint is infer)", name, s.Command, sub)
		}
		if s.Build == nil {
			t.Errorf("%s has no build section", name)
		} else {
			df := filepath.Join(s.Build.Context, s.Build.Dockerfile)
			if !filepath.IsAbs(s.Build.Dockerfile) && s.Build.Dockerfile != "deploy/docker/Dockerfile" {
				t.Errorf("%s builds %s, want deploy/docker/Dockerfile", name, s.Build.Dockerfile)
			}
			if _, err := os.Stat(df); err != nil {
				t.Errorf("%s: Dockerfile: %v", name, err)
			}
			if _, err := os.Stat(filepath.Join(s.Build.Context, "go.mod")); err != nil {
				t.Errorf("%s: build context %s is not the repository root", name, s.Build.Context)
			}
		}

		// Connection settings point at the compose services.
		if u := envValue(s, "INFER_NATS_URL"); !strings.HasPrefix(u, "nats://nats:") {
			t.Errorf("%s INFER_NATS_URL = %q, want nats://nats:4222", name, u)
		}
		dbURL, err := url.Parse(envValue(s, "DATABASE_URL"))
		if err != nil || dbURL.Hostname() != "postgres" || strings.TrimPrefix(dbURL.Path, "/") != envValue(service(t, p, "postgres"), "POSTGRES_DB") {
			t.Errorf("%s DATABASE_URL does not name the postgres service and its POSTGRES_DB", name)
		}
		if pw, _ := dbURL.User.Password(); err == nil && pw != envValue(service(t, p, "postgres"), "POSTGRES_PASSWORD") {
			t.Errorf("%s DATABASE_URL password differs from postgres' POSTGRES_PASSWORD", name)
		}
		if e := envValue(s, "INFER_S3_ENDPOINT"); !strings.HasPrefix(e, "minio:") {
			t.Errorf("%s INFER_S3_ENDPOINT = %q, want minio:9000", name, e)
		}
		minio := service(t, p, "minio")
		if envValue(s, "INFER_S3_ACCESS_KEY") != envValue(minio, "MINIO_ROOT_USER") ||
			envValue(s, "INFER_S3_SECRET_KEY") != envValue(minio, "MINIO_ROOT_PASSWORD") {
			t.Errorf("%s S3 credentials differ from minio's", name)
		}
		if b := envValue(s, "INFER_S3_BUCKET"); b == "" || !strings.Contains(initScript, "local/"+b) {
			t.Errorf("%s uses bucket %q, which minio-init does not create", name, b)
		}
	}
	if len(envValue(service(t, p, "minio"), "MINIO_ROOT_PASSWORD")) < 8 {
		t.Errorf("MinIO refuses root passwords shorter than 8 characters")
	}
}

// TestComposeAdminKey: without INFER_ADMIN_KEY compose refuses to start
// and says how to set one (there is no public default to forget).
func TestComposeAdminKey(t *testing.T) {
	for _, env := range []map[string]string{{}, {"INFER_ADMIN_KEY": ""}} {
		_, err := tryLoadCompose(t, env)
		if err == nil || !strings.Contains(err.Error(), "INFER_ADMIN_KEY") || !strings.Contains(err.Error(), "openssl rand") {
			t.Errorf("docker-compose.yml with INFER_ADMIN_KEY=%q loads (%v); want a refusal saying how to set it", env["INFER_ADMIN_KEY"], err)
		}
	}
	p := loadCompose(t, nil)
	if v := service(t, p, "activator").Build.Args["CPU_FLAGS"]; v == nil || *v != "-march=x86-64-v3" {
		t.Errorf("default CPU_FLAGS build arg is %v, want the Makefile's -march=x86-64-v3", v)
	}
	ops, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ops, []byte("INFER_BIND")) {
		t.Errorf("docs/operations.md does not say how to publish the API beyond loopback (INFER_BIND)")
	}

	// The environment overrides the defaults.
	p = loadCompose(t, map[string]string{
		"INFER_ADMIN_KEY":     "0123456789abcdef0123",
		"POSTGRES_PASSWORD":   "pg-secret",
		"MINIO_ROOT_PASSWORD": "minio-secret",
		"CPU_FLAGS":           "",
	})
	a := service(t, p, "activator")
	if got := envValue(a, "INFER_ADMIN_KEY"); got != "0123456789abcdef0123" {
		t.Errorf("INFER_ADMIN_KEY from the environment: got %q", got)
	}
	if got := envValue(a, "DATABASE_URL"); !strings.Contains(got, ":pg-secret@") {
		t.Errorf("POSTGRES_PASSWORD does not reach DATABASE_URL: %q", got)
	}
	if got := envValue(service(t, p, "controlplane"), "INFER_S3_SECRET_KEY"); got != "minio-secret" {
		t.Errorf("MINIO_ROOT_PASSWORD does not reach INFER_S3_SECRET_KEY: %q", got)
	}
	if v := a.Build.Args["CPU_FLAGS"]; v == nil || *v != "" {
		t.Errorf("CPU_FLAGS= (empty) should build without CPU flags; build arg is %v", v)
	}
}

// TestComposeImagesPinned: every image names a version (no :latest, no
// bare major), so an upstream release changes nothing until this file
// does.
func TestComposeImagesPinned(t *testing.T) {
	p := loadCompose(t, nil)
	// A tag with at least major.minor.patch, or a MinIO RELEASE tag.
	pinned := regexp.MustCompile(`:(\d+\.\d+(\.\d+)?(-[a-z0-9]+)?|RELEASE\.\d{4}-\d{2}-\d{2}T[0-9-]+Z)$`)
	for name, s := range p.Services {
		if s.Build != nil {
			continue // built here: infer:local
		}
		if !pinned.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to a version", name, s.Image)
		}
	}
}

// ---------------------------------------------------------------------------
// Kubernetes manifests

type k8sObject struct {
	file string
	obj  runtime.Object
}

// loadManifests strictly decodes every YAML document in deploy/kubernetes
// into client-go's typed objects: an unknown kind or field, or a
// duplicate field, fails.
func loadManifests(t *testing.T) []k8sObject {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/kubernetes")
	}
	dec := serializer.NewCodecFactory(scheme.Scheme, serializer.EnableStrict).UniversalDeserializer()
	var objs []k8sObject
	for _, file := range files {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		r := utilyaml.NewYAMLReader(bufio.NewReader(f))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, i, err)
			}
			js, err := sigsyaml.YAMLToJSON(doc)
			if err != nil {
				t.Fatalf("%s: document %d: %v", file, i, err)
			}
			if s := string(bytes.TrimSpace(js)); s == "null" || s == "" {
				continue // only comments
			}
			obj, _, err := dec.Decode(doc, nil, nil)
			if err != nil {
				t.Errorf("%s: document %d: %v", file, i, err)
				continue
			}
			objs = append(objs, k8sObject{file: file, obj: obj})
		}
		f.Close()
	}
	return objs
}

// manifests are the decoded objects by type.
type manifests struct {
	namespaces  []*corev1.Namespace
	configMaps  []*corev1.ConfigMap
	secrets     []*corev1.Secret
	services    []*corev1.Service
	accounts    []*corev1.ServiceAccount
	deployments []*appsv1.Deployment
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	pdbs        []*policyv1.PodDisruptionBudget
	roles       []*rbacv1.Role
	bindings    []*rbacv1.RoleBinding

	networkPolicies []*networkingv1.NetworkPolicy
}

func loadTyped(t *testing.T) manifests {
	t.Helper()
	return typed(t, loadManifests(t))
}

func typed(t *testing.T, objs []k8sObject) manifests {
	t.Helper()
	var m manifests
	for _, o := range objs {
		switch v := o.obj.(type) {
		case *corev1.Namespace:
			m.namespaces = append(m.namespaces, v)
		case *corev1.ConfigMap:
			m.configMaps = append(m.configMaps, v)
		case *corev1.Secret:
			m.secrets = append(m.secrets, v)
		case *corev1.Service:
			m.services = append(m.services, v)
		case *corev1.ServiceAccount:
			m.accounts = append(m.accounts, v)
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, v)
		case *autoscalingv2.HorizontalPodAutoscaler:
			m.hpas = append(m.hpas, v)
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, v)
		case *rbacv1.Role:
			m.roles = append(m.roles, v)
		case *rbacv1.RoleBinding:
			m.bindings = append(m.bindings, v)
		case *networkingv1.NetworkPolicy:
			m.networkPolicies = append(m.networkPolicies, v)
		default:
			t.Errorf("%s: unexpected object %T", o.file, o.obj)
		}
	}
	return m
}

// deployment finds the Deployment whose container runs `infer <role>`.
func (m manifests) deployment(t *testing.T, role string) *appsv1.Deployment {
	t.Helper()
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			if len(c.Args) > 0 && c.Args[0] == role {
				return d
			}
		}
	}
	t.Fatalf("no Deployment runs `infer %s`", role)
	return nil
}

func containerEnv(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// containerPort resolves a probe or service port (number or name).
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

func TestManifestsDecodeStrictly(t *testing.T) {
	objs := loadManifests(t)
	m := typed(t, objs)
	if len(m.namespaces) != 1 || m.namespaces[0].Name != "infer" {
		t.Fatalf("want one Namespace named infer, got %d", len(m.namespaces))
	}
	// Everything else is in it (applied in file-name order, the Namespace
	// comes first).
	for _, o := range objs {
		meta, ok := o.obj.(interface{ GetNamespace() string })
		if _, isNS := o.obj.(*corev1.Namespace); !ok || isNS {
			continue
		}
		if ns := meta.GetNamespace(); ns != "infer" {
			t.Errorf("%s: %T in namespace %q, want infer", o.file, o.obj, ns)
		}
	}
	files, _ := filepath.Glob(filepath.Join("kubernetes", "*.yaml"))
	if !strings.Contains(files[0], "namespace") {
		t.Errorf("%s sorts before the Namespace manifest; `kubectl apply -f deploy/kubernetes/` would create objects before their namespace", files[0])
	}
	// Every Deployment's selector selects its own pods.
	for _, d := range m.deployments {
		sel := labels.SelectorFromSet(d.Spec.Selector.MatchLabels)
		if len(d.Spec.Selector.MatchLabels) == 0 || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("Deployment %s: selector %v does not match its pod labels %v", d.Name, d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
		}
	}
}

func TestManifestsConfig(t *testing.T) {
	m := loadTyped(t)
	if len(m.configMaps) != 1 || len(m.secrets) != 1 {
		t.Fatalf("want one ConfigMap and one Secret, got %d and %d", len(m.configMaps), len(m.secrets))
	}
	cm, sec := m.configMaps[0], m.secrets[0]
	for _, k := range []string{"INFER_NATS_URL", "INFER_S3_ENDPOINT", "INFER_S3_BUCKET", "INFER_S3_SECURE"} {
		if cm.Data[k] == "" {
			t.Errorf("ConfigMap %s has no %s", cm.Name, k)
		}
	}
	for _, k := range []string{"DATABASE_URL", "INFER_S3_ACCESS_KEY", "INFER_S3_SECRET_KEY", "INFER_ADMIN_KEY"} {
		if _, ok := sec.StringData[k]; !ok {
			t.Errorf("Secret %s has no %s", sec.Name, k)
		}
		if _, ok := cm.Data[k]; ok {
			t.Errorf("%s is a secret but is in ConfigMap %s", k, cm.Name)
		}
	}
	// Placeholders, not real secrets, and obviously so.
	for k, v := range sec.StringData {
		if !strings.Contains(v, "CHANGE-ME") {
			t.Errorf("Secret %s: %s = %q is not an obvious placeholder", sec.Name, k, v)
		}
	}
	// Applied unchanged, the template must not give the cluster a key
	// anyone can read: the activator refuses to start with it.
	if err := registry.CheckAdminSecret(sec.StringData["INFER_ADMIN_KEY"]); err == nil {
		t.Errorf("the activator would accept the template's placeholder admin key %q", sec.StringData["INFER_ADMIN_KEY"])
	}
	// Runner pods get them too, under the names the control plane passes
	// (INFER_RUNNER_CONFIGMAP, INFER_RUNNER_SECRET; defaults in
	// cmd/infer/serve.go).
	cp := m.deployment(t, "controlplane").Spec.Template.Spec.Containers[0]
	for env, want := range map[string]string{"INFER_RUNNER_CONFIGMAP": cm.Name, "INFER_RUNNER_SECRET": sec.Name} {
		got, set := containerEnv(cp, env)
		if !set {
			got = map[string]string{"INFER_RUNNER_CONFIGMAP": "infer-config", "INFER_RUNNER_SECRET": "infer-secrets"}[env]
		}
		if got != want {
			t.Errorf("runner pods would read %s %q, but the manifest defines %q", env, got, want)
		}
	}
	// Both Deployments read both.
	for _, d := range m.deployments {
		for _, c := range d.Spec.Template.Spec.Containers {
			var cms, secs []string
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef != nil {
					cms = append(cms, ef.ConfigMapRef.Name)
				}
				if ef.SecretRef != nil {
					secs = append(secs, ef.SecretRef.Name)
				}
			}
			if !slices.Contains(cms, cm.Name) || !slices.Contains(secs, sec.Name) {
				t.Errorf("Deployment %s: container %s does not take its environment from ConfigMap %s and Secret %s", d.Name, c.Name, cm.Name, sec.Name)
			}
		}
	}
}

func TestManifestsActivator(t *testing.T) {
	m := loadTyped(t)
	d := m.deployment(t, "activator")
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("activator Deployment: replicas %v, want 2", d.Spec.Replicas)
	}
	c := d.Spec.Template.Spec.Containers[0]
	has8080 := false
	for _, p := range c.Ports {
		if p.ContainerPort == 8080 {
			has8080 = true
		}
	}
	if !has8080 {
		t.Errorf("activator container does not declare port 8080: %+v", c.Ports)
	}
	if addr, _ := containerEnv(c, "INFER_ADDR"); !strings.HasSuffix(addr, ":8080") || strings.HasPrefix(addr, "127.") {
		t.Errorf("activator INFER_ADDR = %q; it must listen on all interfaces, port 8080", addr)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("activator has no HTTP %s probe", name)
			continue
		}
		if p.HTTPGet.Path != "/healthz" || containerPort(c, p.HTTPGet.Port) != 8080 {
			t.Errorf("activator %s probe is %s on port %v, want /healthz on 8080", name, p.HTTPGet.Path, p.HTTPGet.Port.String())
		}
	}
	// SIGTERM closes the listener, so it must wait for endpoints to drop
	// the pod; then the shutdown grace (30 s unless INFER_SHUTDOWN_GRACE
	// says otherwise) must fit in what Kubernetes allows before SIGKILL.
	var preStop int64
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds < 3 {
		t.Errorf("activator has no preStop sleep of 3 s or more: %+v", c.Lifecycle)
	} else {
		preStop = c.Lifecycle.PreStop.Sleep.Seconds
	}
	grace := 30 * time.Second
	if v, ok := containerEnv(c, "INFER_SHUTDOWN_GRACE"); ok {
		var err error
		if grace, err = time.ParseDuration(v); err != nil {
			t.Errorf("INFER_SHUTDOWN_GRACE %q: %v", v, err)
		}
	}
	if tg := d.Spec.Template.Spec.TerminationGracePeriodSeconds; tg == nil || time.Duration(*tg-preStop)*time.Second <= grace {
		t.Errorf("activator terminationGracePeriodSeconds %v does not cover the %d s preStop and the %s shutdown grace", tg, preStop, grace)
	}
	if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
		t.Errorf("activator has no CPU request; the HPA's utilization target needs one")
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Errorf("activator has no memory limit")
	}

	// The Service reaches it.
	var svc *corev1.Service
	for _, s := range m.services {
		if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) && len(s.Spec.Selector) > 0 {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service selects the activator's pods")
	}
	if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
		t.Errorf("Service %s is %s, want ClusterIP", svc.Name, svc.Spec.Type)
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 80 || containerPort(c, svc.Spec.Ports[0].TargetPort) != 8080 {
		t.Errorf("Service %s ports %+v, want 80 → 8080", svc.Name, svc.Spec.Ports)
	}

	// The HPA scales it.
	if len(m.hpas) != 1 {
		t.Fatalf("want one HorizontalPodAutoscaler, got %d", len(m.hpas))
	}
	h := m.hpas[0]
	ref := h.Spec.ScaleTargetRef
	if ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" || ref.Name != d.Name {
		t.Errorf("HPA targets %s %s %s, want apps/v1 Deployment %s", ref.APIVersion, ref.Kind, ref.Name, d.Name)
	}
	if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas != 2 || h.Spec.MaxReplicas != 10 {
		t.Errorf("HPA replicas %v–%d, want 2–10", h.Spec.MinReplicas, h.Spec.MaxReplicas)
	}
	cpu70 := false
	for _, mt := range h.Spec.Metrics {
		if mt.Type == autoscalingv2.ResourceMetricSourceType && mt.Resource != nil && mt.Resource.Name == corev1.ResourceCPU &&
			mt.Resource.Target.Type == autoscalingv2.UtilizationMetricType && mt.Resource.Target.AverageUtilization != nil && *mt.Resource.Target.AverageUtilization == 70 {
			cpu70 = true
		}
	}
	if !cpu70 {
		t.Errorf("HPA does not target 70%% CPU utilization: %+v", h.Spec.Metrics)
	}
	for _, pdb := range m.pdbs {
		if !labels.SelectorFromSet(pdb.Spec.Selector.MatchLabels).Matches(labels.Set(d.Spec.Template.Labels)) {
			t.Errorf("PodDisruptionBudget %s does not select the activator", pdb.Name)
		}
	}
}

func TestManifestsControlPlane(t *testing.T) {
	m := loadTyped(t)
	d := m.deployment(t, "controlplane")
	// Several control planes are safe (one holds the lease), and a
	// standby makes the control plane highly available.
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("control plane Deployment: replicas %v, want at least 2", d.Spec.Replicas)
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		t.Errorf("control plane Deployment strategy %q; want RollingUpdate (the lease keeps one acting)", d.Spec.Strategy.Type)
	}
	c := d.Spec.Template.Spec.Containers[0]
	if v, _ := flagValue(c.Args, "--driver"); v != "kubernetes" {
		t.Errorf("control plane args %q do not select --driver kubernetes", c.Args)
	}
	img, ok := containerEnv(c, "INFER_RUNNER_IMAGE")
	if !ok || img == "" {
		t.Errorf("control plane has no INFER_RUNNER_IMAGE")
	}
	// Every image by a version tag, and one build for all three roles.
	a := m.deployment(t, "activator").Spec.Template.Spec.Containers[0]
	for what, image := range map[string]string{"activator": a.Image, "control plane": c.Image, "INFER_RUNNER_IMAGE": img} {
		_, tag, found := strings.Cut(image[strings.LastIndex(image, "/")+1:], ":")
		if !found || tag == "" || tag == "latest" {
			t.Errorf("%s image %q is not pinned to a version tag", what, image)
		}
		if image != c.Image {
			t.Errorf("%s image %q differs from the control plane's %q", what, image, c.Image)
		}
	}

	// Runner pods go to its own namespace, where the Role applies.
	nsOK := d.Namespace == "infer" // the flag's default
	for _, e := range c.Env {
		if e.Name == "INFER_NAMESPACE" {
			nsOK = e.Value == d.Namespace ||
				(e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace")
		}
	}
	if v, ok := flagValue(c.Args, "--namespace"); ok {
		nsOK = v == d.Namespace
	}
	if !nsOK {
		t.Errorf("control plane would create runner pods outside its namespace %s", d.Namespace)
	}

	// Its ServiceAccount, bound to a Role that manages pods.
	sa := d.Spec.Template.Spec.ServiceAccountName
	if sa == "" || !slices.ContainsFunc(m.accounts, func(a *corev1.ServiceAccount) bool { return a.Name == sa }) {
		t.Fatalf("control plane uses ServiceAccount %q, which is not defined", sa)
	}
	if am := d.Spec.Template.Spec.AutomountServiceAccountToken; am != nil && !*am {
		t.Errorf("control plane does not mount its ServiceAccount token; it needs it to manage pods")
	}
	var role *rbacv1.Role
	for _, b := range m.bindings {
		bound := slices.ContainsFunc(b.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == rbacv1.ServiceAccountKind && s.Name == sa && s.Namespace == d.Namespace
		})
		if !bound || b.RoleRef.Kind != "Role" || b.RoleRef.APIGroup != rbacv1.GroupName {
			continue
		}
		for _, r := range m.roles {
			if r.Name == b.RoleRef.Name && r.Namespace == b.Namespace {
				role = r
			}
		}
	}
	if role == nil {
		t.Fatalf("no RoleBinding binds a Role to ServiceAccount %s/%s", d.Namespace, sa)
	}
	allows := func(resource, verb string) bool {
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, "") && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	for _, verb := range []string{"create", "delete", "get", "list", "watch"} {
		if !allows("pods", verb) {
			t.Errorf("Role %s does not allow %s on pods", role.Name, verb)
		}
	}
	if !allows("pods/log", "get") {
		t.Errorf("Role %s does not allow get on pods/log", role.Name)
	}
	for _, r := range role.Rules {
		if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") {
			t.Errorf("Role %s has a wildcard rule %+v", role.Name, r)
		}
	}
}

// ---------------------------------------------------------------------------
// Dockerfiles

type instruction struct {
	line int
	cmd  string // upper case
	args string
}

type stage struct {
	from, name string
	ins        []instruction
}

var dockerInstructions = []string{"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
	"LABEL", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}

// parseDockerfile splits a Dockerfile into stages of instructions, joining
// continuation lines and dropping comments. It resolves ${ARG} in FROM
// from the ARG defaults declared before the first FROM.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stages  []stage
		global  = map[string]string{}
		pending strings.Builder
		start   int
	)
	flush := func() {
		text := strings.TrimSpace(pending.String())
		pending.Reset()
		if text == "" {
			return
		}
		cmd, args, _ := strings.Cut(text, " ")
		in := instruction{line: start, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if !slices.Contains(dockerInstructions, in.cmd) {
			t.Errorf("%s:%d: unknown instruction %q", path, in.line, cmd)
			return
		}
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			if len(f) != 1 && !(len(f) == 3 && strings.EqualFold(f[1], "AS")) {
				t.Errorf("%s:%d: malformed FROM %q", path, in.line, in.args)
				return
			}
			s := stage{from: os.Expand(f[0], func(k string) string { return global[k] })}
			if len(f) == 3 {
				s.name = f[2]
			}
			stages = append(stages, s)
		case len(stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			global[k] = strings.Trim(v, `"`)
		case len(stages) == 0:
			t.Errorf("%s:%d: %s before the first FROM", path, in.line, in.cmd)
		default:
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments, parser directives; also inside continuations
		}
		if pending.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = n
		}
		if cont, ok := strings.CutSuffix(strings.TrimRight(line, " \t"), `\`); ok {
			pending.WriteString(cont + " ")
			continue
		}
		pending.WriteString(line)
		flush()
	}
	if pending.Len() > 0 {
		t.Errorf("%s: ends inside a continued instruction", path)
		flush()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages
}

// last returns the arguments of the last instruction cmd in a stage.
func (s stage) last(cmd string) (instruction, bool) {
	for i := len(s.ins) - 1; i >= 0; i-- {
		if s.ins[i].cmd == cmd {
			return s.ins[i], true
		}
	}
	return instruction{}, false
}

func (s stage) runs() string {
	var b strings.Builder
	for _, in := range s.ins {
		if in.cmd == "RUN" {
			b.WriteString(in.args + "\n")
		}
	}
	return b.String()
}

func checkDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	stages := parseDockerfile(t, path)
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages; want a multi-stage build", path, len(stages))
	}
	names := map[string]bool{}
	for i, s := range stages {
		if s.from == "" || strings.Contains(s.from, "$") {
			t.Errorf("%s: stage %d has an unresolved base image %q", path, i, s.from)
		}
		for _, in := range s.ins {
			if in.cmd != "COPY" {
				continue
			}
			for _, f := range strings.Fields(in.args) {
				if from, ok := strings.CutPrefix(f, "--from="); ok && !names[from] {
					t.Errorf("%s:%d: COPY --from=%s names no earlier stage", path, in.line, from)
				}
			}
		}
		if s.name != "" {
			names[s.name] = true
		}
	}
	final := stages[len(stages)-1]
	ep, ok := final.last("ENTRYPOINT")
	var argv []string
	if !ok || json.Unmarshal([]byte(ep.args), &argv) != nil || !slices.Equal(argv, []string{"infer"}) {
		t.Errorf(`%s: final stage ENTRYPOINT is %q, want exec form ["infer"]`, path, ep.args)
	}
	user, ok := final.last("USER")
	name, _, _ := strings.Cut(user.args, ":")
	if !ok || name == "" || name == "root" || name == "0" {
		t.Errorf("%s: final stage runs as %q; want a non-root USER", path, user.args)
	} else if _, err := strconv.Atoi(name); err != nil {
		t.Errorf("%s: USER %s is not numeric; Kubernetes' runAsNonRoot can only verify a numeric user", path, name)
	}
	if !regexp.MustCompile(`(?s)COPY .*--from=\S+ \S*bin/infer /usr/local/bin/infer`).MatchString(instructionsText(final)) {
		t.Errorf("%s: final stage does not copy bin/infer to /usr/local/bin/infer", path)
	}
	if !strings.Contains(final.runs(), "ca-certificates") {
		t.Errorf("%s: final stage does not install ca-certificates", path)
	}
	return stages
}

func instructionsText(s stage) string {
	var b strings.Builder
	for _, in := range s.ins {
		b.WriteString(in.cmd + " " + in.args + "\n")
	}
	return b.String()
}

func TestDockerfile(t *testing.T) {
	stages := checkDockerfile(t, filepath.Join("docker", "Dockerfile"))
	build, final := stages[0], stages[len(stages)-1]
	if build.from != "golang:1.26-bookworm" {
		t.Errorf("build stage FROM %s, want golang:1.26-bookworm", build.from)
	}
	if final.from != "debian:bookworm-slim" {
		t.Errorf("runtime stage FROM %s, want debian:bookworm-slim", final.from)
	}
	runs := build.runs()
	for _, want := range []string{"gcc", "g++", "make build", "CPU_FLAGS"} {
		if !strings.Contains(runs, want) {
			t.Errorf("build stage RUN does not mention %q", want)
		}
	}
	arg, ok := build.last("ARG")
	if !ok || !strings.HasPrefix(arg.args, "CPU_FLAGS=") {
		t.Errorf("build stage has no CPU_FLAGS build arg")
	}
	// The binary's default INFER_ADDR is loopback, unreachable in a
	// container.
	env, _ := final.last("ENV")
	if !strings.Contains(env.args, "INFER_ADDR=0.0.0.0:8080") {
		t.Errorf("runtime stage does not set INFER_ADDR=0.0.0.0:8080")
	}
}

func TestDockerfileCUDA(t *testing.T) {
	stages := checkDockerfile(t, filepath.Join("docker", "Dockerfile.cuda"))
	var devel bool
	for _, s := range stages {
		if strings.HasPrefix(s.from, "nvidia/cuda:") && strings.Contains(s.from, "-devel-") {
			devel = true
			if !strings.Contains(s.runs(), "make build") {
				t.Errorf("the CUDA devel stage does not run make build")
			}
			// The one recipe for the backend: it sets the rpath that lets
			// libggml-cuda.so find libggml-base.so (ggml skips a backend
			// that fails to load without a word) and checks the result.
			if !strings.Contains(s.runs(), "scripts/build-cuda.sh") {
				t.Errorf("the CUDA devel stage does not build the backend with scripts/build-cuda.sh")
			}
		}
	}
	final := stages[len(stages)-1]
	runtimeStage := strings.HasPrefix(final.from, "nvidia/cuda:") && strings.Contains(final.from, "-runtime-")
	if !devel || !runtimeStage {
		t.Errorf("Dockerfile.cuda should build on nvidia/cuda devel and run on nvidia/cuda runtime; stages: %v", stagesFrom(stages))
	}
	// llama.cpp looks for extra backends in ../lib/ollama next to the binary.
	if !strings.Contains(instructionsText(final), "/usr/local/lib/ollama") {
		t.Errorf("the CUDA backend is not installed next to the binary (/usr/local/lib/ollama)")
	}
}

func stagesFrom(stages []stage) []string {
	var out []string
	for _, s := range stages {
		out = append(out, s.from)
	}
	return out
}

// ---------------------------------------------------------------------------
// docs/operations.md against the code

// TestOperationsDocumentsEveryFlag fails when cmd/infer gains a flag or an
// environment variable that docs/operations.md does not mention.
func TestOperationsDocumentsEveryFlag(t *testing.T) {
	ops, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(ops)
	sources, _ := filepath.Glob(filepath.Join(repoRoot, "cmd", "infer", "*.go"))
	blob, _ := filepath.Glob(filepath.Join(repoRoot, "internal", "blob", "*.go"))
	flagRE := regexp.MustCompile(`\.(?:String|Int|Int64|Bool|Duration|StringSlice|StringArray|Float64)(?:Var)?P?\((?:&[\w.]+, )?"([a-z][a-z0-9-]*)"`)
	envRE := regexp.MustCompile(`"(INFER_[A-Z0-9_]+|DATABASE_URL)"`)
	for _, src := range append(sources, blob...) {
		if strings.HasSuffix(src, "_test.go") {
			continue
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range flagRE.FindAllStringSubmatch(string(data), -1) {
			if !strings.Contains(doc, "`--"+m[1]+"`") && !strings.Contains(doc, "`--"+m[1]+" ") {
				t.Errorf("%s: flag --%s is not documented in docs/operations.md", filepath.Base(src), m[1])
			}
		}
		for _, m := range envRE.FindAllStringSubmatch(string(data), -1) {
			if !strings.Contains(doc, "`"+m[1]+"`") {
				t.Errorf("%s: environment variable %s is not documented in docs/operations.md", filepath.Base(src), m[1])
			}
		}
	}
}

// TestComposeMetricsNotPublished: the infer services serve /metrics on a
// port of their own that a Prometheus on the compose network can reach
// and that is not published, since the metrics name every tenant's
// deployments.
func TestComposeMetricsNotPublished(t *testing.T) {
	p := loadCompose(t, nil)
	for _, name := range []string{"activator", "controlplane"} {
		s := service(t, p, name)
		addr := envValue(s, "INFER_METRICS_ADDR")
		host, port, err := net.SplitHostPort(addr)
		if err != nil || (host != "0.0.0.0" && host != "") || port == "8080" {
			t.Errorf("%s INFER_METRICS_ADDR = %q; want all interfaces on a port apart from the API's", name, addr)
			continue
		}
		for _, pp := range s.Ports {
			if fmt.Sprint(pp.Target) == port {
				t.Errorf("%s publishes its metrics port %s: %+v", name, port, pp)
			}
		}
	}
}

// TestManifestsMetricsPort: activator and control plane pods serve
// /metrics on a "metrics" container port that their prometheus.io
// annotations point at, and no Service exposes it.
func TestManifestsMetricsPort(t *testing.T) {
	m := loadTyped(t)
	for _, name := range []string{"activator", "controlplane"} {
		d := m.deployment(t, name)
		c := d.Spec.Template.Spec.Containers[0]
		addr, _ := containerEnv(c, "INFER_METRICS_ADDR")
		host, port, err := net.SplitHostPort(addr)
		if err != nil || (host != "0.0.0.0" && host != "") {
			t.Errorf("%s INFER_METRICS_ADDR = %q; want all interfaces of the pod", name, addr)
			continue
		}
		if got := fmt.Sprint(containerPort(c, intstr.FromString("metrics"))); got != port {
			t.Errorf("%s: container port \"metrics\" is %s, INFER_METRICS_ADDR port %s", name, got, port)
		}
		if port == "8080" {
			t.Errorf("%s serves metrics on the API port", name)
		}
		a := d.Spec.Template.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != port || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("%s pod annotations %v do not point Prometheus at port %s /metrics", name, a, port)
		}
		for _, s := range m.services {
			if !labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(s.Spec.Selector) == 0 {
				continue
			}
			for _, sp := range s.Spec.Ports {
				if fmt.Sprint(containerPort(c, sp.TargetPort)) == port {
					t.Errorf("Service %s exposes %s's metrics port: %+v", s.Name, name, sp)
				}
			}
		}
	}
}
