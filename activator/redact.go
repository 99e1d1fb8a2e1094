package activator

import (
	"path"
	"regexp"
)

// serverPath matches an absolute file path in a message: a "/" at the
// start or after a space, quote, bracket or "=", followed by at least two
// segments. A URL's path ("http://host/a/b") follows a ":" and is not
// matched; neither is a ratio such as "1/2" or "tokens/s".
var serverPath = regexp.MustCompile(`(^|[\s"'(\[=])(/[\w.@+~-]+(?:/[\w.@+~-]*)+)`)

// redactPaths replaces each absolute file path in msg by its last element.
// Runners report what failed in words a Go error gives ("open
// /var/lib/infer/cache/3f…/model.gguf: no space left on device"), and
// those words reach clients waiting on a cold start, GET /v1/deployments
// and SSE comments; the server's directory layout is none of a client's
// business, while the file's name still says which file it was.
func redactPaths(msg string) string {
	return serverPath.ReplaceAllStringFunc(msg, func(m string) string {
		loc := serverPath.FindStringSubmatchIndex(m)
		lead, p := m[loc[2]:loc[3]], m[loc[4]:loc[5]]
		base := path.Base(p)
		if base == "/" || base == "." {
			base = "…"
		}
		return lead + base
	})
}
