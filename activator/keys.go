package activator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/registry"
)

// KeyManager is what the key endpoints need from the registry.
type KeyManager interface {
	CreateLimitedKey(ctx context.Context, tenantID, name, role string, l registry.Limits) (registry.APIKey, string, error)
	ListKeys(ctx context.Context, tenantID string) ([]registry.APIKey, error)
	RevokeKey(ctx context.Context, tenantID, keyID string) error
	SetKeyShare(ctx context.Context, tenantID, keyID string, share int) (registry.APIKey, error)
}

// createKey is POST /v1/keys {"name":…, "role":"user"|"admin",
// "deployments":[…], "requests_per_minute":N, "tokens_per_minute":N,
// "budget_usd":X, "share":N}. The secret is in this response only; the registry keeps
// its hash.
func (s *Server) createKey(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	var req struct {
		Name string `json:"name"`
		Role string `json:"role"`
		registry.Limits
	}
	if err := bind(c, &req, "request"); err != nil {
		return err
	}
	if err := registry.ValidKeyName(req.Name); err != nil {
		return errInvalid("name", "%v", err)
	}
	if req.Role == "" {
		req.Role = registry.RoleUser
	}
	if req.Role != registry.RoleUser && req.Role != registry.RoleAdmin {
		return errInvalid("role", "role must be %q or %q", registry.RoleUser, registry.RoleAdmin)
	}
	if err := limitsParam(req.Limits); err != nil {
		return err
	}
	// A key restricted to a misspelt deployment could call nothing, and
	// nobody would find out until a client failed; refuse it now.
	for _, name := range req.Deployments {
		_, err := s.reg.GetDeployment(c.Request().Context(), key.TenantID, name)
		if errors.Is(err, registry.ErrNotFound) {
			return errInvalid("deployments", "no deployment %q: deploy it first, then create keys for it", name)
		}
		if err != nil {
			return s.registryError("looking up deployment", err)
		}
	}
	k, secret, err := s.keys.CreateLimitedKey(c.Request().Context(), key.TenantID, req.Name, req.Role, req.Limits)
	if err != nil {
		return s.registryError("creating key", err)
	}
	return c.JSON(http.StatusCreated, struct {
		registry.APIKey
		Key string `json:"key"`
	}{k, secret})
}

func (s *Server) listKeys(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	keys, err := s.keys.ListKeys(c.Request().Context(), key.TenantID)
	if err != nil {
		return s.registryError("listing keys", err)
	}
	if keys == nil {
		keys = []registry.APIKey{}
	}
	return c.JSON(http.StatusOK, map[string]any{"object": "list", "data": keys})
}

// updateKey is PATCH /v1/keys/{id} {"share":N}: a key's weight in fair
// sharing is the one setting that changes without a new key (a key's
// limits are what its holder was given; a new key carries new ones).
func (s *Server) updateKey(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	id := c.Param("id")
	if err := textParam("id", id); err != nil {
		return err
	}
	var req map[string]json.RawMessage
	if err := bind(c, &req, "request"); err != nil {
		return err
	}
	for f := range req {
		if f != "share" {
			return errInvalid(f, "%s cannot be changed on an existing key, only share; create a new key with the limits it should have", f)
		}
	}
	var share int
	if raw, ok := req["share"]; !ok {
		return errInvalid("share", "nothing to change: give share (1 to %d), the key's weight in fair sharing", registry.MaxShare)
	} else if err := json.Unmarshal(raw, &share); err != nil || share < 1 || share > registry.MaxShare {
		return errInvalid("share", "share is %s; it must be a whole number between 1 and %d", raw, registry.MaxShare)
	}
	k, err := s.keys.SetKeyShare(c.Request().Context(), key.TenantID, id, share)
	if errors.Is(err, registry.ErrNotFound) {
		return errStatus(http.StatusNotFound, "invalid_request_error", "key_not_found", "no key %q", id)
	}
	if err != nil {
		return s.registryError("updating key", err)
	}
	return c.JSON(http.StatusOK, k)
}

// revokeKey is DELETE /v1/keys/{id}[?allow_self=true].
func (s *Server) revokeKey(c echo.Context) error {
	key, err := s.adminKey(c)
	if err != nil {
		return err
	}
	id := c.Param("id")
	if err := textParam("id", id); err != nil {
		return err
	}
	if id == key.ID {
		// Revoking the key that makes the call locks its caller out (with
		// the last admin key, out of the tenant for good), so it takes
		// saying so.
		self, err := boolParam(c, "allow_self")
		if err != nil {
			return err
		}
		if !self {
			e := errStatus(http.StatusConflict, "invalid_request_error", "revoking_own_key",
				"%s is the key making this request: revoking it locks this client out. To revoke it anyway, "+
					"add ?allow_self=true (infer keys revoke --allow-self %s)", id, id)
			e.Param = strp("id")
			return e
		}
	}
	err = s.keys.RevokeKey(c.Request().Context(), key.TenantID, id)
	if errors.Is(err, registry.ErrNotFound) {
		return errStatus(http.StatusNotFound, "invalid_request_error", "key_not_found", "no key %q", c.Param("id"))
	}
	if err != nil {
		return s.registryError("revoking key", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"id": c.Param("id"), "object": "api_key", "revoked": true})
}

// boolParam reads an optional true/false query parameter.
func boolParam(c echo.Context, name string) (bool, error) {
	switch v := c.QueryParam(name); v {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	default:
		return false, errInvalid(name, "%s must be true or false", name)
	}
}

// adminKey authenticates and requires an admin key.
func (s *Server) adminKey(c echo.Context) (registry.APIKey, error) {
	key, err := s.authenticate(c)
	if err != nil {
		return key, err
	}
	return key, requireAdmin(key)
}
