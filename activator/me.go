package activator

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// me is GET /v1/me: the calling key's own record (name, role, limits),
// never its secret. The web console asks it once at sign-in to know which
// pages to show: probing an admin route with a user key instead would
// answer 403, which browsers log as an error on every sign-in.
func (s *Server) me(c echo.Context) error {
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if key.Deployments == nil {
		key.Deployments = []string{}
	}
	return c.JSON(http.StatusOK, key)
}
