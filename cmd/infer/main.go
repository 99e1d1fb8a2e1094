// Command infer is the whole platform in one binary: `infer dev` runs it on
// one machine, `infer activator`, `infer controlplane` and `infer runner`
// are the production components, and the rest is the CLI that talks to an
// activator's API.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "infer:", err)
		os.Exit(exitCode(err))
	}
}

// newRootCmd builds the whole command tree; tests run it in process.
func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "infer",
		Short: "Serverless, OpenAI-compatible inference for GGUF models that scales to zero",
		Long: `infer serves GGUF models behind an OpenAI-compatible API. Upload weights once
with 'infer deploy'; runners start when requests arrive and stop when idle.

Run the platform on one machine with 'infer dev'. The CLI talks to $INFER_URL
(default http://127.0.0.1:8080) with the key in $INFER_API_KEY (default: the
admin key 'infer dev' wrote to $INFER_HOME/admin-key).

` + exitStatusHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
	}
	root.AddCommand(
		activatorCmd(), deployCmd(), applyCmd(), lsCmd(), showCmd(), chatCmd(), logsCmd(), rmCmd(), usageCmd(), keysCmd(), benchCmd(),
		tenantsCmd(), artifactsCmd(),
	)
	root.AddCommand(platformCommands()...)
	addExamples(root)
	refuseUnknownCommands(root)
	markUsageErrors(root)
	return root
}

// usageError marks a mistake in how a command was called (exit status 2).
type usageError struct{ error }

// newLogger returns the process logger: text to stderr, level from
// INFER_LOG_LEVEL (debug, info, warn, error).
func newLogger() *slog.Logger {
	level := slog.LevelInfo
	switch strings.ToLower(os.Getenv("INFER_LOG_LEVEL")) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)
	return log
}

// envInt returns an integer environment variable, or def when it is unset
// or not an integer (commands that read one check it with checkEnvInt).
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// checkEnvInt refuses an environment variable that is set but not an
// integer, rather than silently using the default.
func checkEnvInt(name string) error {
	if v := os.Getenv(name); v != "" {
		if _, err := strconv.Atoi(v); err != nil {
			return usageError{fmt.Errorf("$%s=%q: want an integer", name, v)}
		}
	}
	return nil
}

// env returns an environment variable or a default.
func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// version is what `infer --version` prints: the module version and the
// commit the binary was built from, as the Go toolchain recorded them
// (a binary built outside a git checkout has neither).
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	var rev, modified, at string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		case "vcs.time":
			at = s.Value
		}
	}
	if rev != "" {
		v += " commit " + short(rev) + modified
		if at != "" {
			v += " " + at
		}
	}
	return v + " " + bi.GoVersion
}
