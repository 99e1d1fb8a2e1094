//go:build activatoronly

package main

// An activator-only infer binary (go build -tags activatoronly): the
// activator and the CLI, without the Kubernetes client, the NATS server and
// llama.cpp, which only dev, controlplane and runner need. The activator
// then idles in far less resident memory, because a Go binary's code and
// package initialisation count towards it.

import (
	"context"
	"errors"
	"log/slog"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
)

var errActivatorOnly = errors.New("this infer binary was built with -tags activatoronly and serves only the activator")

func platformCommands() []*cobra.Command { return nil }

func startControlPlane(context.Context, *errgroup.Group, serveFlags, controlPlaneDeps) (func(), error) {
	return func() {}, errActivatorOnly
}

func embedNATS(string, *slog.Logger) (string, func(), error) {
	return "", nil, errors.New("the activator needs --nats or $INFER_NATS_URL (this build embeds no NATS server)")
}

// localGPUs is never asked: this build runs no local runners.
func localGPUs(context.Context) (int, error) { return 0, nil }
