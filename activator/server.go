// Package activator is infer's front door: an OpenAI-compatible HTTP API
// that authenticates each request, queues it durably on the deployment's
// JetStream queue, holds the client while a runner cold-starts, and relays
// the runner's tokens back as SSE or one JSON body. It also serves the
// management API the CLI uses. Activators keep no state of their own: any
// number can run behind a load balancer against one NATS and one Postgres.
package activator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// Registry is what the activator needs from the records store.
type Registry interface {
	AuthenticateKey(ctx context.Context, secret string) (registry.APIKey, error)
	GetDeployment(ctx context.Context, tenantID, name string) (registry.Deployment, error)
	ListDeployments(ctx context.Context, tenantID string) ([]registry.Deployment, error)
	PutDeployment(ctx context.Context, d registry.Deployment) (registry.Deployment, error)
	// GetDeployments and PutDeployments are PUT /v1/deployments': many
	// in one query, and in one transaction.
	GetDeployments(ctx context.Context, tenantID string, names []string) (map[string]registry.Deployment, error)
	PutDeployments(ctx context.Context, ds []registry.Deployment) ([]registry.Deployment, error)
	DeleteDeployment(ctx context.Context, tenantID, name string) error
	// GetTenantArtifact finds an artifact the tenant uploaded; others'
	// are ErrNotFound. AddArtifactOwner records an upload by a tenant.
	GetTenantArtifact(ctx context.Context, tenantID, sha string) (registry.Artifact, error)
	AddArtifactOwner(ctx context.Context, tenantID, sha string) error
	// ListDeploymentsPage and ListUsagePage page by keyset (see
	// registry.MaxPageLimit).
	ListDeploymentsPage(ctx context.Context, tenantID string, only []string, after string, limit int) ([]registry.Deployment, bool, error)
	ListUsagePage(ctx context.Context, f registry.UsageFilter) ([]registry.UsageRecord, bool, error)
	UsageReport(ctx context.Context, f registry.UsageFilter, groupBy string) ([]registry.UsageGroup, error)
	KeyManager
}

// Config configures a Server.
type Config struct {
	Registry Registry
	Uploader *registry.Uploader
	// MaxUploadBytes bounds a weights upload (POST /v1/artifacts); zero
	// means DefaultMaxUploadBytes.
	MaxUploadBytes int64
	// LocalRunners says runners are local processes (infer dev, or a
	// control plane with the local driver in the same process): they can
	// have only this host's GPUs, so a deployment asking for more GPUs
	// per runner than LocalGPUs counts is refused rather than left
	// waiting for GPUs that never come.
	LocalRunners bool
	// LocalGPUs counts this host's GPUs (nil: none).
	LocalGPUs func(context.Context) (int, error)
	NATS      *nats.Conn
	Logger    *slog.Logger
	// Registerer receives the activator's metrics; nil uses a new registry.
	// The activator does not serve them: its port is public, and the
	// metrics name every tenant's deployments. Serve the registry on a
	// listener of its own (infer's --metrics-addr).
	Registerer prometheus.Registerer
	// AsyncTTL is how long async job records and results are kept after
	// their last change; zero means queue.DefaultAsyncTTL. All activators
	// of one NATS should agree: the last one to start sets it.
	AsyncTTL time.Duration
	// WebhookClient calls async job webhooks; nil uses a client with a
	// 10 s timeout. Unless AllowPrivateWebhooks, its *http.Transport (or
	// a default one) is copied to dial only public addresses, directly
	// rather than through a proxy; a Transport of another type is used
	// as it is.
	WebhookClient *http.Client
	// AllowPrivateWebhooks lets async job webhooks reach loopback,
	// private, link-local and other non-public addresses. Off, such
	// webhooks are refused: at submission when the URL holds an IP
	// address, when dialling when a name resolves to one. Turn it on only
	// where every API key is trusted with the activator's network.
	AllowPrivateWebhooks bool
	// AsyncSweep is how often the activator looks for async jobs that
	// no runner took before their queue dropped them, to fail them and
	// call their webhooks; zero means every 5 s.
	AsyncSweep time.Duration
	// AsyncWebhookClaim is how long the activator that failed a job in a
	// sweep has to deliver its webhook before another activator takes the
	// delivery over (it may have died meanwhile); zero means 2 minutes,
	// longer than a delivery's retries take.
	AsyncWebhookClaim time.Duration
	// AsyncLease is how long an activator's hold on an async job that
	// waits in its fair gate, not yet in the deployment's queue, lasts
	// unless renewed (every third of it); once it lapses (the activator
	// died) another activator's sweep publishes the job. Zero means 30 s.
	AsyncLease time.Duration
	// ShutdownGrace is how long Serve, once its context is done, lets
	// requests that are generating finish; zero means
	// DefaultShutdownGrace. Requests still queued are ended at once (see
	// Serve), so the grace is spent only on answers under way.
	ShutdownGrace time.Duration
	// BodyReadTimeout bounds reading a request body, on every route but
	// the weights upload (see bodyDeadline); zero means
	// DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration
	// IdleTimeout is how long Serve keeps an idle keep-alive connection;
	// zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// QueueReplicas is how many NATS servers keep each request queue, the
	// async job stream and bucket (--queue-replicas); zero means one.
	QueueReplicas int
}

// DefaultBodyReadTimeout is Config.BodyReadTimeout's default: an 8 MiB
// prompt at 150 KB/s.
const DefaultBodyReadTimeout = 60 * time.Second

// DefaultIdleTimeout is Config.IdleTimeout's default.
const DefaultIdleTimeout = 2 * time.Minute

// readHeaderTimeout bounds reading a request's line and headers.
const readHeaderTimeout = 10 * time.Second

// DefaultShutdownGrace is Config.ShutdownGrace's default.
const DefaultShutdownGrace = 30 * time.Second

// closeAfterGrace is how long handlers get, once the grace is over, to
// write their error events and return before their connections are cut.
const closeAfterGrace = 5 * time.Second

// Server is one activator.
type Server struct {
	log  *slog.Logger
	reg  Registry
	keys KeyManager
	// tenants is the registry's tenant management, when it has one.
	tenants  TenantManager
	uploader *registry.Uploader
	// maxUpload bounds a weights upload, in bytes.
	maxUpload int64
	// localRunners: see Config.LocalRunners.
	localRunners bool
	localGPUs    func(context.Context) (int, error)
	nc           *nats.Conn
	js           jetstream.JetStream
	id           string
	replies      *replies
	runners      *runnerView
	queues       *queueIndex
	async        *asyncJobs
	metrics      *metrics
	limits       *limiter
	fair         *fairGates
	echo         *echo.Echo
	openapi      []byte // the API reference as JSON, for GET /openapi.json
	// console holds the web console's files, ready to serve.
	console map[string]consoleAsset

	// replicas is Config.QueueReplicas: the copies of every queue the
	// activator creates.
	replicas int
	// grace is how long generating requests may finish at shutdown.
	grace time.Duration
	// bodyTimeout bounds reading a request body; idle bounds an idle
	// keep-alive connection.
	bodyTimeout, idle time.Duration
	// draining is closed when shutdown begins: requests no runner has
	// admitted end at once with activator_shutting_down. stopping is
	// closed when the grace is over: those still generating end too.
	draining, stopping  chan struct{}
	drainOnce, stopOnce sync.Once
}

// New builds an activator. Close releases its subscriptions.
func New(cfg Config) (*Server, error) {
	js, err := jetstream.New(cfg.NATS)
	if err != nil {
		return nil, fmt.Errorf("opening JetStream: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		log:          log.With("component", "activator"),
		reg:          cfg.Registry,
		keys:         cfg.Registry,
		tenants:      tenantManager(cfg.Registry),
		uploader:     cfg.Uploader,
		maxUpload:    cmp.Or(cfg.MaxUploadBytes, DefaultMaxUploadBytes),
		localRunners: cfg.LocalRunners,
		localGPUs:    cfg.LocalGPUs,
		nc:           cfg.NATS,
		js:           js,
		id:           wire.NewID(6),
		limits:       newLimiter(),
		grace:        cmp.Or(cfg.ShutdownGrace, DefaultShutdownGrace),
		replicas:     cfg.QueueReplicas,
		bodyTimeout:  cmp.Or(cfg.BodyReadTimeout, DefaultBodyReadTimeout),
		idle:         cmp.Or(cfg.IdleTimeout, DefaultIdleTimeout),
		draining:     make(chan struct{}),
		stopping:     make(chan struct{}),
	}
	if s.replies, err = newReplies(cfg.NATS, s.id); err != nil {
		return nil, err
	}
	if s.runners, err = newRunnerView(cfg.NATS); err != nil {
		s.replies.close()
		return nil, err
	}
	if s.queues, err = newQueueIndex(cfg.NATS, js); err != nil {
		s.replies.close()
		s.runners.close()
		return nil, err
	}
	reg := cfg.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s.metrics = newMetrics(reg)
	s.fair = newFairGates(reg)
	if s.async, err = newAsyncJobs(s, cfg); err != nil {
		s.replies.close()
		s.runners.close()
		s.queues.close()
		return nil, err
	}
	if s.openapi, err = openAPIJSON(); err != nil {
		s.async.close()
		s.replies.close()
		s.runners.close()
		s.queues.close()
		return nil, err
	}
	if s.console, err = consoleAssets(); err != nil {
		s.async.close()
		s.replies.close()
		s.runners.close()
		s.queues.close()
		return nil, err
	}
	s.echo = s.routes()
	return s, nil
}

// Handler is the HTTP handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.echo }

// Serve serves HTTP on l until ctx is done, then shuts down in steps, so
// that no client is left with a connection cut without a word:
//
//  1. It stops accepting connections, and requests no runner has admitted
//     yet (still queued, or waiting for a redelivery) end at once with
//     503 activator_shutting_down and Retry-After (an SSE error event
//     once a stream has begun); their jobs are withdrawn as for a client
//     that hung up, so nothing runs for them. Another activator can take
//     the retry at once, where waiting here would only spend the grace.
//  2. Requests that are generating get the shutdown grace to finish.
//  3. Those still open when it is over end with activator_shutting_down
//     (an SSE error event then [DONE] for streams) and their runners are
//     told to stop; connections still busy closeAfterGrace later (an
//     upload, say) are closed.
//
// Async jobs are not affected: they live on JetStream and any activator
// reads them.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	// No ReadTimeout or WriteTimeout: uploads take as long as gigabytes
	// take, and SSE streams as long as generation does. Bodies are bounded
	// by bodyDeadline instead, headers and idle connections here.
	srv := &http.Server{Handler: s.echo, ReadHeaderTimeout: readHeaderTimeout, IdleTimeout: s.idle, ConnContext: framingContext,
		// Every request reaches the handler, so framingCheck counts them
		// all ("OPTIONS *" is otherwise answered by net/http itself).
		DisableGeneralOptionsHandler: true}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(framingListener{l}) }()
	s.log.Info("activator listening", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.log.Info("activator shutting down: ending queued requests, letting running ones finish", "grace", s.grace)
	s.drainOnce.Do(func() { close(s.draining) })
	graceCtx, cancel := context.WithTimeout(context.Background(), s.grace)
	defer cancel()
	err := srv.Shutdown(graceCtx)
	if err == nil {
		return nil
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down HTTP: %w", err)
	}
	s.log.Warn("shutdown grace over: ending the requests still running", "grace", s.grace)
	s.stopOnce.Do(func() { close(s.stopping) })
	// Shutdown again: it returns once the handlers told to stop have
	// written their last event and their connections went idle.
	lastCtx, cancelLast := context.WithTimeout(context.Background(), closeAfterGrace)
	defer cancelLast()
	if err := srv.Shutdown(lastCtx); err != nil {
		s.log.Warn("closing the connections still busy after the shutdown grace", "err", err)
		srv.Close()
	}
	return nil
}

// shuttingDown reports whether shutdown has begun.
func (s *Server) shuttingDown() bool {
	select {
	case <-s.draining:
		return true
	default:
		return false
	}
}

// errShuttingDown is what a request this activator ends at shutdown
// hears; the client should retry, and the load balancer sends the retry to
// another activator.
func errShuttingDown(started bool) *apiError {
	msg := "the activator is shutting down and the request had not started; retry it"
	if started {
		msg = "the activator is shutting down and its grace period ended before the answer was complete; retry the request"
	}
	e := errStatus(http.StatusServiceUnavailable, "server_error", "activator_shutting_down", "%s", msg)
	e.RetryAfter = 1
	return e
}

// Close releases NATS subscriptions.
func (s *Server) Close() {
	s.async.close()
	s.replies.close()
	s.runners.close()
	s.queues.close()
}

func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.errorHandler
	// First: it counts every request its connection carries.
	e.Use(framingCheck)
	e.Use(bodyDeadline(s.bodyTimeout))
	e.Use(limitBody)

	e.GET("/healthz", func(c echo.Context) error {
		if s.nc.Status() != nats.CONNECTED {
			return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "nats " + s.nc.Status().String()})
		}
		return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
	})
	e.GET("/openapi.json", serveOpenAPI(s.openapi))
	consoleRoutes(e, s.console)

	v1 := e.Group("/v1")
	v1.POST("/chat/completions", s.chatCompletions)
	v1.POST("/completions", s.completions)
	v1.POST("/embeddings", s.embeddings)
	v1.GET("/models", s.listModels)
	v1.GET("/models/:name", s.getModel)
	v1.POST("/async/chat/completions", s.asyncChatCompletions)
	v1.POST("/async/completions", s.asyncCompletions)
	v1.GET("/async/:id", s.getAsync)

	v1.POST("/artifacts", s.uploadArtifact)
	v1.GET("/deployments", s.listDeployments)
	v1.PUT("/deployments", s.putDeployments)
	v1.GET("/deployments/:name", s.getDeployment)
	v1.PUT("/deployments/:name", s.putDeployment)
	v1.DELETE("/deployments/:name", s.deleteDeployment)
	v1.GET("/deployments/:name/logs", s.deploymentLogs)
	v1.GET("/usage", s.usage)
	v1.POST("/keys", s.createKey)
	v1.GET("/keys", s.listKeys)
	v1.PATCH("/keys/:id", s.updateKey)
	v1.DELETE("/keys/:id", s.revokeKey)
	v1.GET("/me", s.me)
	s.tenantRoutes(v1)
	return e
}

// errorHandler renders every error in OpenAI's shape, including echo's own
// (unknown route, wrong method).
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var ae *apiError
	var he *echo.HTTPError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &he):
		msg := fmt.Sprint(he.Message)
		typ := "invalid_request_error"
		if he.Code >= 500 {
			typ = "server_error"
		}
		ae = &apiError{Status: he.Code, Type: typ, Message: msg}
		if he.Code == http.StatusNotFound {
			ae.Message = fmt.Sprintf("no route for %s %s", c.Request().Method, c.Request().URL.Path)
		}
	default:
		s.log.Error("request failed", "path", c.Path(), "err", err)
		ae = &apiError{Status: http.StatusInternalServerError, Type: "server_error", Message: err.Error()}
	}
	if ae.RetryAfter > 0 {
		c.Response().Header().Set("Retry-After", retryAfter(ae.RetryAfter))
	}
	if ae.Status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="infer"`)
	}
	drainBody(c, s.bodyTimeout)
	if err := c.JSON(ae.Status, map[string]*apiError{"error": ae}); err != nil {
		s.log.Debug("writing error response", "err", err)
	}
}

// authenticate checks the bearer key.
func (s *Server) authenticate(c echo.Context) (registry.APIKey, error) {
	h := c.Request().Header.Get("Authorization")
	secret, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || secret == "" {
		return registry.APIKey{}, errStatus(http.StatusUnauthorized, "invalid_request_error", "invalid_api_key",
			"missing API key: send it as 'Authorization: Bearer <key>'")
	}
	key, err := s.reg.AuthenticateKey(c.Request().Context(), strings.TrimSpace(secret))
	if errors.Is(err, registry.ErrUnauthorized) || errors.Is(err, registry.ErrNotFound) {
		return registry.APIKey{}, errStatus(http.StatusUnauthorized, "invalid_request_error", "invalid_api_key", "incorrect API key provided")
	}
	if err != nil {
		s.log.Error("authenticating", "err", err)
		return registry.APIKey{}, errStatus(http.StatusServiceUnavailable, "server_error", "registry_unavailable", "could not check the API key; try again")
	}
	if key.Tenant.Suspended {
		return registry.APIKey{}, errSuspended()
	}
	return key, nil
}

// requireAdmin checks that the key may manage its tenant.
func requireAdmin(key registry.APIKey) error {
	if key.Role != registry.RoleAdmin {
		return errStatus(http.StatusForbidden, "invalid_request_error", "permission_denied", "this API key may not manage deployments; use an admin key")
	}
	return nil
}

// deployment resolves a model name within the key's tenant: names are per
// tenant, so another tenant's deployment of that name is no different from
// a free name.
func (s *Server) deployment(ctx context.Context, key registry.APIKey, name string) (registry.Deployment, error) {
	// Routes with a {name} check it as "name" first; what reaches here
	// unchecked is a request's model.
	if err := textParam("model", name); err != nil {
		return registry.Deployment{}, err
	}
	d, err := s.reg.GetDeployment(ctx, key.TenantID, name)
	if errors.Is(err, registry.ErrNotFound) {
		return registry.Deployment{}, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: strp("model"), Code: strp("model_not_found"),
			Message: fmt.Sprintf("the model %q does not exist or you do not have access to it", name)}
	}
	if err != nil {
		s.log.Error("looking up deployment", "model", name, "err", err)
		return registry.Deployment{}, errStatus(http.StatusServiceUnavailable, "server_error", "registry_unavailable", "could not look up the model; try again")
	}
	return d, nil
}
