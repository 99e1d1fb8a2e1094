package activator

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"
)

// RFC 9112 §6.3: a request with both Content-Length and Transfer-Encoding
// may be an attempt to smuggle a second request past a proxy that frames
// it by the other header; the server "MUST close the connection after
// responding". net/http frames such a request by Transfer-Encoding, as it
// should, but drops the Content-Length header before a handler can see it
// and keeps the connection open. So Serve's connections note, for each
// request head that passes through them, whether it had both headers, and
// the framingCheck middleware refuses such a request with a 400 and closes
// its connection.
//
// The note follows the bytes as net/http reads them, so it must frame the
// stream exactly as net/http does: heads up to their empty line, then a
// chunked body (Transfer-Encoding wins) or Content-Length bytes. Bodies are
// skipped in whole slices, so uploads cost no per-byte work. Anything it
// does not understand (a malformed head, which net/http refuses and closes
// on anyway, CONNECT) stops the noting for that connection.

// maxHeadLine bounds one line of a head or chunk, as net/http's 1 MiB
// header limit does.
const maxHeadLine = 1 << 20

type framingState int

const (
	inHead framingState = iota
	inBody
	inChunkSize
	inChunkData
	inChunkEnd
	inTrailer
	framingLost
)

// framing follows the request framing of one connection.
type framing struct {
	state     framingState
	line      []byte
	firstLine bool  // the head's request line is read
	cl, te    bool  // the current head has Content-Length, Transfer-Encoding
	left      int64 // body or chunk bytes left
	heads     int   // heads read to their end
	// both[i] is set when head i had both headers; served counts the
	// requests framingCheck has seen, in the same order.
	both   map[int]bool
	served int
}

// feed follows b, the next bytes read from the connection.
func (f *framing) feed(b []byte) {
	for len(b) > 0 {
		switch f.state {
		case framingLost:
			return
		case inBody, inChunkData:
			k := min(f.left, int64(len(b)))
			f.left -= k
			b = b[k:]
			if f.left == 0 {
				if f.state == inBody {
					f.state = inHead
				} else {
					f.state = inChunkEnd
				}
			}
		default:
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				f.appendLine(b)
				return
			}
			f.appendLine(b[:i])
			b = b[i+1:]
			line := bytes.TrimSuffix(f.line, []byte("\r"))
			f.line = f.line[:0]
			f.endLine(line)
		}
	}
}

func (f *framing) appendLine(b []byte) {
	if len(f.line)+len(b) > maxHeadLine {
		f.state = framingLost
		return
	}
	f.line = append(f.line, b...)
}

// endLine handles one complete line in a line state.
func (f *framing) endLine(line []byte) {
	switch f.state {
	case inHead:
		f.headLine(line)
	case inChunkSize:
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		switch {
		case err != nil || n < 0:
			f.state = framingLost
		case n == 0:
			f.state = inTrailer
		default:
			f.state, f.left = inChunkData, n
		}
	case inChunkEnd:
		if len(line) != 0 {
			f.state = framingLost
			return
		}
		f.state = inChunkSize
	case inTrailer:
		if len(line) == 0 {
			f.state = inHead
		}
	}
}

func (f *framing) headLine(line []byte) {
	if !f.firstLine {
		if len(line) == 0 || bytes.HasPrefix(line, []byte("CONNECT ")) {
			f.state = framingLost
			return
		}
		f.firstLine = true
		return
	}
	if len(line) > 0 {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			f.state = framingLost
			return
		}
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, err := strconv.ParseInt(string(bytes.TrimSpace(value)), 10, 64)
			if err != nil || n < 0 {
				f.state = framingLost
				return
			}
			f.cl, f.left = true, n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			f.te = true
		}
		return
	}
	// The end of the head.
	if f.cl && f.te {
		if f.both == nil {
			f.both = map[int]bool{}
		}
		f.both[f.heads] = true
	}
	f.heads++
	switch {
	case f.te:
		f.state = inChunkSize
	case f.cl && f.left > 0:
		f.state = inBody
	}
	f.firstLine, f.cl, f.te = false, false, false
}

// nextHadBoth reports whether the next request handed to a handler had
// both headers.
func (f *framing) nextHadBoth() bool {
	i := f.served
	f.served++
	both := f.both[i]
	delete(f.both, i)
	return both
}

// framingConn notes the framing of what is read from it.
type framingConn struct {
	net.Conn
	mu sync.Mutex
	f  framing
}

func (c *framingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.mu.Lock()
		c.f.feed(p[:n])
		c.mu.Unlock()
	}
	return n, err
}

func (c *framingConn) nextHadBoth() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.f.nextHadBoth()
}

// framingListener hands out framingConns.
type framingListener struct{ net.Listener }

func (l framingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &framingConn{Conn: c}, nil
}

type framingKey struct{}

// framingContext puts a connection's framingConn in its requests' context
// (http.Server.ConnContext).
func framingContext(ctx context.Context, c net.Conn) context.Context {
	if fc, ok := c.(*framingConn); ok {
		return context.WithValue(ctx, framingKey{}, fc)
	}
	return ctx
}

// framingCheck refuses a request that had both Content-Length and
// Transfer-Encoding with a 400 and closes its connection after the
// answer. Requests served without Serve (a bare Handler) are not checked.
func framingCheck(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		fc, ok := c.Request().Context().Value(framingKey{}).(*framingConn)
		if !ok || !fc.nextHadBoth() {
			return next(c)
		}
		c.Response().Header().Set("Connection", "close")
		return errStatus(http.StatusBadRequest, "invalid_request_error", "ambiguous_framing",
			"the request has both Content-Length and Transfer-Encoding, which RFC 9112 forbids (a request smuggling attempt "+
				"through a proxy looks like this); send one of them. The connection is closed")
	}
}
