//go:build !activatoronly

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/runner"
)

func runnerCmd() *cobra.Command {
	var (
		cfg      runner.Config
		natsURL  string
		cacheDir string
		blobDir  string
		standby  bool
		// envErr is $INFER_QUEUE_REPLICAS when it does not parse.
		envErr error
	)
	cmd := &cobra.Command{
		Use:   "runner",
		Short: "Serve one deployment's model (started by the control plane)",
		Long: `runner fetches a deployment's weights into the local cache, loads them with
llama.cpp and serves the deployment's queue with continuous batching until it
is told to drain (SIGTERM: finish in-flight requests, then exit). It listens
on no port: it talks only to NATS and the object store (S3 settings from
$INFER_S3_*, or --blob-dir).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger()
			if err := reexecWithHugePages(); err != nil {
				log.Warn("running without transparent huge pages", "err", err)
			}
			if standby {
				// A spare of the local driver: started ahead, with the
				// process start and initialisation behind it; its
				// deployment's arguments come on stdin.
				args, err := readStandbyArgs(os.Stdin)
				if err != nil {
					return err
				}
				if args == nil {
					return nil // the driver shut down before it needed us
				}
				if err := cmd.Flags().Parse(args); err != nil {
					return usageError{err}
				}
			}
			if cfg.DeploymentID == "" || cfg.Deployment == "" || cfg.Artifact.SHA256 == "" || cfg.Artifact.ObjectKey == "" {
				return usageError{errors.New("--deployment-id, --deployment, --artifact and --object-key are required")}
			}
			if !wire.ValidKey(cfg.DeploymentID) {
				return usageError{fmt.Errorf("--deployment-id %q: want a deployment ID (a-z, 0-9, '_' and '-')", cfg.DeploymentID)}
			}
			if err := checkEnvInt("INFER_DECODE_NICE"); err != nil {
				return err
			}
			if envErr != nil {
				return usageError{envErr}
			}
			if err := checkQueueReplicas(cfg.QueueReplicas); err != nil {
				return err
			}
			if cfg.Engine.DecodeNice < 0 || cfg.Engine.DecodeNice > 19 {
				return usageError{fmt.Errorf("--decode-nice %d: want 0 to 19", cfg.Engine.DecodeNice)}
			}
			if cfg.ID == "" {
				cfg.ID = wire.NewID(6)
			}
			var blobs blob.Store
			if s3, ok := blob.S3ConfigFromEnv(); ok {
				// Not NewS3, which waits up to half a minute for the
				// store: a store that is down must show as a failed
				// start the control plane retries with backoff, reported
				// on NATS, not as a runner silent for 30 s.
				s, err := blob.OpenS3(s3)
				if err != nil {
					return fmt.Errorf("S3 at %s: %w", redactURL(s3.Endpoint), err)
				}
				blobs = s
			} else if blobDir != "" {
				d, err := blob.NewDir(blobDir)
				if err != nil {
					return err
				}
				blobs = d
			} else {
				return usageError{errors.New("no object store: set $INFER_S3_ENDPOINT or --blob-dir")}
			}
			cfg.Cache = &runner.Cache{Dir: cacheDir, Blobs: blobs}
			// The measured thread count is kept next to the weights.
			cfg.Engine.CacheDir = cacheDir

			nc, err := nats.Connect(natsURL, nats.Name("infer-runner-"+cfg.ID), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
			if err != nil {
				return fmt.Errorf("connecting to NATS at %s: %w", redactNATS(natsURL), err)
			}
			defer nc.Close()
			r, err := runner.New(cfg, nc, log)
			if err != nil {
				return err
			}

			// First SIGTERM or SIGINT: drain. Second: abandon in-flight
			// work (JetStream redelivers it to another runner).
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			drain := make(chan struct{})
			sigs := make(chan os.Signal, 2)
			signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
			go func() {
				<-sigs
				close(drain)
				<-sigs
				cancel()
			}()
			// Decode threads spend their time in cgo calls, each holding
			// one of Go's Ps until the scheduler takes it back; with only
			// as many Ps as cores, taking jobs and sending tokens waits for
			// that. Spare Ps let them run at once (on the cores the niced
			// decode threads yield).
			runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + cfg.Engine.Parallel)
			err = r.Run(ctx, drain)
			if errors.Is(err, context.Canceled) {
				err = nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DeploymentID, "deployment-id", "", "ID of the deployment to serve (its queue)")
	f.StringVar(&cfg.Deployment, "deployment", "", "name of the deployment to serve (for logs and usage records)")
	f.StringVar(&cfg.ID, "id", "", "runner ID (default: random)")
	f.StringVar(&cfg.Artifact.SHA256, "artifact", "", "sha256 of the weights")
	f.StringVar(&cfg.Artifact.ObjectKey, "object-key", "", "object store key of the weights")
	f.Int64Var(&cfg.Artifact.Size, "size", 0, "size of the weights in bytes (checked against the cache)")
	f.IntVar(&cfg.Engine.Parallel, "parallel", 4, "sequences decoded together (continuous batching slots)")
	f.IntVar(&cfg.Engine.Context, "context", 0, "tokens per sequence (default: the model's trained length, at most 4096)")
	f.IntVar(&cfg.Engine.Threads, "threads", 0, "llama.cpp threads (default: measured fastest on this host with one context, cached in --cache-dir; 1 for tiny models spread over several contexts)")
	f.IntVar(&cfg.Engine.GPULayers, "gpu-layers", runner.AutoGPULayers, "layers to offload to the GPUs (-1: every layer that fits their free memory; 0: none; ignored without a GPU backend and device)")
	f.BoolVar(&cfg.Engine.CPUFallback, "cpu-fallback", false, "when the model does not fit the GPUs, run the layers that do not fit on the CPU (slow) instead of refusing to start")
	f.IntVar(&cfg.Engine.DecodeNice, "decode-nice", envInt("INFER_DECODE_NICE", runner.DefaultDecodeNice), "nice value of the decode threads (0–19; 0: the process's priority), so that taking new requests and sending tokens preempt decoding ($INFER_DECODE_NICE)")
	f.StringVar(&cfg.ChatTemplate, "chat-template", "", "chat template: "+strings.Join(chat.Names(), ", ")+" (default: the GGUF's own)")
	f.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "exit after this long without requests (0: leave it to the control plane)")
	f.StringVar(&natsURL, "nats", env("INFER_NATS_URL", nats.DefaultURL), "NATS server URL, or a comma-separated list of a cluster's servers ($INFER_NATS_URL)")
	registerQueueReplicas(f, &cfg.QueueReplicas, &envErr)
	f.StringVar(&cacheDir, "cache-dir", env("INFER_CACHE_DIR", ".infer/cache"), "local weights cache ($INFER_CACHE_DIR)")
	f.StringVar(&blobDir, "blob-dir", "", "object store directory when no S3 server is configured")
	f.BoolVar(&standby, "standby", false, "wait for the other arguments as one JSON array of strings on stdin (the local driver's spare runners)")
	f.MarkHidden("standby")
	return cmd
}

// readStandbyArgs reads a spare runner's arguments: one line holding a
// JSON array of strings. End of input before it returns nil.
func readStandbyArgs(r io.Reader) ([]string, error) {
	line, err := bufio.NewReader(r).ReadBytes('\n')
	if len(line) == 0 && errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the runner's arguments: %w", err)
	}
	var args []string
	if err := json.Unmarshal(line, &args); err != nil {
		return nil, fmt.Errorf("reading the runner's arguments: %w", err)
	}
	return args, nil
}
