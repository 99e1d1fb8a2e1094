package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// DefaultAsyncTTL is how long async job records and results are kept when
// nothing else is configured.
const DefaultAsyncTTL = 24 * time.Hour

// EnsureAsync creates or updates what async jobs need: the stream runners
// send async job events to, the consumer the activators share to fold
// them, and the key-value bucket of job records, whose entries expire ttl
// after their last update. Both are kept in replicas copies (the
// --queue-replicas setting). It is idempotent.
func EnsureAsync(ctx context.Context, js jetstream.JetStream, ttl time.Duration, replicas int) (jetstream.Consumer, jetstream.KeyValue, error) {
	if ttl <= 0 {
		ttl = DefaultAsyncTTL
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      wire.AsyncBucket,
		Description: "async job records and results",
		TTL:         ttl,
		Storage:     jetstream.FileStorage,
		Replicas:    Replicas(replicas),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating async job bucket: %w", err)
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        wire.AsyncStream,
		Description: "async job events waiting to be folded into job records",
		Subjects:    wire.AsyncSubjects(),
		// An event is deleted once an activator has folded it (and, for
		// the last one, delivered the webhook).
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		// Events nobody folds are worthless once the record has expired.
		MaxAge:     ttl,
		Duplicates: min(10*time.Minute, ttl),
		Replicas:   Replicas(replicas),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating async event stream: %w", err)
	}
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:   wire.AsyncConsumer,
		AckPolicy: jetstream.AckExplicitPolicy,
		// The folder reports progress while it retries a webhook, so only
		// a dead activator's events move to another.
		AckWait:       AckWait,
		MaxAckPending: 10000,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating async event consumer: %w", err)
	}
	return c, kv, nil
}
