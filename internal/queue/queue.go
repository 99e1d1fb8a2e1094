// Package queue sets up the JetStream streams and consumers infer uses and
// answers the questions the components ask of them: is the queue full, how
// much work waits.
package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// AckWait is how long a runner may hold a job without reporting progress
// before JetStream hands it to another runner. Runners report progress
// every AckWait/3 while generating, so only a dead runner's jobs move.
const AckWait = 30 * time.Second

// ErrFull is returned by Publish when the deployment's queue holds its
// limit of jobs: the caller should answer 429.
var ErrFull = errors.New("queue is full")

// Limits configures one deployment's queue.
type Limits struct {
	// MaxJobs bounds queued plus in-flight jobs; past it publishing fails
	// with ErrFull. That bound is the deployment's backpressure.
	MaxJobs int
	// MaxAge drops jobs nobody took for this long (they are past every
	// client's queue timeout by then).
	MaxAge time.Duration
}

// Ensure creates or updates a deployment's request stream and its shared
// runner consumer. It is idempotent and cheap enough to call on deploy and
// whenever a stream turns out to be missing.
func Ensure(ctx context.Context, js jetstream.JetStream, deployment string, l Limits) (jetstream.Stream, error) {
	if l.MaxJobs <= 0 {
		l.MaxJobs = 1000
	}
	if l.MaxAge <= 0 {
		l.MaxAge = time.Hour
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        wire.RequestStream(deployment),
		Description: "queued inference requests for deployment " + deployment,
		Subjects:    []string{wire.RequestSubject(deployment)},
		// Work-queue retention deletes a job once a runner acknowledges
		// it; file storage keeps queued jobs across NATS restarts.
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		MaxMsgs:   int64(l.MaxJobs),
		Discard:   jetstream.DiscardNew,
		MaxAge:    l.MaxAge,
		// The duplicate window catches retried publishes; JetStream
		// wants it no longer than MaxAge.
		Duplicates: min(2*time.Minute, l.MaxAge),
	})
	if err != nil {
		return nil, fmt.Errorf("creating request stream for %s: %w", deployment, err)
	}
	_, err = s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       wire.RequestConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait,
		MaxDeliver:    5,
		MaxAckPending: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("creating runner consumer for %s: %w", deployment, err)
	}
	return s, nil
}

// Delete removes a deployment's queue and whatever it still holds.
func Delete(ctx context.Context, js jetstream.JetStream, deployment string) error {
	err := js.DeleteStream(ctx, wire.RequestStream(deployment))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("deleting request stream for %s: %w", deployment, err)
	}
	return nil
}

// Publish queues a job and returns its stream sequence. The job ID is the
// message ID, so a retried publish is stored once.
func Publish(ctx context.Context, js jetstream.JetStream, deployment, jobID string, data []byte) (uint64, error) {
	ack, err := js.Publish(ctx, wire.RequestSubject(deployment), data, jetstream.WithMsgID(jobID))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.Description == "maximum messages exceeded" {
		return 0, ErrFull
	}
	if err != nil {
		return 0, fmt.Errorf("queueing job for %s: %w", deployment, err)
	}
	return ack.Sequence, nil
}

// Remove takes a job that nobody waits for any more out of the queue, so it
// neither runs nor counts against the queue limit. A job already gone (run,
// or removed) is not an error.
func Remove(ctx context.Context, js jetstream.JetStream, deployment string, seq uint64) error {
	s, err := js.Stream(ctx, wire.RequestStream(deployment))
	if err != nil {
		return fmt.Errorf("opening queue of %s: %w", deployment, err)
	}
	err = s.DeleteMsg(ctx, seq)
	if err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeMessageNotFound {
			return fmt.Errorf("removing job %d from %s: %w", seq, deployment, err)
		}
	}
	return nil
}

// Depth is how much work a deployment has.
type Depth struct {
	Queued   int // not yet taken by a runner
	InFlight int // taken and not yet acknowledged
}

// Total is all the work that needs a runner.
func (d Depth) Total() int { return d.Queued + d.InFlight }

// GetDepth reads the runner consumer's counters.
func GetDepth(ctx context.Context, js jetstream.JetStream, deployment string) (Depth, error) {
	c, err := js.Consumer(ctx, wire.RequestStream(deployment), wire.RequestConsumer)
	if err != nil {
		return Depth{}, fmt.Errorf("looking up queue of %s: %w", deployment, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return Depth{}, fmt.Errorf("reading queue depth of %s: %w", deployment, err)
	}
	return Depth{Queued: int(info.NumPending), InFlight: info.NumAckPending}, nil
}

// EnsureUsage creates the stream usage records travel through on their way
// to Postgres.
func EnsureUsage(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        wire.UsageStream,
		Description: "usage records waiting to be written to Postgres",
		Subjects:    wire.UsageSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		// Deduplicate by request ID for longer than any redelivery
		// cycle, so a request is billed once.
		Duplicates: 10 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("creating usage stream: %w", err)
	}
	return s, nil
}
