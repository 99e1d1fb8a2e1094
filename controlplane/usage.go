package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// UsageWriter stores usage records; inserting a request ID twice must be a
// no-op.
type UsageWriter interface {
	RecordUsage(ctx context.Context, r registry.UsageRecord) (bool, error)
	RecordRunnerUsage(ctx context.Context, r registry.RunnerUsage) (bool, error)
}

// RecordUsage moves usage records from their JetStream stream into
// Postgres until ctx is done. A record is acknowledged only after it is
// stored, so a Postgres outage delays billing and loses nothing; the
// insert is idempotent by request ID, so a redelivered record is counted
// once.
func RecordUsage(ctx context.Context, nc *nats.Conn, w UsageWriter, log *slog.Logger, replicas int) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	s, err := queue.EnsureUsage(ctx, js, replicas)
	if err != nil {
		return err
	}
	cons, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:   "recorder",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   30 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("creating usage consumer: %w", err)
	}
	for ctx.Err() == nil {
		fetchCtx, cancel := context.WithTimeout(ctx, time.Second)
		batch, err := cons.Fetch(100, jetstream.FetchContext(fetchCtx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				log.Warn("fetching usage records", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		for msg := range batch.Messages() {
			if strings.HasPrefix(msg.Subject(), wire.RunnerUsageSubject("")) {
				recordRunner(ctx, msg, w, log)
				continue
			}
			var rec wire.UsageRecord
			if err := json.Unmarshal(msg.Data(), &rec); err != nil {
				log.Error("dropping undecodable usage record", "err", err)
				msg.Term()
				continue
			}
			if _, err := w.RecordUsage(ctx, toRegistry(rec)); err != nil {
				// Leave it in the stream and come back later.
				log.Warn("storing usage record; will retry", "request", rec.RequestID, "err", err)
				msg.NakWithDelay(5 * time.Second)
				continue
			}
			msg.Ack()
		}
		cancel()
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			log.Debug("usage batch ended", "err", err)
		}
	}
	return nil
}

func toRegistry(r wire.UsageRecord) registry.UsageRecord {
	return registry.UsageRecord{
		RequestID:        r.RequestID,
		Deployment:       r.Deployment,
		DeploymentID:     r.DeploymentID,
		TenantID:         r.TenantID,
		KeyID:            r.KeyID,
		RunnerID:         r.RunnerID,
		PromptTokens:     r.PromptTokens,
		CompletionTokens: r.CompletionTokens,
		QueueWaitMS:      r.QueueWaitMS,
		TTFTMS:           r.TTFTMS,
		DurationMS:       r.DurationMS,
		ColdStart:        r.ColdStart,
		Status:           r.Status,
		FinishReason:     r.FinishReason,
		CreatedAt:        r.FinishedAt,

		PromptPricePerMTok:     r.Prices.PromptPerMTok,
		CompletionPricePerMTok: r.Prices.CompletionPerMTok,
	}
}

// recordRunner stores one runner lifetime record, like RecordUsage does a
// request's.
func recordRunner(ctx context.Context, msg jetstream.Msg, w UsageWriter, log *slog.Logger) {
	var rec wire.RunnerUsageRecord
	if err := json.Unmarshal(msg.Data(), &rec); err != nil {
		log.Error("dropping undecodable runner usage record", "err", err)
		msg.Term()
		return
	}
	_, err := w.RecordRunnerUsage(ctx, registry.RunnerUsage{
		RunnerID:       rec.RunnerID,
		Deployment:     rec.Deployment,
		DeploymentID:   rec.DeploymentID,
		TenantID:       rec.TenantID,
		StartedAt:      rec.StartedAt,
		EndedAt:        rec.EndedAt,
		PricePerSecond: rec.PricePerSecond,
	})
	if err != nil {
		log.Warn("storing runner usage record; will retry", "runner", rec.RunnerID, "err", err)
		msg.NakWithDelay(5 * time.Second)
		return
	}
	msg.Ack()
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
