package activator

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"

	"github.com/labstack/echo/v4"
)

// The web console: static files embedded in the binary and served at / and
// /console/*, the same origin as the API, so it needs no CORS and works
// with no internet. It is plain HTML, one vanilla JavaScript file and one
// stylesheet, with no build step: `make build` needs only Go, and what is
// served is what is in the repository. The browser keeps the API key in
// sessionStorage and calls the JSON API with it; the server knows nothing
// of a console session. See docs/console.md.
//
//go:embed console
var consoleFiles embed.FS

// consoleCSP allows the console's own files and calls to its own origin,
// and nothing else: no inline script or style, no other host.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// consoleAsset is one embedded file, ready to serve.
type consoleAsset struct {
	body, gzipped []byte
	contentType   string
	etag          string
}

// consoleAssets reads and compresses the embedded files once. gzip takes
// the 71.5 KB the console loads to ~21 KB on the wire (TestConsoleServed
// logs the figure).
func consoleAssets() (map[string]consoleAsset, error) {
	out := map[string]consoleAsset{}
	err := fs.WalkDir(consoleFiles, "console", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := consoleFiles.ReadFile(p)
		if err != nil {
			return err
		}
		var gz bytes.Buffer
		w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		w.Write(body)
		if err := w.Close(); err != nil {
			return err
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		out[strings.TrimPrefix(p, "console/")] = consoleAsset{body: body, gzipped: gz.Bytes(), contentType: ct,
			etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the console's files: %w", err)
	}
	if _, ok := out["index.html"]; !ok {
		return nil, fmt.Errorf("the console has no index.html")
	}
	return out, nil
}

// isConsoleRoute reports whether a registered route serves the console
// rather than the API (the API reference documents only the API).
func isConsoleRoute(p string) bool { return p == "/" || strings.HasPrefix(p, "/console/") }

// consoleRoutes registers the console: / is the page, /console/* its files.
func consoleRoutes(e *echo.Echo, assets map[string]consoleAsset) {
	e.GET("/", serveConsoleAsset(assets, func(echo.Context) string { return "index.html" }))
	e.GET("/console/*", serveConsoleAsset(assets, func(c echo.Context) string { return c.Param("*") }))
}

func serveConsoleAsset(assets map[string]consoleAsset, name func(echo.Context) string) echo.HandlerFunc {
	return func(c echo.Context) error {
		a, ok := assets[name(c)]
		if !ok {
			return echo.ErrNotFound
		}
		h := c.Response().Header()
		h.Set("Content-Security-Policy", consoleCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		// Revalidated at every load (a 304 costs a round trip, not the
		// bytes), so an upgraded activator serves its own console at once.
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		h.Add("Vary", "Accept-Encoding")
		if c.Request().Header.Get("If-None-Match") == a.etag {
			return c.NoContent(http.StatusNotModified)
		}
		body := a.body
		if acceptsGzip(c.Request().Header.Get("Accept-Encoding")) {
			h.Set("Content-Encoding", "gzip")
			body = a.gzipped
		}
		return c.Blob(http.StatusOK, a.contentType, body)
	}
}

// acceptsGzip reports whether an Accept-Encoding header allows gzip (not
// refused with q=0).
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		coding, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			q := strings.ReplaceAll(strings.TrimSpace(params), " ", "")
			return q != "q=0" && q != "q=0.0" && q != "q=0.00" && q != "q=0.000"
		}
	}
	return false
}
