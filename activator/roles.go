package activator

import (
	"net/http"

	"github.com/infer-run/infer/registry"
)

// Who may do what. Every route's rule is one of these; TestRoleTable
// checks each route of openapi.yaml against each kind of key.
//
//   - Public (no key): GET /healthz, GET /openapi.json, and the web
//     console's static files (GET /, GET /console/*), which hold no data.
//   - Any key, about itself only: GET /v1/me.
//   - Any key of the tenant, limited to the deployments the key may call:
//     the completions (sync and async), GET /v1/models[/{name}],
//     GET /v1/deployments[/{name}] (a limited key neither lists nor reads
//     the others), GET /v1/async/{id} (a user key reads only the jobs it
//     submitted).
//   - Any key, limited to what it may read: GET /v1/usage (a user key reads
//     its own requests' usage only; runner-seconds, which belong to no key,
//     are an admin's).
//   - Admin keys only: POST /v1/artifacts, PUT and DELETE
//     /v1/deployments/{name}, GET and POST /v1/keys, PATCH and DELETE
//     /v1/keys/{id}.
//
// Another tenant's deployments, jobs and keys answer 404, as missing ones
// do, so names do not leak; a revoked or unknown key answers 401.

// usageFilter is the usage a key may read, narrowed by the request's
// deployment and key parameters: an admin key reads any of its tenant's
// keys, a user key only itself, so its filter always names it (asking for
// another key is refused rather than silently narrowed, so a script that
// expects a colleague's usage learns why it sees none).
func usageFilter(key registry.APIKey, deployment, keyID string) (registry.UsageFilter, error) {
	f := registry.UsageFilter{TenantID: key.TenantID, Deployment: deployment, KeyID: keyID}
	if key.Role == registry.RoleAdmin {
		return f, nil
	}
	if keyID != "" && keyID != key.ID {
		e := errStatus(http.StatusForbidden, "invalid_request_error", "permission_denied",
			"a user key may read only its own usage (key=%s); use an admin key to read other keys'", key.ID)
		e.Param = strp("key")
		return f, e
	}
	f.KeyID = key.ID
	return f, nil
}

// mayReadAsync reports whether key may read an async job submitted by
// submitter in tenant: an admin key any of its tenant's, a user key only
// its own.
func mayReadAsync(key registry.APIKey, tenant, submitter string) bool {
	if key.TenantID != tenant {
		return false
	}
	return key.Role == registry.RoleAdmin || key.ID == submitter
}
