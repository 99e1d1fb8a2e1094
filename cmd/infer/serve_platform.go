//go:build !activatoronly

package main

// The parts of the infer binary that run runners: infer dev, infer
// controlplane and infer runner. They link the Kubernetes client, the NATS
// server and llama.cpp; a build with -tags activatoronly leaves them out
// for a small activator-only binary (see serve_activatoronly.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"

	"github.com/infer-run/infer/controlplane"
)

// platformCommands are the commands only the full build has.
func platformCommands() []*cobra.Command {
	return []*cobra.Command{devCmd(), controlplaneCmd(), runnerCmd()}
}

func devCmd() *cobra.Command {
	// Local development: webhook receivers run on this machine.
	f := serveFlags{webhookAllowPrivate: true}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the activator, control plane and an embedded NATS in one process",
		Long: `dev runs the whole platform on this machine: the OpenAI-compatible API on
--addr, the control plane starting 'infer runner' processes on demand, and an
embedded NATS JetStream server storing its queues under --home (unless
$INFER_NATS_URL names an external one). Records go to Postgres at
$DATABASE_URL; without it, to the server on 127.0.0.1:5432 if one answers,
else to a private cluster of the installed PostgreSQL that dev runs under
--home/postgres (unix socket only) and stops when it exits
($INFER_DEV_POSTGRES=private always uses the private cluster). Weights go to
the S3 server in $INFER_S3_ENDPOINT, or to --home/blobs without one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getenv("DATABASE_URL") == "" && !cmd.Flags().Changed("database-url") {
				home, err := filepath.Abs(f.home)
				if err != nil {
					return err
				}
				dsn, stop, err := devDatabase(cmd.Context(), home)
				if err != nil {
					return err
				}
				defer stop()
				f.dbURL = dsn
			}
			return serve(cmd.Context(), f, true, true)
		},
	}
	f.register(cmd, true)
	registerWarmRunners(cmd.Flags(), &f)
	return cmd
}

func controlplaneCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Run the autoscaler that starts and stops runners",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.nats == "" {
				return usageError{errors.New("the control plane needs --nats or $INFER_NATS_URL")}
			}
			return serve(cmd.Context(), f, false, true)
		},
	}
	f.register(cmd, false)
	fl := cmd.Flags()
	fl.StringVar(&f.driver, "driver", env("INFER_DRIVER", "local"), "where runners run: local (child processes) or kubernetes (pods) ($INFER_DRIVER)")
	fl.StringVar(&f.namespace, "namespace", env("INFER_NAMESPACE", "infer"), "Kubernetes namespace for runner pods ($INFER_NAMESPACE)")
	fl.StringVar(&f.runnerImage, "runner-image", os.Getenv("INFER_RUNNER_IMAGE"), "container image of runner pods ($INFER_RUNNER_IMAGE)")
	fl.StringVar(&f.leaseGrace, "lease-grace", env("INFER_LEASE_GRACE", "2s"), "how long a control plane that just acquired the leadership lease waits before acting ($INFER_LEASE_GRACE)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
	registerWarmRunners(fl, &f)
	return cmd
}

// kubeEnvFrom passes the control plane's own configuration objects to
// runner pods, so S3 and NATS settings are written once. The names match
// deploy/kubernetes.
func kubeEnvFrom() []corev1.EnvFromSource {
	return []corev1.EnvFromSource{
		{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: env("INFER_RUNNER_CONFIGMAP", "infer-config")}}},
		{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: env("INFER_RUNNER_SECRET", "infer-secrets")}}},
	}
}

// runnerNATSEnv tells runner pods where NATS is. A URL with a password or
// a token stays out of the pod spec, which everyone who may list pods can
// read (and which `kubectl describe` prints): the pods then read
// INFER_NATS_URL from the Secret they get through kubeEnvFrom.
func runnerNATSEnv(natsURL string, queueReplicas int) []corev1.EnvVar {
	env := []corev1.EnvVar{{Name: "INFER_QUEUE_REPLICAS", Value: strconv.Itoa(queueReplicas)}}
	if strings.Contains(natsURL, "@") {
		return env
	}
	return append(env, corev1.EnvVar{Name: "INFER_NATS_URL", Value: natsURL})
}

// startControlPlane starts the control plane's goroutines in g. cleanup
// stops what outlives them (local runner processes).
func startControlPlane(ctx context.Context, g *errgroup.Group, f serveFlags, d controlPlaneDeps) (cleanup func(), err error) {
	home, natsURL, nc, store, blobArgs, reg, log := d.home, d.natsURL, d.nc, d.store, d.blobArgs, d.metrics, d.log
	cleanup = func() {}
	var driver controlplane.Driver
	switch f.driver {
	case "", "local":
		exe, err := os.Executable()
		if err != nil {
			return cleanup, fmt.Errorf("finding the infer binary: %w", err)
		}
		local := &controlplane.LocalDriver{
			Command: []string{exe, "runner"},
			// The NATS URL goes through the environment, not the
			// command line, which every local user can read (ps) and
			// which may carry a password.
			ExtraArgs: append([]string{"--cache-dir", filepath.Join(home, "cache")}, blobArgs...),
			Env:       []string{"INFER_NATS_URL=" + natsURL, "INFER_QUEUE_REPLICAS=" + strconv.Itoa(f.queueReplicas)},
			LogDir:    filepath.Join(home, "logs"),
			Log:       log,
			Spares:    f.warmRunners,
			GPUs:      controlplane.NvidiaSMI{},
			Waiting:   publishWaiting(nc),
		}
		local.Prestart()
		cleanup = func() {
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			local.Shutdown(shutdownCtx)
		}
		driver = local
	case "kubernetes":
		client, err := controlplane.NewKubernetesClient(f.kubeconfig)
		if err != nil {
			return cleanup, err
		}
		if f.runnerImage == "" {
			return cleanup, usageError{errors.New("--driver kubernetes needs --runner-image or $INFER_RUNNER_IMAGE")}
		}
		driver = &controlplane.KubernetesDriver{
			Client:    client,
			Namespace: f.namespace,
			Image:     f.runnerImage,
			Env:       runnerNATSEnv(natsURL, f.queueReplicas),
			// Runners read S3 settings from the same Secret/ConfigMap.
			EnvFrom: kubeEnvFrom(),
			Log:     log,
		}
		if strings.Contains(natsURL, "@") {
			log.Info("the NATS URL carries credentials, so runner pods read INFER_NATS_URL from their Secret, not from the pod spec",
				"secret", env("INFER_RUNNER_SECRET", "infer-secrets"))
		}
	default:
		return cleanup, usageError{fmt.Errorf("unknown --driver %q: use local or kubernetes", f.driver)}
	}
	// Exactly one control plane per database acts; `infer dev` takes
	// the lease too, so a second one against the same database stands
	// by instead of doubling every runner.
	var grace time.Duration
	if f.leaseGrace != "" {
		if grace, err = time.ParseDuration(f.leaseGrace); err != nil || grace < 0 {
			return cleanup, usageError{fmt.Errorf("--lease-grace %q is not a duration such as 2s", f.leaseGrace)}
		}
	}
	lease := &controlplane.PostgresLease{ConnString: f.dbURL, Grace: grace, Log: log}
	cp, err := controlplane.New(controlplane.Config{Registry: store, Driver: driver, NATS: nc, Logger: log, Registerer: reg, Lease: lease, QueueReplicas: f.queueReplicas})
	if err != nil {
		return cleanup, err
	}
	g.Go(func() error { return cp.Run(ctx) })
	g.Go(func() error { return controlplane.RecordUsage(ctx, nc, store, log, f.queueReplicas) })
	return cleanup, nil
}

// embedNATS starts a NATS server with JetStream in this process. It listens
// on a free loopback port: runners, which are separate processes, connect
// to it, and a system NATS on the default port is left alone.
func embedNATS(storeDir string, log *slog.Logger) (url string, shutdown func(), err error) {
	ns, err := natsserver.NewServer(&natsserver.Options{
		ServerName: "infer-dev",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
	})
	if err != nil {
		return "", nil, fmt.Errorf("configuring embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return "", nil, errors.New("embedded NATS did not start within 10s")
	}
	log.Info("embedded NATS with JetStream started", "url", ns.ClientURL(), "store", storeDir)
	return ns.ClientURL(), ns.Shutdown, nil
}

// registerWarmRunners adds --warm-runners, the local driver's spare
// runner processes (controlplane.LocalDriver.Spares).
func registerWarmRunners(fl *pflag.FlagSet, f *serveFlags) {
	fl.IntVar(&f.warmRunners, "warm-runners", envInt("INFER_WARM_RUNNERS", 1),
		"local driver: runner processes kept started and waiting for a deployment, so a cold start skips the process start (~70 MiB each, no CPU) ($INFER_WARM_RUNNERS)")
}

// localGPUs counts the GPUs the local driver can place runners on.
func localGPUs(ctx context.Context) (int, error) {
	gpus, err := controlplane.NvidiaSMI{}.GPUs(ctx)
	return len(gpus), err
}
