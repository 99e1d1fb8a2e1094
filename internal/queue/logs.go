package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// The limits of the runner log stream. A runner writes a few lines when
// it starts (~10: devices, weights, model, threads) and about one per
// request only when something goes wrong, so these hold days of an
// ordinary runner's log; a runner that floods its log loses its oldest
// lines first, and never another runner's (the per-subject limit), and the
// whole stream stays within LogMaxBytes of the NATS server's disk.
const (
	// LogMaxAge is how long a line is kept.
	LogMaxAge = 24 * time.Hour
	// LogMaxPerRunner is how many lines are kept of each runner.
	LogMaxPerRunner = 10000
	// LogMaxBytes bounds the whole stream.
	LogMaxBytes = 256 << 20
	// LogMaxLine bounds one stored line (a runner truncates longer ones).
	LogMaxLine = 8 << 10
)

// LogStreamConfig is the runner log stream's configuration, with replicas
// copies (the --queue-replicas setting).
func LogStreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              wire.LogStream,
		Description:       "runners' log lines, by deployment and runner",
		Subjects:          wire.LogSubjects(),
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		MaxAge:            LogMaxAge,
		MaxMsgsPerSubject: LogMaxPerRunner,
		MaxBytes:          LogMaxBytes,
		MaxMsgSize:        LogMaxLine + 1024,
		// Full: drop the oldest lines, never refuse a new one.
		Discard:  jetstream.DiscardOld,
		Replicas: Replicas(replicas),
	}
}

// EnsureLogs creates or updates the runner log stream. It is idempotent.
func EnsureLogs(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, LogStreamConfig(replicas))
	if err != nil {
		return nil, fmt.Errorf("creating runner log stream: %w", err)
	}
	return s, nil
}
