package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

// Exit statuses scripts can branch on. They are listed in `infer --help`
// (exitStatusHelp) and in docs/getting-started.md.
const (
	exitOK          = 0
	exitError       = 1 // anything else, including 5xx answers
	exitUsage       = 2 // bad flags or arguments, no API key
	exitRefused     = 3 // the API answered 4xx: unknown name, bad value, wrong role
	exitUnreachable = 4 // the activator could not be reached
)

const exitStatusHelp = `Exit status: 0 success, 1 failure, 2 wrong usage (bad flag or arguments, no
API key), 3 the API refused the request (4xx), 4 the activator could not be
reached.`

// exitCode maps a command's error to its exit status.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	var ae *apiErr
	if errors.As(err, &ae) {
		if ae.Status >= 400 && ae.Status < 500 {
			return exitRefused
		}
		return exitError
	}
	// A refused or timed-out connection, or a name that does not resolve,
	// means nothing answered; an interrupted command is a plain failure.
	var ue2 *url.Error
	var oe *net.OpError
	var de *net.DNSError
	if !errors.Is(err, context.Canceled) && (errors.As(err, &oe) || errors.As(err, &de) || (errors.As(err, &ue2) && ue2.Timeout())) {
		return exitUnreachable
	}
	return exitError
}

// markUsageErrors makes cobra's own complaints (unknown flag, wrong number
// of arguments) usage errors, so they exit 2 like the ones commands raise.
func markUsageErrors(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return usageError{err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// refuseUnknownCommands makes a command that only groups others (infer,
// infer keys) refuse an argument it does not know as a usage error (exit
// 2) rather than print its help and succeed; without arguments it prints
// its help.
func refuseUnknownCommands(root *cobra.Command) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.SuggestionsMinimumDistance <= 0 {
			c.SuggestionsMinimumDistance = 2 // cobra's own default, which only its error path sets
		}
		if c.HasSubCommands() && !c.Runnable() {
			c.Args = func(cmd *cobra.Command, args []string) error {
				if len(args) == 0 {
					return nil
				}
				msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
				if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
					msg += "; did you mean " + strings.Join(s, " or ") + "?"
				}
				return usageError{fmt.Errorf("%s (see '%s --help')", msg, cmd.CommandPath())}
			}
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// examples are the Example sections of commands that do not set their own,
// keyed by command path.
var examples = map[string]string{
	"infer dev": `  infer dev
  INFER_ADDR=0.0.0.0:8080 infer dev --home /var/lib/infer`,
	"infer activator":    `  DATABASE_URL=postgres://db/infer INFER_NATS_URL=nats://nats:4222 infer activator`,
	"infer controlplane": `  DATABASE_URL=postgres://db/infer INFER_NATS_URL=nats://nats:4222 infer controlplane`,
	"infer ls": `  infer ls
  infer ls --json | jq '.[] | {name, queued, runners: (.runners | length)}'`,
	"infer rm": `  infer rm stories`,
	"infer usage": `  infer usage --deployment stories --since 24h
  infer usage --json | jq 'map(.completion_tokens) | add'`,
	"infer keys": `  infer keys create my-app
  infer keys ls
  infer keys revoke KEY_ID`,
	"infer keys create": `  infer keys create my-app
  infer keys create ops --role admin
  KEY=$(infer keys create my-app --json | jq -r .key)`,
	"infer keys ls":     `  infer keys ls --json | jq -r '.[] | select(.revoked_at == null) | .id'`,
	"infer keys revoke": `  infer keys revoke KEY_ID`,
}

func addExamples(root *cobra.Command) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Example == "" {
			c.Example = examples[c.CommandPath()]
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}
