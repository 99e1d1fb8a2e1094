package activator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// listModels is GET /v1/models: the deployments the key may call, a page
// at a time (?limit=, ?after=).
func (s *Server) listModels(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	limit, after, perr := pageParams(c, defaultModelsPage)
	if perr != nil {
		return perr
	}
	deps, more, err := s.reg.ListDeploymentsPage(c.Request().Context(), key.TenantID, allowedNames(key), after, limit)
	if err != nil {
		return s.registryError("listing deployments", err)
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	data := make([]model, len(deps))
	ids := make([]string, len(deps))
	for i, d := range deps {
		data[i] = model{ID: d.Name, Object: "model", Created: d.CreatedAt.Unix(), OwnedBy: key.TenantID}
		ids[i] = d.Name
	}
	return c.JSON(http.StatusOK, newListPage(data, ids, more))
}

func (s *Server) getModel(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := textParam("name", c.Param("name")); err != nil {
		return err
	}
	d, err := s.deployment(c.Request().Context(), key, c.Param("name"))
	if err != nil {
		return err
	}
	if !key.Allows(d.Name) {
		return errDeploymentDenied(d.Name)
	}
	return c.JSON(http.StatusOK, map[string]any{"id": d.Name, "object": "model", "created": d.CreatedAt.Unix(), "owned_by": key.TenantID})
}

// uploadArtifact is POST /v1/artifacts: the body is the raw GGUF file. It is
// streamed to the object store and validated on the way; a file that is not
// valid GGUF is refused and leaves nothing behind.
func (s *Server) uploadArtifact(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := requireAdmin(key); err != nil {
		return err
	}
	req := c.Request()
	if req.ContentLength > s.maxUpload {
		return s.errUploadTooLarge()
	}
	// The tenant's byte quota is checked against the declared length
	// before a byte is read; a body of unknown length is cut at it.
	quotaLeft, err := s.uploadQuota(req.Context(), key.TenantID, req.ContentLength)
	if err != nil {
		refuseUnread(c)
		return err
	}
	body := &cappedReader{r: req.Body, left: s.maxUpload}
	if quotaLeft >= 0 && quotaLeft < body.left {
		body.left = quotaLeft
	}
	a, err := s.uploader.Upload(req.Context(), body, req.ContentLength)
	if body.exceeded && body.left < s.maxUpload && quotaLeft >= 0 {
		return errQuota("max_artifact_bytes", "the upload is larger than the %d bytes the tenant may still hold; delete unused weights (infer artifacts rm) or ask the platform operator for more", quotaLeft)
	}
	if body.exceeded {
		// Whatever the uploader made of the cut-off body, it stored
		// nothing and recorded nothing.
		return s.errUploadTooLarge()
	}
	if errors.Is(err, registry.ErrInvalidWeights) || errors.Is(err, registry.ErrIncompleteUpload) {
		return errInvalid("file", "%v", err)
	}
	if err != nil {
		s.log.Error("uploading weights", "err", err)
		return errStatus(http.StatusServiceUnavailable, "server_error", "upload_failed", "storing the weights failed: %v", redactPaths(err.Error()))
	}
	// The uploader now has the weights and may deploy them, even if
	// another tenant uploaded the same bytes first.
	if err := s.reg.AddArtifactOwner(req.Context(), key.TenantID, a.SHA256); err != nil {
		return s.registryError("recording the artifact's owner", err)
	}
	s.log.Info("artifact stored", "sha256", a.SHA256, "size", a.Size, "arch", a.Architecture)
	return c.JSON(http.StatusCreated, a)
}

func (s *Server) errUploadTooLarge() *apiError {
	e := errStatus(http.StatusRequestEntityTooLarge, "invalid_request_error", "upload_too_large",
		"the weights are larger than this server accepts (%d bytes)", s.maxUpload)
	e.Param = strp("file")
	return e
}

// errUploadTooLarge ends an upload's body once it passes the limit.
var errUploadTooLarge = errors.New("upload exceeds the size limit")

// cappedReader reads at most left bytes from r and fails after them if r
// has more.
type cappedReader struct {
	r        io.Reader
	left     int64
	exceeded bool
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.exceeded {
		return 0, errUploadTooLarge
	}
	if int64(len(p)) > c.left+1 {
		p = p[:c.left+1] // one byte more tells a body at the limit from one above it
	}
	n, err := c.r.Read(p)
	if int64(n) > c.left {
		c.exceeded = true
		return int(c.left), errUploadTooLarge
	}
	c.left -= int64(n)
	return n, err
}

// deploymentSpec is the body of PUT /v1/deployments/{name}. Absent fields
// keep their current (or default) values.
type deploymentSpec struct {
	Artifact      string   `json:"artifact"`
	MinRunners    *int     `json:"min_runners"`
	MaxRunners    *int     `json:"max_runners"`
	Parallel      *int     `json:"parallel"`
	ContextLength *int     `json:"context_length"`
	IdleTimeout   *jsonDur `json:"idle_timeout"`
	KeepWarm      *jsonDur `json:"keep_warm"`
	QueueLimit    *int     `json:"queue_limit"`
	QueueTimeout  *jsonDur `json:"queue_timeout"`
	ChatTemplate  *string  `json:"chat_template"`
	// Prices and Resources replace the stored ones field by field: a
	// field absent from the object keeps its value.
	Prices    *pricesSpec    `json:"prices"`
	Resources *resourcesSpec `json:"resources"`
}

type pricesSpec struct {
	PromptPerMTok     *float64 `json:"prompt_per_mtok"`
	CompletionPerMTok *float64 `json:"completion_per_mtok"`
	RunnerSecond      *float64 `json:"runner_second"`
}

type resourcesSpec struct {
	CPU          *string            `json:"cpu"`
	Memory       *string            `json:"memory"`
	GPUs         *int               `json:"gpus"`
	NodeSelector *map[string]string `json:"node_selector"`
}

// setIfPresent sets *dst to *v when the request named the field.
func setIfPresent[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// jsonDur is a duration written as Go's "10s" or as seconds.
type jsonDur time.Duration

// maxJSONDur bounds a duration in a request, so that converting seconds
// to a time.Duration cannot overflow (1e308 seconds would wrap to a
// negative duration); every duration setting has a far smaller bound.
const maxJSONDur = 100 * 365 * 24 * time.Hour

// errJSONDur is what a duration that is not one hears.
var errJSONDur = &fieldDecodeError{`a duration (idle_timeout, keep_warm, queue_timeout) must be a string such as "10s" or a number of seconds, at most 100 years`}

func (d *jsonDur) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return errJSONDur
		}
		v, err := time.ParseDuration(s)
		if err != nil || v > maxJSONDur || v < -maxJSONDur {
			return errJSONDur
		}
		*d = jsonDur(v)
		return nil
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil || !(math.Abs(f) <= maxJSONDur.Seconds()) {
		return errJSONDur
	}
	*d = jsonDur(time.Duration(f * float64(time.Second)))
	return nil
}

func (s *Server) putDeployment(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := requireAdmin(key); err != nil {
		return err
	}
	name := c.Param("name")
	if err := registry.ValidName(name); err != nil {
		return errInvalid("name", "%v", err)
	}
	// dry_run=true checks the name, the settings and the quota and saves
	// nothing; a new deployment may then omit its artifact, so a client
	// learns of a refusal before it uploads the weights.
	dryRun, err := boolParam(c, "dry_run")
	if err != nil {
		return err
	}
	var spec deploymentSpec
	if err := bind(c, &spec, "deployment"); err != nil {
		return err
	}
	ctx := c.Request().Context()
	cur, err := s.reg.GetDeployment(ctx, key.TenantID, name)
	existed := err == nil
	switch {
	case errors.Is(err, registry.ErrNotFound):
		if spec.Artifact == "" && !dryRun {
			return errInvalid("artifact", "a new deployment needs an artifact (the sha256 of uploaded weights)")
		}
		if err := s.deploymentQuota(ctx, key.TenantID, 1); err != nil {
			return err
		}
	case err != nil:
		return s.registryError("looking up deployment", err)
	}
	d, err := s.prepareDeployment(ctx, key.TenantID, name, spec, cur, existed, dryRun, s.artifactLookup(ctx, key.TenantID))
	if err != nil {
		return err
	}
	if dryRun {
		return c.JSON(http.StatusOK, map[string]any{"object": "deployment", "dry_run": true, "deployment": d})
	}
	if err := s.updateQueue(ctx, cur, d, existed); err != nil {
		return err
	}
	d, err = s.reg.PutDeployment(ctx, d)
	if err != nil {
		return s.registryError("saving deployment", err)
	}
	s.log.Info("deployment saved", "deployment", name, "artifact", d.ArtifactSHA256)
	return c.JSON(http.StatusOK, s.deploymentView(c, d))
}

// artifactLookup finds the tenant's artifacts by digest, each at most once
// (a batch of deployments mostly names one artifact).
func (s *Server) artifactLookup(ctx context.Context, tenantID string) func(sha string) (registry.Artifact, error) {
	type found struct {
		a   registry.Artifact
		err error
	}
	seen := map[string]found{}
	return func(sha string) (registry.Artifact, error) {
		f, ok := seen[sha]
		if !ok {
			f.a, f.err = s.reg.GetTenantArtifact(ctx, tenantID, sha)
			seen[sha] = f
		}
		return f.a, f.err
	}
}

// prepareDeployment is the deployment name becomes under spec: cur with
// the fields spec names changed (a new one with defaults when !existed),
// checked against its artifact and this platform. Its errors are API
// errors: 400s naming the field, or the registry's.
func (s *Server) prepareDeployment(ctx context.Context, tenantID, name string, spec deploymentSpec, cur registry.Deployment, existed, dryRun bool, artifact func(sha string) (registry.Artifact, error)) (registry.Deployment, error) {
	d := cur
	if !existed {
		d = registry.DefaultDeployment()
		d.ID = registry.NewDeploymentID()
		d.Name = name
		d.TenantID = tenantID
	}
	// Only weights the tenant uploaded itself may be deployed: another
	// tenant's digest is reported as missing, so digests reveal nothing.
	// (Keeping the deployment's current weights needs no check.) This
	// queries Postgres, which management calls may; inference does not.
	var art *registry.Artifact
	if spec.Artifact != "" && spec.Artifact != d.ArtifactSHA256 {
		if err := artifactParam(spec.Artifact); err != nil {
			return d, err
		}
		a, err := artifact(spec.Artifact)
		if errors.Is(err, registry.ErrNotFound) {
			return d, errInvalid("artifact", "no artifact %q: upload the weights first", spec.Artifact)
		} else if err != nil {
			return d, s.registryError("looking up artifact", err)
		}
		d.ArtifactSHA256, art = spec.Artifact, &a
	}
	setIfPresent(&d.MinRunners, spec.MinRunners)
	setIfPresent(&d.MaxRunners, spec.MaxRunners)
	setIfPresent(&d.Parallel, spec.Parallel)
	setIfPresent(&d.ContextLength, spec.ContextLength)
	setIfPresent(&d.QueueLimit, spec.QueueLimit)
	setIfPresent((*jsonDur)(&d.IdleTimeout), spec.IdleTimeout)
	setIfPresent((*jsonDur)(&d.KeepWarm), spec.KeepWarm)
	setIfPresent((*jsonDur)(&d.QueueTimeout), spec.QueueTimeout)
	setIfPresent(&d.ChatTemplate, spec.ChatTemplate)
	if p := spec.Prices; p != nil {
		setIfPresent(&d.Prices.PromptPerMTok, p.PromptPerMTok)
		setIfPresent(&d.Prices.CompletionPerMTok, p.CompletionPerMTok)
		setIfPresent(&d.Prices.RunnerSecond, p.RunnerSecond)
	}
	if r := spec.Resources; r != nil {
		setIfPresent(&d.Resources.CPU, r.CPU)
		setIfPresent(&d.Resources.Memory, r.Memory)
		setIfPresent(&d.Resources.GPUs, r.GPUs)
		setIfPresent(&d.Resources.NodeSelector, r.NodeSelector)
	}
	check := d
	if dryRun && check.ArtifactSHA256 == "" {
		// Weights not uploaded yet: every other setting is checked.
		check.ArtifactSHA256 = strings.Repeat("0", 64)
	}
	if err := check.Validate(); err != nil {
		return d, fieldInvalid(err)
	}
	// What the weights and this platform can honour, which Validate
	// cannot know.
	if d.ContextLength > 0 && art == nil && d.ArtifactSHA256 != "" {
		a, err := artifact(d.ArtifactSHA256)
		if err != nil {
			return d, s.registryError("looking up artifact", err)
		}
		art = &a
	}
	if art != nil {
		if err := d.FitsArtifact(*art); err != nil {
			return d, fieldInvalid(err)
		}
	}
	if s.localRunners && d.Resources.GPUs > 0 {
		have := 0
		if s.localGPUs != nil {
			n, err := s.localGPUs(ctx)
			if err != nil {
				s.log.Warn("counting this host's GPUs", "err", err)
			}
			have = n
		}
		if d.Resources.GPUs > have {
			return d, errInvalid("resources.gpus", "resources.gpus is %d, but runners here are local processes and this host has %d GPUs (nvidia-smi): ask for at most %d, or use the Kubernetes driver", d.Resources.GPUs, have, have)
		}
	}
	return d, nil
}

// updateQueue gives an existing deployment's queue the limits d asks for,
// if they changed. A new deployment's queue is created when it first has
// work (the first request's publish finds no stream and creates it, and
// so does the control plane before it starts a runner), not here:
// JetStream creates streams one at a time, ~11 ms for a stream and its
// consumer on one server (internal/queue BenchmarkEnsure), which held PUT
// to 42–128 deployments/s from one client (410/s without, in the same
// conditions: BenchmarkPutDeployment), and a deployment without one costs
// NATS nothing.
func (s *Server) updateQueue(ctx context.Context, cur, d registry.Deployment, existed bool) error {
	before := queue.DeploymentLimits(cur.QueueLimit, cur.QueueTimeout, s.replicas)
	if after := queue.DeploymentLimits(d.QueueLimit, d.QueueTimeout, s.replicas); existed && after != before {
		if err := queue.Update(ctx, s.js, d.ID, after); err != nil {
			s.log.Error("updating queue", "deployment", d.Name, "err", err)
			return errStatus(http.StatusServiceUnavailable, "server_error", "queue_unavailable", "updating the deployment's queue failed: %v", err)
		}
	}
	return nil
}

// fieldInvalid is a 400 for a deployment the registry refused, naming the
// field at fault.
func fieldInvalid(err error) error {
	param := ""
	if fe := (*registry.FieldError)(nil); errors.As(err, &fe) {
		param = fe.Field
	}
	return errInvalid(param, "%v", err)
}

// deploymentStatus is a deployment as `infer ls` shows it. Its durations
// are seconds, as PUT accepts them (the registry's record would print
// nanoseconds): they shadow the embedded record's fields of the same name.
type deploymentStatus struct {
	registry.Deployment
	IdleTimeout  float64          `json:"idle_timeout"`
	QueueTimeout float64          `json:"queue_timeout"`
	KeepWarm     float64          `json:"keep_warm"`
	Queued       int              `json:"queued"`
	InFlight     int              `json:"in_flight"`
	Runners      []wire.Heartbeat `json:"runners"`
	// Model is set by GET /v1/deployments/{name} only.
	Model *modelInfo `json:"model,omitempty"`
}

func (s *Server) deploymentView(c echo.Context, d registry.Deployment) deploymentStatus {
	st := deploymentStatus{Deployment: d, Runners: s.runners.list(d.ID),
		IdleTimeout: d.IdleTimeout.Seconds(), QueueTimeout: d.QueueTimeout.Seconds(), KeepWarm: d.KeepWarm.Seconds()}
	if st.Runners == nil {
		st.Runners = []wire.Heartbeat{}
	}
	// A deployment without a stream has nothing queued: no need to ask.
	if ctx := c.Request().Context(); s.queues.mayHave(ctx, d.ID) {
		if depth, err := queue.GetDepth(ctx, s.js, d.ID); err == nil {
			st.Queued, st.InFlight = depth.Queued, depth.InFlight
		}
	}
	return st
}

// depthLookups bounds the queue-depth lookups one list page runs at once.
// Each is two JetStream requests (queue.GetDepth); 16 at a time, a page of
// 100 waits for ~13 round trips rather than 200. (BenchmarkListPages: a
// page of 100 deployments with queues took 67 ms on a 2-core machine at
// load 8, one whose lookups fail at once 16 ms.)
const depthLookups = 16

// deploymentViews is deploymentView for a page of deployments, in order.
func (s *Server) deploymentViews(c echo.Context, deps []registry.Deployment) []deploymentStatus {
	out := make([]deploymentStatus, len(deps))
	var g errgroup.Group
	g.SetLimit(depthLookups)
	for i, d := range deps {
		g.Go(func() error {
			out[i] = s.deploymentView(c, d)
			return nil
		})
	}
	g.Wait()
	return out
}

// listDeployments is GET /v1/deployments: the deployments the key may
// see (a key limited to some sees only those, as in GET /v1/models) with
// their queues and runners, a page at a time (?limit=, ?after=).
func (s *Server) listDeployments(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	limit, after, perr := pageParams(c, defaultDeploymentsPage)
	if perr != nil {
		return perr
	}
	deps, more, err := s.reg.ListDeploymentsPage(c.Request().Context(), key.TenantID, allowedNames(key), after, limit)
	if err != nil {
		return s.registryError("listing deployments", err)
	}
	out := s.deploymentViews(c, deps)
	ids := make([]string, len(deps))
	for i, d := range deps {
		ids[i] = d.Name
	}
	return c.JSON(http.StatusOK, newListPage(out, ids, more))
}

func (s *Server) getDeployment(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := textParam("name", c.Param("name")); err != nil {
		return err
	}
	d, err := s.deployment(c.Request().Context(), key, c.Param("name"))
	if err != nil {
		return err
	}
	if !key.Allows(d.Name) {
		return errDeploymentDenied(d.Name)
	}
	st := s.deploymentView(c, d)
	// One deployment's weights, as `infer show` prints them (a list
	// leaves them out: a query per deployment).
	if a, err := s.reg.GetTenantArtifact(c.Request().Context(), key.TenantID, d.ArtifactSHA256); err == nil {
		st.Model = &modelInfo{Architecture: a.Architecture, ParameterCount: a.ParameterCount, Quantization: a.Quantization,
			TrainedContextLength: a.ContextLength, Size: a.Size, Pooling: a.Pooling}
	} else if !errors.Is(err, registry.ErrNotFound) {
		return s.registryError("looking up the deployment's artifact", err)
	}
	return c.JSON(http.StatusOK, st)
}

// modelInfo is what the GGUF of a deployment's artifact says about the
// model.
type modelInfo struct {
	Architecture         string `json:"architecture"`
	ParameterCount       int64  `json:"parameter_count"`
	Quantization         string `json:"quantization"`
	TrainedContextLength int    `json:"trained_context_length"`
	Size                 int64  `json:"size"`
	// Pooling is how an embedding model pools its vectors (empty for a
	// model that does not say: a generative one).
	Pooling string `json:"pooling,omitempty"`
}

func (s *Server) deleteDeployment(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := requireAdmin(key); err != nil {
		return err
	}
	ctx := c.Request().Context()
	name := c.Param("name")
	if err := textParam("name", name); err != nil {
		return err
	}
	d, err := s.deployment(ctx, key, name)
	if err != nil {
		return err
	}
	if err := s.reg.DeleteDeployment(ctx, key.TenantID, name); err != nil {
		return s.registryError("deleting deployment", err)
	}
	// Its runners see the queue go and stop (finishing what they run);
	// the control plane stops any it still has at its next tick. A new
	// deployment of the same name gets a new ID, so a new queue.
	if err := queue.Delete(ctx, s.js, d.ID); err != nil {
		s.log.Warn("deleting queue", "deployment", name, "err", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"id": name, "object": "deployment", "deleted": true})
}

// usage is GET /v1/usage?deployment=&key=&since=&until= (RFC 3339 times):
// the request records, newest first, a page at a time (?limit=, ?after=),
// or with group_by=day|deployment|key
// their totals with runner-seconds and cost. An admin key reads its
// tenant's usage; a user key only its own requests' (see usageFilter).
func (s *Server) usage(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	for _, p := range []string{"deployment", "key"} {
		if err := textParam(p, c.QueryParam(p)); err != nil {
			return err
		}
	}
	f, err := usageFilter(key, c.QueryParam("deployment"), c.QueryParam("key"))
	if err != nil {
		return err
	}
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"since", &f.Since}, {"until", &f.Until}} {
		if v := c.QueryParam(p.name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return errInvalid(p.name, "%s must be an RFC 3339 time such as 2026-01-02T15:04:05Z", p.name)
			}
			*p.dst = t
		}
	}
	var perr *apiError
	if by := c.QueryParam("group_by"); by != "" {
		// A report has one row per day, deployment or key: it is not
		// paged, and a cursor into it would mean nothing.
		for _, p := range []string{"limit", "after"} {
			if c.QueryParam(p) != "" {
				return errInvalid(p, "%s pages usage records; a group_by report is not paged", p)
			}
		}
		if by != registry.GroupByDay && by != registry.GroupByDeployment && by != registry.GroupByKey {
			return errInvalid("group_by", "group_by must be day, deployment or key")
		}
		groups, err := s.reg.UsageReport(c.Request().Context(), f, by)
		if err != nil {
			return s.registryError("reporting usage", err)
		}
		if groups == nil {
			groups = []registry.UsageGroup{}
		}
		return c.JSON(http.StatusOK, map[string]any{"object": "list", "group_by": by, "data": groups})
	}
	f.Limit, f.After, perr = pageParams(c, defaultUsagePage)
	if perr != nil {
		return perr
	}
	recs, more, err := s.reg.ListUsagePage(c.Request().Context(), f)
	if errors.Is(err, registry.ErrNotFound) {
		return errInvalid("after", "after names no usage record %q of yours: pass the last_id of the page before", f.After)
	}
	if err != nil {
		return s.registryError("listing usage", err)
	}
	if recs == nil {
		recs = []registry.UsageRecord{}
	}
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.RequestID
	}
	return c.JSON(http.StatusOK, newListPage(recs, ids, more))
}

func (s *Server) registryError(doing string, err error) error {
	if registry.InvalidInput(err) {
		// A value the handlers' checks let through and Postgres cannot
		// hold: the request's fault, said without Postgres' words.
		s.log.Warn(doing+": a request value slipped past validation", "err", err)
		return errInvalid("", "%s failed: a value in the request is out of range or not valid text", doing)
	}
	s.log.Error(doing, "err", err)
	return errStatus(http.StatusServiceUnavailable, "server_error", "registry_unavailable", "%s failed; try again", doing)
}
