package controlplane

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

// oldestQueued returns when the oldest job of a deployment that no runner
// has taken yet was queued; zero when none waits.
//
// The runners' consumer knows the last stream sequence it delivered;
// the first message on the deployment's subject after it is the oldest
// job waiting, and its stream timestamp is when it was queued. That is
// two small JetStream API requests (consumer info, and one message get
// with next_by_subj, which skips messages already gone), made only when
// jobs wait and another runner could be started (see reconcile). A job
// redelivered after a runner died waits with an older sequence and is not
// seen here; the depth rule covers it.
func oldestQueued(ctx context.Context, js jetstream.JetStream, deployment string) (time.Time, error) {
	c, err := js.Consumer(ctx, wire.RequestStream(deployment), wire.RequestConsumer)
	if err != nil {
		return time.Time{}, fmt.Errorf("looking up the queue of %s: %w", deployment, err)
	}
	info := c.CachedInfo()
	if info.NumPending == 0 {
		return time.Time{}, nil
	}
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	req, err := json.Marshal(map[string]any{"seq": info.Delivered.Stream + 1, "next_by_subj": wire.RequestSubject(deployment)})
	if err != nil {
		return time.Time{}, err
	}
	msg, err := js.Conn().RequestWithContext(ctx, prefix+"STREAM.MSG.GET."+wire.RequestStream(deployment), req)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading the oldest queued job of %s: %w", deployment, err)
	}
	var resp struct {
		Message *struct {
			Time time.Time `json:"time"`
		} `json:"message"`
		Error *jetstream.APIError `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return time.Time{}, fmt.Errorf("reading the oldest queued job of %s: %w", deployment, err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return time.Time{}, nil // taken since
	case resp.Error != nil:
		return time.Time{}, fmt.Errorf("reading the oldest queued job of %s: %w", deployment, resp.Error)
	case resp.Message == nil:
		return time.Time{}, errors.New("reading the oldest queued job: an empty answer")
	}
	return resp.Message.Time, nil
}
