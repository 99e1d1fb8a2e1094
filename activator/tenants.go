package activator

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/registry"
)

// Tenants as a product. Three roles:
//
//   - Platform operator: an admin key of registry.OperatorTenant (the
//     tenant INFER_ADMIN_KEY is installed into). It creates, lists,
//     suspends, resumes and deletes tenants, sets their quotas and reads
//     any tenant's invoice; it also administers its own tenant.
//   - Tenant admin: an admin key of any other tenant. It manages its own
//     tenant's weights, deployments and keys, and reads its own tenant
//     record and invoice; the operator routes answer it 403.
//   - User: calls its tenant's models (see roles.go).
//
// A suspended tenant's keys answer 403 tenant_suspended on every route:
// the registry cache reloads keys with their tenant's state whenever a
// tenant changes (a Postgres notification), so every activator refuses
// them within milliseconds.

// TenantManager is what the tenant and artifact endpoints need from the
// registry (registry.Store and registry.Cache have it).
type TenantManager interface {
	CreateTenant(ctx context.Context, name string, q registry.Quotas) (registry.Tenant, registry.APIKey, string, error)
	GetTenant(ctx context.Context, id string) (registry.Tenant, error)
	ListTenants(ctx context.Context) ([]registry.Tenant, error)
	SetTenantQuotas(ctx context.Context, id string, q registry.Quotas) (registry.Tenant, error)
	SuspendTenant(ctx context.Context, id string, suspend bool) (registry.Tenant, error)
	DeleteTenant(ctx context.Context, id string) error
	Invoice(ctx context.Context, tenantID string, month time.Time) (registry.Invoice, error)
	CountDeployments(ctx context.Context, tenantID string) (int, error)
	ArtifactBytes(ctx context.Context, tenantID string) (int64, error)
	TenantQuotas(ctx context.Context, tenantID string) (registry.Quotas, error)
	ListTenantArtifacts(ctx context.Context, tenantID string) ([]registry.TenantArtifact, error)
	RemoveTenantArtifact(ctx context.Context, tenantID, sha string) (string, error)
}

// tenantManager is the registry's TenantManager, or nil.
func tenantManager(r Registry) TenantManager {
	t, _ := r.(TenantManager)
	return t
}

// tenantRoutes registers the tenant and artifact lifecycle routes.
func (s *Server) tenantRoutes(v1 *echo.Group) {
	v1.POST("/tenants", s.createTenant)
	v1.GET("/tenants", s.listTenants)
	v1.GET("/tenants/:id", s.getTenant)
	v1.PATCH("/tenants/:id", s.setTenantQuotas)
	v1.DELETE("/tenants/:id", s.deleteTenant)
	v1.POST("/tenants/:id/suspend", s.suspendTenant(true))
	v1.POST("/tenants/:id/resume", s.suspendTenant(false))
	v1.GET("/tenants/:id/invoice", s.invoice)
	v1.GET("/artifacts", s.listArtifacts)
	v1.GET("/artifacts/:sha", s.getArtifact)
	v1.DELETE("/artifacts/:sha", s.deleteArtifact)
}

// errSuspended is what a suspended tenant's keys hear.
func errSuspended() *apiError {
	return errStatus(http.StatusForbidden, "invalid_request_error", "tenant_suspended",
		"this API key's tenant is suspended; contact the platform operator")
}

// operatorKey authenticates and requires a platform operator's key.
func (s *Server) operatorKey(c echo.Context) (registry.APIKey, error) {
	key, err := s.adminKey(c)
	if err != nil {
		return key, err
	}
	if !key.Tenant.Operator {
		return key, errStatus(http.StatusForbidden, "invalid_request_error", "permission_denied",
			"only the platform operator's admin keys manage tenants")
	}
	return key, s.tenantsAvailable()
}

func (s *Server) tenantsAvailable() error {
	if s.tenants == nil {
		return errStatus(http.StatusNotImplemented, "server_error", "not_implemented", "this activator's registry does not manage tenants")
	}
	return nil
}

// tenantOf resolves {id} for a key that may read a tenant: the operator
// any tenant, an admin its own; others' answer 404 as missing ones do.
func (s *Server) tenantOf(c echo.Context) (registry.Tenant, error) {
	key, err := s.adminKey(c)
	if err != nil {
		return registry.Tenant{}, err
	}
	if err := s.tenantsAvailable(); err != nil {
		return registry.Tenant{}, err
	}
	id := c.Param("id")
	if err := textParam("id", id); err != nil {
		return registry.Tenant{}, err
	}
	if !key.Tenant.Operator && id != key.TenantID {
		return registry.Tenant{}, errTenantNotFound(id)
	}
	t, err := s.tenants.GetTenant(c.Request().Context(), id)
	if errors.Is(err, registry.ErrNotFound) {
		return t, errTenantNotFound(id)
	}
	if err != nil {
		return t, s.registryError("looking up tenant", err)
	}
	return t, nil
}

func errTenantNotFound(id string) *apiError {
	e := errStatus(http.StatusNotFound, "invalid_request_error", "tenant_not_found", "no tenant %q", id)
	e.Param = strp("id")
	return e
}

func fieldErr(err error) *apiError {
	param := ""
	if fe := (*registry.FieldError)(nil); errors.As(err, &fe) {
		param = fe.Field
	}
	return errInvalid(param, "%v", err)
}

// createTenant is POST /v1/tenants {"name":…, "quotas":{…}}: the tenant and
// its first admin key, whose secret is in this response only.
func (s *Server) createTenant(c echo.Context) error {
	if _, err := s.operatorKey(c); err != nil {
		return err
	}
	var req struct {
		Name   string          `json:"name"`
		Quotas registry.Quotas `json:"quotas"`
	}
	if err := bind(c, &req, "tenant"); err != nil {
		return err
	}
	t, k, secret, err := s.tenants.CreateTenant(c.Request().Context(), req.Name, req.Quotas)
	var fe *registry.FieldError
	switch {
	case errors.As(err, &fe):
		return fieldErr(err)
	case errors.Is(err, registry.ErrConflict):
		e := errStatus(http.StatusConflict, "invalid_request_error", "tenant_exists", "a tenant named %q exists", req.Name)
		e.Param = strp("name")
		return e
	case err != nil:
		return s.registryError("creating tenant", err)
	}
	return c.JSON(http.StatusCreated, map[string]any{
		"object": "tenant", "tenant": t,
		"admin_key": struct {
			registry.APIKey
			Key string `json:"key"`
		}{k, secret},
	})
}

func (s *Server) listTenants(c echo.Context) error {
	if _, err := s.operatorKey(c); err != nil {
		return err
	}
	ts, err := s.tenants.ListTenants(c.Request().Context())
	if err != nil {
		return s.registryError("listing tenants", err)
	}
	if ts == nil {
		ts = []registry.Tenant{}
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": ts})
}

func (s *Server) getTenant(c echo.Context) error {
	t, err := s.tenantOf(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, t)
}

// setTenantQuotas is PATCH /v1/tenants/{id} {"quotas":{…}}: the quotas
// named replace the current ones, the others stay.
func (s *Server) setTenantQuotas(c echo.Context) error {
	if _, err := s.operatorKey(c); err != nil {
		return err
	}
	t, err := s.tenantOf(c)
	if err != nil {
		return err
	}
	req := struct {
		Quotas *registry.Quotas `json:"quotas"`
	}{Quotas: &t.Quotas}
	if err := bind(c, &req, "tenant"); err != nil {
		return err
	}
	t, err = s.tenants.SetTenantQuotas(c.Request().Context(), t.ID, t.Quotas)
	if fe := (*registry.FieldError)(nil); errors.As(err, &fe) {
		return fieldErr(err)
	}
	if err != nil {
		return s.registryError("setting quotas", err)
	}
	return c.JSON(http.StatusOK, t)
}

func (s *Server) suspendTenant(suspend bool) echo.HandlerFunc {
	return func(c echo.Context) error {
		if _, err := s.operatorKey(c); err != nil {
			return err
		}
		t, err := s.tenantOf(c)
		if err != nil {
			return err
		}
		t, err = s.tenants.SuspendTenant(c.Request().Context(), t.ID, suspend)
		if errors.Is(err, registry.ErrOperatorTenant) {
			return errStatus(http.StatusConflict, "invalid_request_error", "operator_tenant",
				"the operator's own tenant cannot be suspended: its keys manage every tenant")
		}
		if err != nil {
			return s.registryError("suspending tenant", err)
		}
		return c.JSON(http.StatusOK, t)
	}
}

// deleteTenant is DELETE /v1/tenants/{id}: refused (409) while the tenant
// has deployments; see registry.DeleteTenant.
func (s *Server) deleteTenant(c echo.Context) error {
	if _, err := s.operatorKey(c); err != nil {
		return err
	}
	t, err := s.tenantOf(c)
	if err != nil {
		return err
	}
	err = s.tenants.DeleteTenant(c.Request().Context(), t.ID)
	switch {
	case errors.Is(err, registry.ErrOperatorTenant):
		return errStatus(http.StatusConflict, "invalid_request_error", "operator_tenant", "the operator's own tenant cannot be deleted")
	case errors.Is(err, registry.ErrTenantNotEmpty):
		return errStatus(http.StatusConflict, "invalid_request_error", "tenant_not_empty",
			"%v; delete them first (suspend the tenant to stop its traffic now)", err)
	case err != nil:
		return s.registryError("deleting tenant", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"id": t.ID, "object": "tenant", "deleted": true})
}

// invoice is GET /v1/tenants/{id}/invoice?month=YYYY-MM[&format=csv]: the
// month's usage and cost by deployment, with totals that are the exact sum
// of the lines. The month defaults to the current one (UTC).
func (s *Server) invoice(c echo.Context) error {
	t, err := s.tenantOf(c)
	if err != nil {
		return err
	}
	month := time.Now().UTC()
	if m := c.QueryParam("month"); m != "" {
		if month, err = registry.ParseMonth(m); err != nil {
			return errInvalid("month", "%v", err)
		}
	}
	format := c.QueryParam("format")
	if format != "" && format != "json" && format != "csv" {
		return errInvalid("format", "format must be json or csv")
	}
	inv, err := s.tenants.Invoice(c.Request().Context(), t.ID, month)
	if err != nil {
		return s.registryError("invoicing", err)
	}
	if format != "csv" {
		return c.JSON(http.StatusOK, inv)
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"tenant_id", "month", "deployment_id", "deployment", "requests", "prompt_tokens", "completion_tokens",
		"request_cost_usd", "runner_seconds", "runner_cost_usd", "cost_usd"})
	for _, l := range append(inv.Lines, inv.Total) {
		w.Write([]string{inv.TenantID, inv.Month, l.DeploymentID, l.Deployment, strconv.FormatInt(l.Requests, 10),
			strconv.FormatInt(l.PromptTokens, 10), strconv.FormatInt(l.CompletionTokens, 10),
			l.RequestCostUSD, l.RunnerSeconds, l.RunnerCostUSD, l.CostUSD})
	}
	w.Flush()
	c.Response().Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="invoice-%s-%s.csv"`, inv.TenantID, inv.Month))
	return c.Blob(http.StatusOK, "text/csv; charset=utf-8", buf.Bytes())
}

// listArtifacts is GET /v1/artifacts: the weights the tenant holds and the
// deployments using each.
func (s *Server) listArtifacts(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	if err := s.tenantsAvailable(); err != nil {
		return err
	}
	as, err := s.tenants.ListTenantArtifacts(c.Request().Context(), key.TenantID)
	if err != nil {
		return s.registryError("listing artifacts", err)
	}
	if as == nil {
		as = []registry.TenantArtifact{}
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": as})
}

// getArtifact is GET /v1/artifacts/{sha}: 200 when the tenant holds these
// weights, so a client that hashed its file first need not upload it
// again; 404 otherwise — also when only another tenant holds them, since
// knowing a digest is not having the weights (the upload then stores
// nothing new).
func (s *Server) getArtifact(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	sha := c.Param("sha")
	if err := shaParam(sha); err != nil {
		return err
	}
	ctx := c.Request().Context()
	a, err := s.reg.GetTenantArtifact(ctx, key.TenantID, sha)
	if errors.Is(err, registry.ErrNotFound) {
		return errArtifactNotFound(sha)
	}
	if err != nil {
		return s.registryError("looking up artifact", err)
	}
	// The CLI skips uploading weights this answers 200 for, and runners
	// fetch them from the object: a record whose object is gone (a bucket
	// emptied, a dev blob directory deleted) must say 404, so the weights
	// are sent again, and that upload re-points the record
	// (registry.Uploader.Upload).
	if s.uploader != nil && s.uploader.Blobs != nil {
		if _, err := s.uploader.Blobs.Stat(ctx, a.ObjectKey); errors.Is(err, blob.ErrNotFound) {
			s.log.Warn("artifact's object is missing from the blob store; answering 404 so it is uploaded again", "sha256", sha, "object", a.ObjectKey)
			e := errArtifactNotFound(sha)
			e.Message = fmt.Sprintf("artifact %q is recorded but its object is missing from the blob store; upload the weights again (POST /v1/artifacts) to restore it", sha)
			return e
		} else if err != nil {
			e := errStatus(http.StatusServiceUnavailable, "server_error", "blob_store_unavailable", "cannot check artifact %q in the blob store: %v", sha, err)
			e.RetryAfter = 1
			return e
		}
	}
	return c.JSON(http.StatusOK, a)
}

// shaParam checks the {sha} of an artifact route.
func shaParam(sha string) error {
	if e := artifactParam(sha); e != nil {
		e.Param = strp("sha")
		e.Message = "sha must be the sha256 of uploaded weights: 64 lowercase hexadecimal digits"
		return e
	}
	return nil
}

func errArtifactNotFound(sha string) *apiError {
	e := errStatus(http.StatusNotFound, "invalid_request_error", "artifact_not_found", "no artifact %q", sha)
	e.Param = strp("sha")
	return e
}

// deleteArtifact is DELETE /v1/artifacts/{sha}: refused (409) while one of
// the tenant's deployments uses the weights; the object is deleted from
// the store once no tenant holds them.
func (s *Server) deleteArtifact(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	if err := s.tenantsAvailable(); err != nil {
		return err
	}
	sha := c.Param("sha")
	if err := shaParam(sha); err != nil {
		return err
	}
	ctx := c.Request().Context()
	orphan, err := s.tenants.RemoveTenantArtifact(ctx, key.TenantID, sha)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		return errArtifactNotFound(sha)
	case errors.Is(err, registry.ErrArtifactInUse):
		e := errStatus(http.StatusConflict, "invalid_request_error", "artifact_in_use",
			"%v; point those deployments at other weights or delete them first", err)
		e.Param = strp("sha")
		return e
	case err != nil:
		return s.registryError("deleting artifact", err)
	}
	if orphan != "" && s.uploader != nil {
		if err := s.uploader.Blobs.Delete(context.WithoutCancel(ctx), orphan); err != nil {
			// The record is gone, so nothing points at the object: it
			// only takes space until deleted by hand.
			s.log.Warn("deleting an artifact's object; it is unreferenced and can be deleted by hand", "key", orphan, "err", err)
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"id": sha, "object": "artifact", "deleted": true, "object_deleted": orphan != ""})
}

// deploymentQuota refuses adding new deployments past the tenant's quota.
// (Two concurrent creations may both pass; the quota is a commercial
// bound, not a safety one, and is off by at most the concurrency.)
func (s *Server) deploymentQuota(ctx context.Context, tenantID string, adding int) error {
	if s.tenants == nil {
		return nil
	}
	q, err := s.tenants.TenantQuotas(ctx, tenantID)
	if err != nil || q.MaxDeployments == 0 {
		return s.quotaLookupErr(err)
	}
	n, err := s.tenants.CountDeployments(ctx, tenantID)
	if err != nil {
		return s.quotaLookupErr(err)
	}
	if n+adding > q.MaxDeployments {
		if adding == 1 {
			return errQuota("max_deployments", "the tenant has %d deployments, its quota is %d; delete one or ask the platform operator for more", n, q.MaxDeployments)
		}
		return errQuota("max_deployments", "the tenant has %d deployments and this would add %d, its quota is %d; nothing was saved: delete some, send fewer, or ask the platform operator for more", n, adding, q.MaxDeployments)
	}
	return nil
}

// uploadQuota returns how many bytes the tenant may still upload (-1: no
// quota), or an error when a declared length already exceeds it — checked
// before the body is read, so a client sending Expect: 100-continue sends
// nothing.
func (s *Server) uploadQuota(ctx context.Context, tenantID string, declared int64) (int64, error) {
	if s.tenants == nil {
		return -1, nil
	}
	q, err := s.tenants.TenantQuotas(ctx, tenantID)
	if err != nil || q.MaxArtifactBytes == 0 {
		return -1, s.quotaLookupErr(err)
	}
	used, err := s.tenants.ArtifactBytes(ctx, tenantID)
	if err != nil {
		return -1, s.quotaLookupErr(err)
	}
	left := max(0, q.MaxArtifactBytes-used)
	if declared > left {
		return left, errQuota("max_artifact_bytes", "the upload is %d bytes and the tenant may hold %d more (quota %d, used %d); delete unused weights (infer artifacts rm) or ask the platform operator for more",
			declared, left, q.MaxArtifactBytes, used)
	}
	return left, nil
}

// refuseUnread answers without reading the body: a client that sent
// Expect: 100-continue then sends none of it (net/http sends 100 Continue
// only when a handler reads the body, which the error handler's drain
// would), and the connection is closed rather than reused mid-body.
func refuseUnread(c echo.Context) {
	c.Request().Body = http.NoBody
	c.Set(rawBodyKey, nil)
	c.Response().Header().Set("Connection", "close")
}

func (s *Server) quotaLookupErr(err error) error {
	if err == nil {
		return nil
	}
	return s.registryError("checking the tenant's quota", err)
}

// errQuota is a request refused by a tenant quota: 403 with code
// quota_exceeded, naming the quota.
func errQuota(quota, format string, args ...any) *apiError {
	e := errStatus(http.StatusForbidden, "insufficient_quota", "quota_exceeded", format, args...)
	e.Param = strp(quota)
	return e
}

// runnerQuotaPhase is what a request waits for when its deployment has no
// runner because its tenant's runners are at the tenant's quota (the
// control plane starts no more: controlplane/quota.go), or "" otherwise.
// It costs nothing for tenants without a runner quota.
func (s *Server) runnerQuotaPhase(ctx context.Context, key registry.APIKey, depID string) string {
	limit := key.Tenant.MaxRunners
	if limit == 0 || len(s.runners.list(depID)) > 0 {
		return ""
	}
	deps, err := s.reg.ListDeployments(ctx, key.TenantID)
	if err != nil {
		return ""
	}
	n := 0
	for _, d := range deps {
		n += len(s.runners.list(d.ID))
	}
	if n < limit {
		return ""
	}
	return fmt.Sprintf("queued: this tenant runs %d runners, its quota (max_runners %d); the request starts when one of them frees up or the quota is raised", n, limit)
}
