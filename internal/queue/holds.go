package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// holdTTL bounds how long a hold record outlives a runner that died
// holding its job without the job being delivered again (its deliveries
// spent, or its queue dropped it). A hold is deleted when its job ends,
// so only those remain.
const holdTTL = 24 * time.Hour

// EnsureHolds creates the bucket where runners record who holds a
// redelivered job (wire.HoldBucket), kept in replicas copies (the
// --queue-replicas setting). It is idempotent.
func EnsureHolds(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      wire.HoldBucket,
		Description: "which runner holds each redelivered job",
		TTL:         holdTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    Replicas(replicas),
	})
	if err != nil {
		return nil, fmt.Errorf("creating hold bucket: %w", err)
	}
	return kv, nil
}
