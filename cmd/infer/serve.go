package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"

	"github.com/infer-run/infer/activator"
	"github.com/infer-run/infer/controlplane"
	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/registry"
)

// defaultDatabaseURL is the local Postgres, database infer (created if
// missing), as the OS user.
const defaultDatabaseURL = "postgres://127.0.0.1:5432/infer?sslmode=disable"

type serveFlags struct {
	addr  string
	home  string
	dbURL string
	nats  string

	// activator only
	asyncTTL string

	// control plane only
	driver      string
	namespace   string
	runnerImage string
	kubeconfig  string
	metricsAddr string
	leaseGrace  string
}

func (f *serveFlags) register(cmd *cobra.Command, withAddr bool) {
	if withAddr {
		cmd.Flags().StringVar(&f.addr, "addr", env("INFER_ADDR", "127.0.0.1:8080"), "HTTP listen address ($INFER_ADDR)")
		cmd.Flags().StringVar(&f.asyncTTL, "async-ttl", env("INFER_ASYNC_TTL", "24h"), "how long async job records and results are kept ($INFER_ASYNC_TTL)")
	}
	cmd.Flags().StringVar(&f.home, "home", env("INFER_HOME", ".infer"), "state directory: embedded NATS, blobs, weights cache, logs ($INFER_HOME)")
	cmd.Flags().StringVar(&f.dbURL, "database-url", env("DATABASE_URL", defaultDatabaseURL), "Postgres connection string ($DATABASE_URL)")
	cmd.Flags().StringVar(&f.nats, "nats", os.Getenv("INFER_NATS_URL"), "NATS server URL; empty embeds one with JetStream under --home ($INFER_NATS_URL)")
}

func devCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the activator, control plane and an embedded NATS in one process",
		Long: `dev runs the whole platform on this machine: the OpenAI-compatible API on
--addr, the control plane starting 'infer runner' processes on demand, and an
embedded NATS JetStream server storing its queues under --home (unless
$INFER_NATS_URL names an external one). Records go to Postgres at
$DATABASE_URL; weights go to the S3 server in $INFER_S3_ENDPOINT, or to
--home/blobs without one.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), f, true, true)
		},
	}
	f.register(cmd, true)
	return cmd
}

func activatorCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "activator",
		Short: "Run the OpenAI-compatible API (production: several behind a load balancer)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.nats == "" {
				return usageError{errors.New("the activator needs --nats or $INFER_NATS_URL")}
			}
			return serve(cmd.Context(), f, true, false)
		},
	}
	f.register(cmd, true)
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
	fl.StringVar(&f.metricsAddr, "metrics-addr", env("INFER_METRICS_ADDR", "127.0.0.1:9090"), "where /metrics and /healthz are served ($INFER_METRICS_ADDR)")
	fl.StringVar(&f.leaseGrace, "lease-grace", env("INFER_LEASE_GRACE", "2s"), "how long a control plane that just acquired the leadership lease waits before acting ($INFER_LEASE_GRACE)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
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

// serve runs the activator and/or the control plane until SIGINT/SIGTERM.
func serve(ctx context.Context, f serveFlags, withActivator, withControlPlane bool) error {
	log := newLogger()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	home, err := filepath.Abs(f.home)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", home, err)
	}

	natsURL := f.nats
	if natsURL == "" {
		ns, err := embedNATS(filepath.Join(home, "nats"), log)
		if err != nil {
			return err
		}
		defer ns.Shutdown()
		natsURL = ns.ClientURL()
	}
	nc, err := nats.Connect(natsURL, nats.Name("infer"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", redactNATS(natsURL), err)
	}
	defer nc.Close()

	store, err := registry.Open(ctx, f.dbURL)
	if err != nil {
		return fmt.Errorf("opening the registry (Postgres at %s): %w", redact(f.dbURL), err)
	}
	defer store.Close()

	blobs, blobArgs, err := openBlobs(ctx, home)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	g, ctx := errgroup.WithContext(ctx)
	if withActivator {
		// Keys and deployments come from memory on the request path.
		cache := registry.NewCache(store, log)
		g.Go(func() error { return cache.Run(ctx) })
		if err := ensureAdminKey(ctx, store, home, withControlPlane, log); err != nil {
			return err
		}
		asyncTTL, err := time.ParseDuration(f.asyncTTL)
		if err != nil || asyncTTL <= 0 {
			return usageError{fmt.Errorf("--async-ttl %q is not a positive duration such as 24h", f.asyncTTL)}
		}
		srv, err := activator.New(activator.Config{
			AsyncTTL:   asyncTTL,
			Registry:   cache,
			Uploader:   &registry.Uploader{Store: store, Blobs: blobs},
			NATS:       nc,
			Logger:     log,
			Registerer: reg,
			Gatherer:   reg,
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		l, err := net.Listen("tcp", f.addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", f.addr, err)
		}
		g.Go(func() error { return srv.Serve(ctx, l) })
	}
	if withControlPlane {
		var driver controlplane.Driver
		switch f.driver {
		case "", "local":
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("finding the infer binary: %w", err)
			}
			local := &controlplane.LocalDriver{
				Command: []string{exe, "runner"},
				// The NATS URL goes through the environment, not the
				// command line, which every local user can read (ps) and
				// which may carry a password.
				ExtraArgs: append([]string{"--cache-dir", filepath.Join(home, "cache")}, blobArgs...),
				Env:       []string{"INFER_NATS_URL=" + natsURL},
				LogDir:    filepath.Join(home, "logs"),
				Log:       log,
			}
			defer func() {
				shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				local.Shutdown(shutdownCtx)
			}()
			driver = local
		case "kubernetes":
			client, err := controlplane.NewKubernetesClient(f.kubeconfig)
			if err != nil {
				return err
			}
			if f.runnerImage == "" {
				return usageError{errors.New("--driver kubernetes needs --runner-image or $INFER_RUNNER_IMAGE")}
			}
			driver = &controlplane.KubernetesDriver{
				Client:    client,
				Namespace: f.namespace,
				Image:     f.runnerImage,
				ExtraArgs: []string{"--nats", natsURL},
				// Runners read S3 settings from the same Secret/ConfigMap.
				EnvFrom: kubeEnvFrom(),
				Log:     log,
			}
		default:
			return usageError{fmt.Errorf("unknown --driver %q: use local or kubernetes", f.driver)}
		}
		// Exactly one control plane per database acts; `infer dev` takes
		// the lease too, so a second one against the same database stands
		// by instead of doubling every runner.
		var grace time.Duration
		if f.leaseGrace != "" {
			if grace, err = time.ParseDuration(f.leaseGrace); err != nil || grace < 0 {
				return usageError{fmt.Errorf("--lease-grace %q is not a duration such as 2s", f.leaseGrace)}
			}
		}
		lease := &controlplane.PostgresLease{ConnString: f.dbURL, Grace: grace, Log: log}
		cp, err := controlplane.New(controlplane.Config{Registry: store, Driver: driver, NATS: nc, Logger: log, Registerer: reg, Lease: lease})
		if err != nil {
			return err
		}
		g.Go(func() error { return cp.Run(ctx) })
		if !withActivator {
			// The activator serves /metrics itself; a lone control plane
			// needs its own listener.
			l, err := net.Listen("tcp", f.metricsAddr)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", f.metricsAddr, err)
			}
			mux := http.NewServeMux()
			mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
			mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			g.Go(func() error {
				<-ctx.Done()
				return srv.Close()
			})
			g.Go(func() error {
				if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
					return err
				}
				return nil
			})
		}
		g.Go(func() error { return controlplane.RecordUsage(ctx, nc, store, log) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("shutting down")
	return err
}

// embedNATS starts a NATS server with JetStream in this process. It listens
// on a free loopback port: runners, which are separate processes, connect
// to it, and a system NATS on the default port is left alone.
func embedNATS(storeDir string, log *slog.Logger) (*natsserver.Server, error) {
	ns, err := natsserver.NewServer(&natsserver.Options{
		ServerName: "infer-dev",
		Host:       "127.0.0.1",
		Port:       -1,
		JetStream:  true,
		StoreDir:   storeDir,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errors.New("embedded NATS did not start within 10s")
	}
	log.Info("embedded NATS with JetStream started", "url", ns.ClientURL(), "store", storeDir)
	return ns, nil
}

// openBlobs connects to the object store: S3 when INFER_S3_ENDPOINT is set,
// otherwise a directory under home. It also returns the runner flags that
// point runners at the same store (S3 settings reach them through the
// inherited environment).
func openBlobs(ctx context.Context, home string) (blob.Store, []string, error) {
	if cfg, ok := blob.S3ConfigFromEnv(); ok {
		s, err := blob.NewS3(ctx, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to S3 at %s: %w", cfg.Endpoint, err)
		}
		return s, nil, nil
	}
	dir := filepath.Join(home, "blobs")
	d, err := blob.NewDir(dir)
	if err != nil {
		return nil, nil, err
	}
	return d, []string{"--blob-dir", dir}, nil
}

// ensureAdminKey makes sure someone can use the API. INFER_ADMIN_KEY
// becomes an admin key as given. Otherwise a generated admin key is printed
// once and saved (mode 0600) to home/admin-key for the CLI: on the first
// start of a production activator, and for `infer dev` whenever that file
// is missing (dev is one person's machine; a database kept from an earlier
// run must not lock them out).
func ensureAdminKey(ctx context.Context, store *registry.Store, home string, dev bool, log *slog.Logger) error {
	keyFile := filepath.Join(home, "admin-key")
	if secret := os.Getenv("INFER_ADMIN_KEY"); secret != "" {
		if _, err := store.EnsureAdminKey(ctx, "default", secret); err != nil {
			return fmt.Errorf("installing INFER_ADMIN_KEY: %w", err)
		}
		return nil
	}
	if b, err := os.ReadFile(keyFile); err == nil && dev {
		if _, err := store.EnsureAdminKey(ctx, "default", strings.TrimSpace(string(b))); err != nil {
			return fmt.Errorf("installing the admin key from %s: %w", keyFile, err)
		}
		return nil
	}
	has, err := store.HasAnyKey(ctx)
	if err != nil {
		return fmt.Errorf("checking for API keys: %w", err)
	}
	if has && !dev {
		return nil
	}
	tenant, err := store.EnsureTenant(ctx, "default")
	if err != nil {
		return err
	}
	_, secret, err := store.CreateKey(ctx, tenant.ID, "admin", registry.RoleAdmin)
	if err != nil {
		return fmt.Errorf("creating an admin key: %w", err)
	}
	if err := os.WriteFile(keyFile, []byte(secret+"\n"), 0o600); err != nil {
		return fmt.Errorf("saving the admin key: %w", err)
	}
	fmt.Fprintf(os.Stderr, "\nCreated an admin API key (shown once, saved to %s):\n\n    %s\n\n", keyFile, secret)
	log.Info("admin key created", "file", keyFile)
	return nil
}

// redact hides a password in a connection string for logs.
func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(unparsable DATABASE_URL)"
}
