package activator

import (
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/registry"
)

// Default page sizes when a list request names no limit. GET /v1/models
// answers OpenAI SDKs, which read one page of it and never page, so its
// default is the largest page; the others default to a page a terminal
// shows.
const (
	defaultModelsPage      = registry.MaxPageLimit
	defaultDeploymentsPage = 100
	defaultUsagePage       = 100
)

// listPage is a page of a list in OpenAI's shape: the IDs of its first
// and last items (null when empty), and whether more follow, which
// ?after=last_id fetches.
type listPage struct {
	Object  string  `json:"object"`
	Data    any     `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

func newListPage(data any, ids []string, more bool) listPage {
	p := listPage{Object: "list", Data: data, HasMore: more}
	if len(ids) > 0 {
		p.FirstID, p.LastID = &ids[0], &ids[len(ids)-1]
	}
	return p
}

// pageParams reads ?limit= (1 to registry.MaxPageLimit, def when absent)
// and ?after= (an item's ID) of a list request.
func pageParams(c echo.Context, def int) (limit int, after string, _ *apiError) {
	limit = def
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > registry.MaxPageLimit {
			return 0, "", errInvalid("limit", "limit must be a whole number from 1 to %d", registry.MaxPageLimit)
		}
		limit = n
	}
	after = c.QueryParam("after")
	if err := textParam("after", after); err != nil {
		return 0, "", err
	}
	return limit, after, nil
}

// allowedNames is the filter a key's deployment restriction puts on a
// list: nil when it may call every deployment of its tenant.
func allowedNames(key registry.APIKey) []string {
	if len(key.Deployments) == 0 {
		return nil
	}
	return key.Deployments
}
