package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/infer-run/infer/internal/wire"
)

func logsCmd() *cobra.Command {
	var (
		follow bool
		tail   int
		since  string
		runner string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a deployment's runner logs (admin key)",
		Long: `logs prints the log lines a deployment's runners published, oldest first:
time, runner ID, level, message and attributes. Lines are kept 24 hours (at
most 10000 per runner), whichever driver started the runners. With -f it
keeps printing new lines as runners write them, until interrupted.`,
		Example: `  infer logs stories
  infer logs stories -f --tail 0
  infer logs stories --since 10m --runner 3f9a1c2b4d5e
  infer logs stories --json | jq -r 'select(.level == "ERROR") | .msg'`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if tail < 0 {
				return usageError{fmt.Errorf("--tail %d: want 0 or more lines", tail)}
			}
			var from time.Time
			if since != "" {
				t, err := parseWhen(since, time.Now())
				if err != nil {
					return usageError{fmt.Errorf("--since: %w", err)}
				}
				from = t
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			q := url.Values{"tail": {strconv.Itoa(tail)}}
			if !from.IsZero() {
				q.Set("since", from.UTC().Format(time.RFC3339Nano))
			}
			if runner != "" {
				q.Set("runner", runner)
			}
			if follow {
				q.Set("follow", "true")
			}
			return c.logs(cmd.Context(), "/v1/deployments/"+url.PathEscape(args[0])+"/logs?"+q.Encode(), os.Stdout, asJSON, follow)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new lines as they are written")
	f.IntVar(&tail, "tail", 100, "print the last N lines (0: none, with -f only new ones)")
	f.StringVar(&since, "since", "", "only lines from this long ago (10m, 2h, 1d) or this RFC 3339 time")
	f.StringVar(&runner, "runner", "", "only this runner's lines (its ID, as infer show or the first column print)")
	f.BoolVar(&asJSON, "json", false, "print the API's JSON lines as they come")
	return cmd
}

// logs reads a logs response and prints each line as it arrives.
func (c *client) logs(ctx context.Context, path string, out io.Writer, asJSON, follow bool) error {
	body, err := c.send(ctx, http.MethodGet, path, nil, -1, "")
	if err != nil {
		return err
	}
	defer body.Close()
	w := bufio.NewWriter(out)
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue // a keep-alive
		}
		if asJSON {
			w.Write(line)
			w.WriteByte('\n')
		} else {
			var l wire.LogLine
			if err := json.Unmarshal(line, &l); err != nil {
				return fmt.Errorf("reading the logs: %w", err)
			}
			w.WriteString(formatLogLine(l))
			w.WriteByte('\n')
		}
		// Following, each line shows as it arrives; otherwise at the end.
		if follow {
			w.Flush()
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("reading the logs: %w", err)
	}
	if follow && ctx.Err() == nil {
		return errors.New("the activator ended the log stream (restarting?); run the command again to go on")
	}
	return nil
}

// formatLogLine prints a line as slog's text handler would, after the
// time and the runner's ID: values with spaces or quotes are quoted.
func formatLogLine(l wire.LogLine) string {
	var b strings.Builder
	b.WriteString(l.Time.Local().Format("2006-01-02T15:04:05.000Z07:00"))
	b.WriteByte(' ')
	b.WriteString(l.Runner)
	b.WriteByte(' ')
	fmt.Fprintf(&b, "%-5s ", l.Level)
	b.WriteString(l.Msg)
	for _, a := range l.Attrs {
		b.WriteByte(' ')
		b.WriteString(a.Key)
		b.WriteByte('=')
		v := a.Value
		if v == "" || strings.ContainsAny(v, " \"=\t\n") {
			v = strconv.Quote(v)
		}
		b.WriteString(v)
	}
	return b.String()
}
