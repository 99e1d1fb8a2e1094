package activator

import (
	"context"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// The admission steps every inference route (chat, completions,
// embeddings) takes in the same order, so a new route cannot skip one.

// allowedDeployment finds the deployment a request names and checks the
// key may use it.
func (s *Server) allowedDeployment(ctx context.Context, key registry.APIKey, model string) (registry.Deployment, error) {
	dep, err := s.deployment(ctx, key, model)
	if err != nil {
		return registry.Deployment{}, err
	}
	if !key.Allows(dep.Name) {
		s.metrics.requests.WithLabelValues(dep.Name, "permission_denied").Inc()
		return registry.Deployment{}, errDeploymentDenied(dep.Name)
	}
	return dep, nil
}

// admitKey applies the key's rate limits and budget, then its tenant's.
// It runs after the request is known to be valid, so a refused request
// costs the key nothing.
func (s *Server) admitKey(c echo.Context, key registry.APIKey, dep registry.Deployment) error {
	e := s.limits.admit(key, s.spender())
	// On the answer and on a 429 alike, as OpenAI sends them.
	s.limits.setRateHeaders(key, c.Response().Header())
	if e == nil {
		e = s.limits.admitTenant(key, s.tenantSpender())
	}
	if e != nil {
		s.metrics.requests.WithLabelValues(dep.Name, deref(e.Code)).Inc()
		return e
	}
	return nil
}

// stamp fills in what a job carries from its deployment and key.
func stamp(job *wire.Job, id string, dep registry.Deployment, key registry.APIKey) {
	job.ID = id
	job.Deployment = dep.Name
	job.DeploymentID = dep.ID
	job.TenantID = key.TenantID
	job.KeyID = key.ID
	job.Deadline = time.Now().Add(dep.QueueTimeout)
	job.Prices = wire.Prices{PromptPerMTok: dep.Prices.PromptPerMTok, CompletionPerMTok: dep.Prices.CompletionPerMTok}
}
