package activator

import (
	"errors"
	"net/http"

	"github.com/nats-io/nats.go"
)

// jobHeaderRoom is what a queued job's JetStream headers take of NATS's
// max payload ("NATS/1.0" and Nats-Msg-Id: <job ID>, about 60 bytes), with
// room to spare.
const jobHeaderRoom = 256

// errJobTooLarge refuses a job NATS cannot carry. The HTTP limit (8 MiB)
// is on the request as sent; the job is that request as JSON again, in
// which a character JSON escapes (a control character, or <, > and &,
// which Go escapes) takes 6 bytes, and NATS refuses any message over its
// max_payload (1 MiB by default). Before this check such requests were
// retried as if NATS were down until their queue timeout, spinning a core.
func errJobTooLarge(size int, maxPayload int64) *apiError {
	e := errStatus(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large",
		"the request is %d bytes once queued as a job (its text as JSON, where control characters and <, > and & take 6 bytes each), "+
			"more than this server's queue carries: %d bytes (NATS max_payload); shorten the prompt, messages or stop strings",
		size+jobHeaderRoom, maxPayload)
	return e
}

// checkJobSize refuses, before publishing, a job of size bytes that the
// connection's server would refuse. Not connected (MaxPayload 0), the
// publish decides.
func (s *Server) checkJobSize(size int) *apiError {
	maxPayload := s.nc.MaxPayload()
	if maxPayload <= 0 || int64(size)+jobHeaderRoom <= maxPayload {
		return nil
	}
	return errJobTooLarge(size, maxPayload)
}

// publishTooLarge reports whether a publish failed because the message
// is over the server's max payload: final, never worth a retry (the
// connection may have moved to a server with a smaller limit since
// checkJobSize).
func publishTooLarge(err error) bool {
	return errors.Is(err, nats.ErrMaxPayload)
}
