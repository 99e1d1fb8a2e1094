package activator

import (
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// DefaultMaxUploadBytes is the default bound of a weights upload: above
// the largest quantized models people run on one machine, far below what
// fills an object store by accident.
const DefaultMaxUploadBytes int64 = 64 << 30

// maxManagementBody bounds the JSON body of every route without a limit of
// its own (deployments, keys). Such bodies are a few hundred bytes.
const maxManagementBody = 1 << 20

// ownBodyLimit lists the routes that bound their bodies themselves: the
// completions (maxBody, with a 413 of their own) and the upload
// (Server.maxUpload).
var ownBodyLimit = map[string]bool{
	"/v1/chat/completions":       true,
	"/v1/completions":            true,
	"/v1/async/chat/completions": true,
	"/v1/async/completions":      true,
	"/v1/embeddings":             true,
	"/v1/artifacts":              true,
}

// limitBody caps the body of every route not in ownBodyLimit at
// maxManagementBody, refusing at once a Content-Length above it, so no
// handler that binds JSON can be made to buffer an unbounded body.
func limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		req := c.Request()
		if ownBodyLimit[c.Path()] || req.Body == nil || req.Body == http.NoBody {
			return next(c)
		}
		if req.ContentLength > maxManagementBody {
			return errBodyTooLarge()
		}
		// The error handler drains the body the limit reader wraps: once
		// over its limit that reader reads nothing more.
		c.Set(rawBodyKey, req.Body)
		req.Body = http.MaxBytesReader(c.Response(), req.Body, maxManagementBody)
		return next(c)
	}
}

// rawBodyKey holds, in the echo context, the request body before limitBody
// wrapped it.
const rawBodyKey = "infer.rawBody"

// Before an error goes out, what is left of the request body is read and
// discarded, up to drainLimit bytes or for drainTime. A client that writes
// its whole body before reading the answer (most HTTP libraries) would
// otherwise never see a 413, or a 401 for a large prompt: the server
// closing with data unread makes the kernel reset the connection, and the
// reset discards the response the client has not read yet. Past the bound
// the connection is closed anyway.
const (
	drainLimit = 64 << 20
	drainTime  = 10 * time.Second
)

// drainBody reads what is left of the request body, within the bound (and
// at most until the body's own deadline, see bodyDeadline). A body already
// read to its end costs one read. A body not read to its end by then
// closes the connection after the response: the read deadline stays in
// place, so net/http, which otherwise reads up to 256 KiB more of a body
// after the handler (without a deadline), gives up at once rather than
// waiting on a client that stalls, and the connection, whose framing is
// lost, is not reused.
func drainBody(c echo.Context, timeout time.Duration) {
	req := c.Request()
	var body io.Reader = req.Body
	if raw, ok := c.Get(rawBodyKey).(io.Reader); ok {
		body = raw
	}
	if body == nil || body == http.NoBody {
		return
	}
	rc := http.NewResponseController(c.Response())
	rc.SetReadDeadline(time.Now().Add(min(drainTime, timeout)))
	if _, err := io.CopyN(io.Discard, body, drainLimit); err == io.EOF {
		rc.SetReadDeadline(time.Time{})
		return
	}
	c.Response().Header().Set("Connection", "close")
}

// bodyDeadline bounds how long reading a request body may take, on every
// route but the weights upload (POST /v1/artifacts, gigabytes at the
// client's pace): the server has no ReadTimeout, which would cut uploads
// and SSE streams alike, so without this a client that sends headers and
// then a body byte now and then holds a connection and a handler for as
// long as it likes. The deadline is lifted once the body has been read to
// its end: net/http then reads the connection in the background to notice
// a client hanging up, and a deadline firing there would cancel a long
// SSE stream.
func bodyDeadline(timeout time.Duration) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			if c.Path() == "/v1/artifacts" || req.Body == nil || req.Body == http.NoBody {
				return next(c)
			}
			rc := http.NewResponseController(c.Response())
			if err := rc.SetReadDeadline(time.Now().Add(timeout)); err == nil {
				req.Body = &liftAtEOF{ReadCloser: req.Body, lift: func() { rc.SetReadDeadline(time.Time{}) }}
			}
			return next(c)
		}
	}
}

// liftAtEOF calls lift once its body has been read to the end.
type liftAtEOF struct {
	io.ReadCloser
	lift   func()
	lifted bool
}

func (l *liftAtEOF) Read(p []byte) (int, error) {
	n, err := l.ReadCloser.Read(p)
	if err == io.EOF && !l.lifted {
		l.lifted = true
		l.lift()
	}
	return n, err
}

func errBodyTooLarge() *apiError {
	return errStatus(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
		"request body is larger than %d bytes", maxManagementBody)
}

// bind decodes a JSON request body into dst: 413 if it is over the limit
// limitBody set, 400 naming the field and the type it needs if it is not
// valid (see decodeError).
func bind(c echo.Context, dst any, what string) error {
	err := c.Bind(dst)
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return errBodyTooLarge()
	}
	if err != nil {
		return decodeError(err, what)
	}
	return nil
}
