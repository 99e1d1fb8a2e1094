package queue

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// publishTimeout bounds one attempt of PublishRetry.
const publishTimeout = 5 * time.Second

// PublishRetry stores data on subject under msgID, trying again through a
// NATS outage or a JetStream without a leader yet, until ctx ends or
// within has passed. The message ID makes every copy one message, as long
// as within is shorter than the stream's duplicate window. JetStream
// refusing the message (an API error) is final. opts are added to the
// message ID.
func PublishRetry(ctx context.Context, js jetstream.JetStream, subject, msgID string, data []byte, within time.Duration, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	deadline := time.Now().Add(within)
	opts = append([]jetstream.PublishOpt{jetstream.WithMsgID(msgID)}, opts...)
	for {
		pctx, cancel := context.WithTimeout(ctx, publishTimeout)
		ack, err := js.Publish(pctx, subject, data, opts...)
		cancel()
		var apiErr *jetstream.APIError
		if err == nil || errors.As(err, &apiErr) || !WaitConnected(ctx, js.Conn(), deadline) {
			return ack, err
		}
	}
}

// WaitConnected waits until nc is connected, and says whether it is before
// deadline and while ctx lasts. A caller about to publish again waits here
// rather than publish while disconnected: each attempt would add another
// copy to the connection's reconnect buffer.
func WaitConnected(ctx context.Context, nc *nats.Conn, deadline time.Time) bool {
	for {
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return false
		}
		if nc.Status() == nats.CONNECTED {
			return true
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
		}
	}
}
