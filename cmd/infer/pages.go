package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/infer-run/infer/registry"
)

// pageFlags are --limit and --after of a command that lists a paged API
// list.
type pageFlags struct {
	limit int
	after string
}

func (f *pageFlags) add(cmd *cobra.Command, def int, after string) {
	cmd.Flags().IntVar(&f.limit, "limit", def, "show at most this many (0: all, fetched a page at a time)")
	cmd.Flags().StringVar(&f.after, "after", "", "start after this item: "+after)
}

func (f *pageFlags) check() error {
	if f.limit < 0 {
		return usageError{fmt.Errorf("--limit %d: want 0 (all) or more", f.limit)}
	}
	return nil
}

// more tells, on stderr (stdout stays the list), how to continue a list
// cut at --limit; next is "" when nothing follows.
func (f *pageFlags) more(what, next string) {
	if next != "" {
		fmt.Fprintf(os.Stderr, "more %s follow: add --after %s\n", what, next)
	}
}

// list fetches path's items a page at a time, following last_id while
// has_more says more follow, until it has pg.limit of them (0: all). next
// is the last item's ID when more follow, else "".
func (c *client) list(ctx context.Context, path string, pg pageFlags) (items []json.RawMessage, next string, err error) {
	after := pg.after
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	for {
		size := registry.MaxPageLimit
		if pg.limit > 0 {
			size = min(size, pg.limit-len(items))
		}
		q := url.Values{"limit": {strconv.Itoa(size)}}
		if after != "" {
			q.Set("after", after)
		}
		var page struct {
			Data    []json.RawMessage `json:"data"`
			LastID  *string           `json:"last_id"`
			HasMore bool              `json:"has_more"`
		}
		if err := c.json(ctx, http.MethodGet, path+sep+q.Encode(), nil, &page); err != nil {
			return nil, "", err
		}
		items = append(items, page.Data...)
		if !page.HasMore || page.LastID == nil || len(page.Data) == 0 {
			return items, "", nil
		}
		after = *page.LastID
		if pg.limit > 0 && len(items) >= pg.limit {
			return items, after, nil
		}
	}
}

// listTable is an `ls` command's whole work for an unpaged list: it GETs
// path ({"data": [...]}) into T and prints the items as JSON with asJSON,
// else as a table of header and one row per item (tab-separated cells).
func listTable[T any](ctx context.Context, path string, asJSON bool, header string, row func(T) string) error {
	c, err := newClient()
	if err != nil {
		return err
	}
	var out struct {
		Data []T `json:"data"`
	}
	if err := c.json(ctx, http.MethodGet, path, nil, &out); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out.Data)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, it := range out.Data {
		fmt.Fprintln(tw, row(it))
	}
	return tw.Flush()
}

// parseWhen reads a point in time as an RFC 3339 time, or as an age before
// now: a Go duration (90m, 24h) or whole days or weeks (7d, 2w), which Go
// durations lack and which usage reports are mostly asked for.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	bad := fmt.Errorf("%q is neither an age such as 30m, 24h or 7d nor an RFC 3339 time such as 2026-01-02T15:04:05Z", s)
	if n := len(s); n > 1 && (s[n-1] == 'd' || s[n-1] == 'w') {
		k, err := strconv.Atoi(s[:n-1])
		if err != nil || k < 0 || k > 100*365 {
			return time.Time{}, bad
		}
		days := k
		if s[n-1] == 'w' {
			days = 7 * k
		}
		return now.AddDate(0, 0, -days), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, bad
	}
	return now.Add(-d), nil
}
