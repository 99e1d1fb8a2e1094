package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/activator"
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
	// queueReplicas is the copies of every stream and bucket (all
	// commands: each creates some).
	queueReplicas int

	// activator only
	asyncTTL       string
	maxUploadBytes int64
	shutdownGrace  string
	// webhookAllowPrivate's default is the command's (dev: true) unless
	// $INFER_WEBHOOK_ALLOW_PRIVATE says otherwise.
	webhookAllowPrivate bool
	// envErr is an environment variable that does not parse, reported
	// when the command runs.
	envErr error

	// metricsAddr is where /metrics is served (all commands).
	metricsAddr string

	// control plane only
	driver      string
	namespace   string
	runnerImage string
	kubeconfig  string
	leaseGrace  string
	warmRunners int
}

func (f *serveFlags) register(cmd *cobra.Command, withAddr bool) {
	if withAddr {
		cmd.Flags().StringVar(&f.addr, "addr", env("INFER_ADDR", "127.0.0.1:8080"), "HTTP listen address ($INFER_ADDR)")
		cmd.Flags().StringVar(&f.shutdownGrace, "shutdown-grace", env("INFER_SHUTDOWN_GRACE", "30s"),
			"at SIGTERM, how long requests already generating may finish; queued ones end at once with 503 activator_shutting_down ($INFER_SHUTDOWN_GRACE)")
		cmd.Flags().StringVar(&f.asyncTTL, "async-ttl", env("INFER_ASYNC_TTL", "24h"), "how long async job records and results are kept ($INFER_ASYNC_TTL)")
		allow, err := envBool("INFER_WEBHOOK_ALLOW_PRIVATE", f.webhookAllowPrivate)
		if err != nil {
			f.envErr = err
		}
		maxUpload, err := envInt64("INFER_MAX_UPLOAD_BYTES", activator.DefaultMaxUploadBytes)
		if err != nil {
			f.envErr = err
		}
		cmd.Flags().Int64Var(&f.maxUploadBytes, "max-upload-bytes", maxUpload,
			"largest weights upload accepted, in bytes; larger ones get 413 and leave nothing behind ($INFER_MAX_UPLOAD_BYTES)")
		cmd.Flags().BoolVar(&f.webhookAllowPrivate, "webhook-allow-private", allow,
			"let async job webhooks reach loopback, private and link-local addresses, for receivers on this machine or network ($INFER_WEBHOOK_ALLOW_PRIVATE)")
	}
	cmd.Flags().StringVar(&f.metricsAddr, "metrics-addr", env("INFER_METRICS_ADDR", "127.0.0.1:9090"),
		"where /metrics and /healthz are served, apart from the API: the metrics name every tenant's deployments; empty serves none ($INFER_METRICS_ADDR)")
	cmd.Flags().StringVar(&f.home, "home", env("INFER_HOME", ".infer"), "state directory: embedded NATS, blobs, weights cache, logs ($INFER_HOME)")
	cmd.Flags().StringVar(&f.dbURL, "database-url", env("DATABASE_URL", defaultDatabaseURL), "Postgres connection string ($DATABASE_URL)")
	cmd.Flags().StringVar(&f.nats, "nats", os.Getenv("INFER_NATS_URL"), "NATS server URL, or a comma-separated list of a cluster's servers; empty embeds one with JetStream under --home ($INFER_NATS_URL)")
	registerQueueReplicas(cmd.Flags(), &f.queueReplicas, &f.envErr)
}

// registerQueueReplicas adds --queue-replicas, the copies JetStream keeps
// of every request queue, the usage stream and the async and hold buckets.
func registerQueueReplicas(fl *pflag.FlagSet, n *int, envErr *error) {
	def, err := envInt64("INFER_QUEUE_REPLICAS", 1)
	if err != nil {
		*envErr = err
	}
	fl.IntVar(n, "queue-replicas", int(def),
		"NATS servers that keep a copy of each queue: 1 on a single server, 3 on a cluster so that queues survive losing a server; every process of one platform must agree ($INFER_QUEUE_REPLICAS)")
}

// checkQueueReplicas refuses a --queue-replicas JetStream has no use for:
// it keeps 1 to 5 copies.
func checkQueueReplicas(n int) error {
	if n < 1 || n > 5 {
		return usageError{fmt.Errorf("--queue-replicas %d: use 1 (a single NATS server) to 5; 3 is the usual choice on a cluster", n)}
	}
	return nil
}

// envInt64 reads an integer environment variable.
func envInt64(name string, def int64) (int64, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return def, fmt.Errorf("$%s is %q; use a whole number", name, v)
	}
	return n, nil
}

// envBool reads a boolean environment variable (true, false, 1, 0, …).
func envBool(name string, def bool) (bool, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return def, fmt.Errorf("$%s is %q; use true or false", name, v)
	}
	return b, nil
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

// serve runs the activator and/or the control plane until SIGINT/SIGTERM.
func serve(ctx context.Context, f serveFlags, withActivator, withControlPlane bool) error {
	if f.envErr != nil {
		return usageError{f.envErr}
	}
	if err := checkQueueReplicas(f.queueReplicas); err != nil {
		return err
	}
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

	// The listeners open before anything else, so a taken port fails the
	// command at once: before it starts NATS, opens the database, or
	// creates and prints an admin key that would then serve nobody. The
	// metrics listener closes last, so a draining activator can still be
	// watched.
	var apiListener net.Listener
	if withActivator {
		apiListener, err = listen(f.addr, "--addr", "INFER_ADDR")
		if err != nil {
			return err
		}
		defer apiListener.Close()
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if f.metricsAddr != "" {
		l, err := listen(f.metricsAddr, "--metrics-addr", "INFER_METRICS_ADDR")
		if err != nil {
			return err
		}
		defer serveMetrics(l, reg, log)()
	}

	natsURL := f.nats
	if natsURL == "" {
		url, shutdown, err := embedNATS(filepath.Join(home, "nats"), log)
		if err != nil {
			return err
		}
		defer shutdown()
		natsURL = url
	}
	nc, err := nats.Connect(natsURL, nats.Name("infer"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w", redactNATS(natsURL), err)
	}
	defer nc.Close()

	store, err := registry.Open(ctx, f.dbURL)
	if err != nil {
		return fmt.Errorf("opening the registry (Postgres at %s): %w", redactURL(f.dbURL), err)
	}
	defer store.Close()

	blobs, blobArgs, err := openBlobs(ctx, home)
	if err != nil {
		return err
	}

	g, ctx := errgroup.WithContext(ctx)
	if withActivator {
		// Keys and deployments come from memory on the request path.
		cache := registry.NewCache(store, log)
		g.Go(func() error { return cache.Run(ctx) })
		if err := ensureAdminKey(ctx, store, home, withControlPlane, log); err != nil {
			return err
		}
		// The key file may be read the moment the API answers: the
		// cache must know the key by then (TestDevPrivatePostgres got a
		// 401 on a loaded machine while the notification was on its way).
		if err := cache.ReloadKeys(ctx); err != nil {
			log.Warn("reading keys after the admin key; the change notification will", "err", err)
		}
		asyncTTL, err := time.ParseDuration(f.asyncTTL)
		if err != nil || asyncTTL <= 0 {
			return usageError{fmt.Errorf("--async-ttl %q is not a positive duration such as 24h", f.asyncTTL)}
		}
		shutdownGrace, err := time.ParseDuration(f.shutdownGrace)
		if err != nil || shutdownGrace <= 0 {
			return usageError{fmt.Errorf("--shutdown-grace %q is not a positive duration such as 30s", f.shutdownGrace)}
		}
		if f.maxUploadBytes <= 0 {
			return usageError{fmt.Errorf("--max-upload-bytes %d is not a positive number of bytes", f.maxUploadBytes)}
		}
		srv, err := activator.New(activator.Config{
			AsyncTTL:             asyncTTL,
			ShutdownGrace:        shutdownGrace,
			MaxUploadBytes:       f.maxUploadBytes,
			AllowPrivateWebhooks: f.webhookAllowPrivate,
			LocalRunners:         withControlPlane && (f.driver == "" || f.driver == "local"),
			LocalGPUs:            localGPUs,
			QueueReplicas:        f.queueReplicas,
			Registry:             cache,
			Uploader:             &registry.Uploader{Store: store, Blobs: blobs},
			NATS:                 nc,
			Logger:               log,
			Registerer:           reg,
		})
		if err != nil {
			return err
		}
		defer srv.Close()
		g.Go(func() error { return srv.Serve(ctx, apiListener) })
	}
	if withControlPlane {
		cleanup, err := startControlPlane(ctx, g, f, controlPlaneDeps{
			home: home, natsURL: natsURL, nc: nc, store: store, blobArgs: blobArgs,
			metrics: reg, log: log,
		})
		defer cleanup()
		if err != nil {
			return err
		}
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	log.Info("shutting down")
	return err
}

// listen opens a TCP listener for flag (also set by $envName). A taken
// address is most often a second `infer dev` on this machine: the error
// says which setting moves this one.
func listen(addr, flag, envName string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("%s %s is already in use (another infer dev?); choose another address with %s or $%s", flag, addr, flag, envName)
	}
	if err != nil {
		return nil, fmt.Errorf("listening on %s (%s): %w", addr, flag, err)
	}
	return l, nil
}

// controlPlaneDeps is what serve has set up that the control plane uses.
type controlPlaneDeps struct {
	home, natsURL string
	nc            *nats.Conn
	store         *registry.Store
	blobArgs      []string
	metrics       *prometheus.Registry
	log           *slog.Logger
}

// serveMetrics serves reg's /metrics, and a /healthz for probes, on l
// until the returned func is called. It is a listener of its own because
// the API's port is public and the metrics are not for tenants: they name
// every tenant's deployments. Prometheus scrapes this one (loopback by
// default; a pod or container address in deploy/).
func serveMetrics(l net.Listener, reg *prometheus.Registry, log *slog.Logger) (stop func()) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			log.Error("serving metrics", "addr", l.Addr().String(), "err", err)
		}
	}()
	return func() { srv.Close() }
}

// openBlobs connects to the object store: S3 when INFER_S3_ENDPOINT is set,
// otherwise a directory under home. It also returns the runner flags that
// point runners at the same store (S3 settings reach them through the
// inherited environment).
func openBlobs(ctx context.Context, home string) (blob.Store, []string, error) {
	if cfg, ok := blob.S3ConfigFromEnv(); ok {
		s, err := blob.NewS3(ctx, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("connecting to S3 at %s: %w", redactURL(cfg.Endpoint), err)
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
// becomes an admin key as given (refused if it is a placeholder, short,
// or was revoked: see registry.EnsureAdminKey). Otherwise a generated
// admin key is printed once and saved (mode 0600) to home/admin-key for
// the CLI: on the first start of a production activator, and for
// `infer dev` whenever that file is missing or holds a revoked key (dev is
// one person's machine; a database kept from an earlier run must not lock
// them out, but a key they revoked stays revoked: dev makes a new one and
// says so).
func ensureAdminKey(ctx context.Context, store *registry.Store, home string, dev bool, log *slog.Logger) error {
	keyFile := filepath.Join(home, "admin-key")
	if secret := os.Getenv("INFER_ADMIN_KEY"); secret != "" {
		_, err := store.EnsureAdminKey(ctx, "default", secret)
		if errors.Is(err, registry.ErrRevoked) {
			return fmt.Errorf("INFER_ADMIN_KEY: %w; a revoked key is not reinstated at start: set INFER_ADMIN_KEY to a new secret (e.g. openssl rand -hex 24)", err)
		}
		if err != nil {
			return fmt.Errorf("installing INFER_ADMIN_KEY: %w", err)
		}
		return nil
	}
	if b, err := os.ReadFile(keyFile); err == nil && dev {
		_, err := store.EnsureAdminKey(ctx, "default", strings.TrimSpace(string(b)))
		if err == nil {
			return nil
		}
		if !errors.Is(err, registry.ErrRevoked) {
			return fmt.Errorf("installing the admin key from %s: %w", keyFile, err)
		}
		fmt.Fprintf(os.Stderr, "\nThe admin key saved in %s was revoked (%v).\nIt stays revoked; a new admin key replaces it in that file.\n", keyFile, err)
		log.Warn("the saved admin key was revoked; creating a new one", "file", keyFile, "err", err)
		return createAdminKey(ctx, store, keyFile, log)
	}
	has, err := store.HasAnyKey(ctx)
	if err != nil {
		return fmt.Errorf("checking for API keys: %w", err)
	}
	if has && !dev {
		return nil
	}
	return createAdminKey(ctx, store, keyFile, log)
}

// createAdminKey creates an admin key of the default tenant, saves it to
// keyFile (mode 0600) and prints it once.
func createAdminKey(ctx context.Context, store *registry.Store, keyFile string, log *slog.Logger) error {
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
