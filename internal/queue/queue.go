// Package queue sets up the JetStream streams and consumers infer uses and
// answers the questions the components ask of them: is the queue full, how
// much work waits.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/wire"
)

// AckWait is how long a runner may hold a job without reporting progress
// before JetStream hands it to another runner. Runners report progress
// every AckWait/3 while generating, so only a dead (or frozen) runner's
// jobs move: a job that had not streamed a token yet then runs elsewhere
// after at most AckWait. Should the first runner wake up, the activator
// keeps the runner it accepted and tells the other to stop
// (wire.PingSuperseded).
const AckWait = 10 * time.Second

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
	// Replicas is how many NATS servers keep the queue (see Replicas);
	// zero means one.
	Replicas int
}

// Replicas returns the number of copies a stream or bucket is kept in,
// from the --queue-replicas setting: at least one. On a NATS cluster 3
// copies let a queue survive the loss of one server (JetStream's Raft
// needs a majority of its copies up); a single server refuses more than
// one, with an error naming the setting's cause.
func Replicas(n int) int { return max(1, n) }

// DeploymentLimits are the limits of a deployment's queue, from its queue
// limit and queue timeout. A job nobody took within twice the queue timeout
// is dropped: its client has had its 504 by then. Whatever creates a
// deployment's queue uses these, so a queue re-created (after NATS lost
// its state, say) keeps the limits it was deployed with.
func DeploymentLimits(queueLimit int, queueTimeout time.Duration, replicas int) Limits {
	return Limits{MaxJobs: queueLimit, MaxAge: 2 * queueTimeout, Replicas: replicas}
}

// Ensure creates or updates a deployment's request stream and its shared
// runner consumer. It is idempotent and cheap enough to call on deploy and
// whenever a stream turns out to be missing.
func Ensure(ctx context.Context, js jetstream.JetStream, deployment string, l Limits) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, streamConfig(deployment, l))
	if err != nil {
		return nil, fmt.Errorf("creating request stream for %s: %w", deployment, err)
	}
	if _, err := EnsureConsumer(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Update changes the limits of a deployment's request stream if it has
// one; a deployment without one yet (no work so far) gets them when it is
// created (Ensure).
func Update(ctx context.Context, js jetstream.JetStream, deployment string, l Limits) error {
	_, err := js.UpdateStream(ctx, streamConfig(deployment, l))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("updating request stream for %s: %w", deployment, err)
	}
	return nil
}

// Create creates a deployment's request stream with default limits if it
// does not exist, and never changes one that does: a runner, which does not
// know the deployment's limits, uses it when the stream is missing, and
// must not overwrite the limits the control plane may have just set. The
// deployment's limits arrive with its next deploy; replicas is the
// --queue-replicas setting.
func Create(ctx context.Context, js jetstream.JetStream, deployment string, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateStream(ctx, streamConfig(deployment, Limits{Replicas: replicas}))
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, err = js.Stream(ctx, wire.RequestStream(deployment))
	}
	if err != nil {
		return nil, fmt.Errorf("creating request stream for %s: %w", deployment, err)
	}
	return s, nil
}

func streamConfig(deployment string, l Limits) jetstream.StreamConfig {
	if l.MaxJobs <= 0 {
		l.MaxJobs = 1000
	}
	if l.MaxAge <= 0 {
		l.MaxAge = time.Hour
	}
	return jetstream.StreamConfig{
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
		Replicas:   Replicas(l.Replicas),
	}
}

// EnsureConsumer creates or updates the runners' shared consumer of an
// existing request stream, leaving the stream's limits as they are: a
// runner, which does not know the deployment's limits, uses it when only
// the consumer is missing.
func EnsureConsumer(ctx context.Context, s jetstream.Stream) (jetstream.Consumer, error) {
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       wire.RequestConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait,
		MaxDeliver:    5,
		MaxAckPending: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("creating runner consumer for %s: %w", s.CachedInfo().Config.Name, err)
	}
	return c, nil
}

// Delete removes a deployment's queue and whatever it still holds.
func Delete(ctx context.Context, js jetstream.JetStream, deployment string) error {
	err := js.DeleteStream(ctx, wire.RequestStream(deployment))
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("deleting request stream for %s: %w", deployment, err)
	}
	return nil
}

// Existing is a deployment's request stream as found in JetStream.
type Existing struct {
	Deployment string // the key the stream is named by (a deployment ID)
	Created    time.Time
}

// List returns every deployment request stream JetStream has.
func List(ctx context.Context, js jetstream.JetStream) ([]Existing, error) {
	prefix := wire.RequestStream("")
	l := js.ListStreams(ctx, jetstream.WithStreamListSubject(wire.RequestSubject(">")))
	var out []Existing
	for info := range l.Info() {
		if name, ok := strings.CutPrefix(info.Config.Name, prefix); ok {
			out = append(out, Existing{Deployment: name, Created: info.Created})
		}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("listing request streams: %w", err)
	}
	return out, nil
}

// Names returns the deployments (IDs) that have a request stream. It asks
// for stream names only, up to 1,024 an API request, where List asks for
// each stream's whole info (256 a request, each a few KB of JSON).
func Names(ctx context.Context, js jetstream.JetStream) ([]string, error) {
	prefix := wire.RequestStream("")
	l := js.StreamNames(ctx, jetstream.WithStreamListSubject(wire.RequestSubject(">")))
	var out []string
	for name := range l.Name() {
		if id, ok := strings.CutPrefix(name, prefix); ok {
			out = append(out, id)
		}
	}
	if err := l.Err(); err != nil {
		return nil, fmt.Errorf("listing request streams: %w", err)
	}
	return out, nil
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
//
// It runs once per cancelled request, so it sends the message-delete API
// request itself: jetstream.Stream.DeleteMsg needs a stream handle, and
// getting one costs a STREAM.INFO round trip whose large JSON answer both
// sides encode and decode.
func Remove(ctx context.Context, js jetstream.JetStream, deployment string, seq uint64) error {
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	req := fmt.Appendf(nil, `{"seq":%d,"no_erase":true}`, seq)
	msg, err := js.Conn().RequestWithContext(ctx, prefix+"STREAM.MSG.DELETE."+wire.RequestStream(deployment), req)
	if err != nil {
		return fmt.Errorf("removing job %d from %s: %w", seq, deployment, err)
	}
	var resp struct {
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return fmt.Errorf("removing job %d from %s: decoding answer: %w", seq, deployment, err)
	}
	if e := resp.Error; e != nil && !msgGone(e) {
		return fmt.Errorf("removing job %d from %s: %w", seq, deployment, e)
	}
	return nil
}

// msgGone tells whether a message-delete error only says the message is
// not there (any more). Servers answer that with "message not found" or
// with a generic delete failure described as "no message found".
func msgGone(e *jetstream.APIError) bool {
	return e.ErrorCode == jetstream.JSErrCodeMessageNotFound ||
		(e.ErrorCode == 10057 && strings.Contains(e.Description, "no message found"))
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
	// Looking the consumer up fetches its info: one round trip, not two.
	c, err := js.Consumer(ctx, wire.RequestStream(deployment), wire.RequestConsumer)
	if err != nil {
		return Depth{}, fmt.Errorf("reading queue depth of %s: %w", deployment, err)
	}
	info := c.CachedInfo()
	return Depth{Queued: int(info.NumPending), InFlight: info.NumAckPending}, nil
}

// EnsureUsage creates the stream usage records travel through on their way
// to Postgres, kept in replicas copies (the --queue-replicas setting).
func EnsureUsage(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        wire.UsageStream,
		Description: "usage records waiting to be written to Postgres",
		Subjects:    wire.UsageSubjects(),
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		// Deduplicate by request ID for longer than any redelivery
		// cycle, so a request is billed once.
		Duplicates: 10 * time.Minute,
		Replicas:   Replicas(replicas),
	})
	if err != nil {
		return nil, fmt.Errorf("creating usage stream: %w", err)
	}
	return s, nil
}
