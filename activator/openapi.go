package activator

import (
	_ "embed"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"
	"sigs.k8s.io/yaml"
)

// openAPIYAML is the API reference. It lives in this package rather than
// docs/ because go:embed cannot reach outside the module directory it is
// compiled in; docs/api.md links here.
//
//go:embed openapi.yaml
var openAPIYAML []byte

// openAPIJSON converts the embedded document once per server, so a broken
// document fails New rather than the first request.
func openAPIJSON() ([]byte, error) {
	j, err := yaml.YAMLToJSON(openAPIYAML)
	if err != nil {
		return nil, fmt.Errorf("converting openapi.yaml to JSON: %w", err)
	}
	return j, nil
}

// serveOpenAPI is GET /openapi.json. It needs no key: the document is public
// and tools fetch it before they have one.
func serveOpenAPI(doc []byte) echo.HandlerFunc {
	return func(c echo.Context) error {
		return c.JSONBlob(http.StatusOK, doc)
	}
}
