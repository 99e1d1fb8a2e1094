package activator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"
	"golang.org/x/sync/errgroup"

	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// deploymentBatch is the body of PUT /v1/deployments: many deployments,
// each as PUT /v1/deployments/{name} takes one, with its name.
type deploymentBatch struct {
	// Deployments are decoded one by one, so that an item that is not a
	// deployment is refused with its index like any other.
	Deployments []json.RawMessage `json:"deployments"`
}

// batchItem is one deployment of a batch.
type batchItem struct {
	name string
	spec deploymentSpec
	err  error // why it could not be decoded
}

func decodeBatchItem(raw json.RawMessage) batchItem {
	var it batchItem
	var named struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(raw, &named); err != nil {
		it.err = decodeError(err, "deployment")
		return it
	}
	it.name = named.Name
	if err := json.Unmarshal(raw, &it.spec); err != nil {
		it.err = decodeError(err, "deployment")
	}
	return it
}

// batchItemError is why one deployment of a batch was refused.
type batchItemError struct {
	Index int       `json:"index"`
	Name  string    `json:"name"`
	Error *apiError `json:"error"`
}

// putDeployments is PUT /v1/deployments: creates or updates up to
// registry.MaxDeploymentBatch deployments in one transaction, all or none.
// Each is checked as PUT /v1/deployments/{name} checks one; if any is
// refused, the answer is a 400 listing every refused one (index, name,
// error) and nothing is saved. The tenant's deployment quota counts the
// new ones together. One client creating deployments one PUT at a time is
// bound by Postgres' commit (~450/s here); a batch commits once
// (BenchmarkPutDeploymentsBatch).
func (s *Server) putDeployments(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if err := requireAdmin(key); err != nil {
		return err
	}
	dryRun, err := boolParam(c, "dry_run")
	if err != nil {
		return err
	}
	var batch deploymentBatch
	if err := bind(c, &batch, "deployments"); err != nil {
		return err
	}
	n := len(batch.Deployments)
	switch {
	case n == 0:
		return errInvalid("deployments", `no deployments: send {"deployments":[{"name":"…","artifact":"…"}, …]}`)
	case n > registry.MaxDeploymentBatch:
		return errInvalid("deployments", "%d deployments in one request, at most %d: send them in several", n, registry.MaxDeploymentBatch)
	}
	ctx := c.Request().Context()
	var refused []batchItemError
	refuse := func(i int, name string, err error) error {
		var ae *apiError
		if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
			return err // not this item's fault: the whole request fails
		}
		// The item's field, as the whole request names it.
		if ae.Param != nil {
			ae.Param = strp(fmt.Sprintf("deployments[%d].%s", i, *ae.Param))
		}
		refused = append(refused, batchItemError{Index: i, Name: name, Error: ae})
		return nil
	}
	items := make([]batchItem, n)
	names := make([]string, 0, n)
	seen := make(map[string]int, n)
	for i, raw := range batch.Deployments {
		it := decodeBatchItem(raw)
		items[i] = it
		if it.err != nil {
			if err := refuse(i, it.name, it.err); err != nil {
				return err
			}
			continue
		}
		if err := registry.ValidName(it.name); err != nil {
			refuse(i, it.name, errInvalid("name", "%v", err))
			continue
		}
		if j, dup := seen[it.name]; dup {
			refuse(i, it.name, errInvalid("name", "deployment %q is also deployments[%d]: name each once", it.name, j))
			continue
		}
		seen[it.name] = i
		names = append(names, it.name)
	}
	cur, err := s.reg.GetDeployments(ctx, key.TenantID, names)
	if err != nil {
		return s.registryError("looking up deployments", err)
	}
	artifact := s.artifactLookup(ctx, key.TenantID)
	out := make([]registry.Deployment, 0, n)
	existed := make(map[string]registry.Deployment, len(cur))
	added := 0
	for i, it := range items {
		if j, ok := seen[it.name]; !ok || j != i {
			continue // refused above
		}
		old, ok := cur[it.name]
		if !ok {
			added++
			if it.spec.Artifact == "" && !dryRun {
				refuse(i, it.name, errInvalid("artifact", "a new deployment needs an artifact (the sha256 of uploaded weights)"))
				continue
			}
		}
		d, err := s.prepareDeployment(ctx, key.TenantID, it.name, it.spec, old, ok, dryRun, artifact)
		if err != nil {
			if err := refuse(i, it.name, err); err != nil {
				return err
			}
			continue
		}
		if ok {
			existed[it.name] = old
		}
		out = append(out, d)
	}
	if len(refused) > 0 {
		slices.SortFunc(refused, func(a, b batchItemError) int { return a.Index - b.Index })
		return c.JSON(http.StatusBadRequest, map[string]any{
			"error":  errInvalid("deployments", "%d of %d deployments were refused (see errors); nothing was saved", len(refused), n),
			"errors": refused,
		})
	}
	if added > 0 {
		if err := s.deploymentQuota(ctx, key.TenantID, added); err != nil {
			return err
		}
	}
	if dryRun {
		return c.JSON(http.StatusOK, map[string]any{"object": "list", "dry_run": true, "data": out})
	}
	for _, d := range out {
		if old, ok := existed[d.Name]; ok {
			if err := s.updateQueue(ctx, old, d, true); err != nil {
				return err
			}
		}
	}
	saved, err := s.reg.PutDeployments(ctx, out)
	if err != nil {
		return s.registryError("saving deployments", err)
	}
	s.log.Info("deployments saved", "count", len(saved), "new", added)
	// A new deployment has no queue yet (its depth is 0 without asking
	// NATS); only the ones that existed are looked up.
	views := make([]deploymentStatus, len(saved))
	var g errgroup.Group
	g.SetLimit(depthLookups)
	for i, d := range saved {
		if _, ok := existed[d.Name]; ok {
			g.Go(func() error {
				views[i] = s.deploymentView(c, d)
				return nil
			})
			continue
		}
		views[i] = deploymentStatus{Deployment: d, Runners: []wire.Heartbeat{},
			IdleTimeout: d.IdleTimeout.Seconds(), QueueTimeout: d.QueueTimeout.Seconds(), KeepWarm: d.KeepWarm.Seconds()}
	}
	g.Wait()
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": views})
}
