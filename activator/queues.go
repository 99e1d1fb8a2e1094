package activator

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/infer-run/infer/internal/queue"
	"github.com/infer-run/infer/internal/wire"
)

// queueIndex knows which deployments have a request stream, so that a
// list of deployments asks JetStream for the depth of only those. A
// deployment's stream is created when it first has work, so most of many
// deployments have none, and asking for each one's depth anyway cost a
// JetStream round trip per deployment: 67 ms a page of 100 on the
// development host (BenchmarkListPages), most of `infer ls`.
//
// It is the streams' names, listed when a list page finds it older than
// queueIndexTTL (one API request per 1,024 streams), kept current between
// listings by JetStream's stream created and deleted advisories. An
// advisory is core NATS, so one lost (this activator disconnected) leaves
// a deployment's queue shown as empty until the next listing. A stream
// thought to exist that does not costs only the lookup that finds so.
// Nothing runs while nobody lists deployments.
type queueIndex struct {
	js   jetstream.JetStream
	subs []*nats.Subscription
	now  func() time.Time

	refresh sync.Mutex // one listing at a time
	mu      sync.Mutex
	have    map[string]bool // deployment IDs with a request stream
	// created is what advisories said was created while a listing ran
	// (nil when none runs): the listing may have been answered before.
	created map[string]bool
	at      time.Time // when have was listed; zero: never
}

// queueIndexTTL is how old a listing may be: the bound on how long a lost
// advisory can hide a queue.
const queueIndexTTL = 30 * time.Second

// advisory subjects of JetStream stream creation and deletion; the last
// token is the stream's name.
const (
	streamCreated = "$JS.EVENT.ADVISORY.STREAM.CREATED.*"
	streamDeleted = "$JS.EVENT.ADVISORY.STREAM.DELETED.*"
)

func newQueueIndex(nc *nats.Conn, js jetstream.JetStream) (*queueIndex, error) {
	q := &queueIndex{js: js, now: time.Now, have: map[string]bool{}}
	for subj, created := range map[string]bool{streamCreated: true, streamDeleted: false} {
		sub, err := nc.Subscribe(subj, q.onAdvisory(created))
		if err != nil {
			q.close()
			return nil, fmt.Errorf("subscribing to stream advisories: %w", err)
		}
		q.subs = append(q.subs, sub)
	}
	return q, nil
}

func (q *queueIndex) close() {
	for _, s := range q.subs {
		s.Unsubscribe()
	}
}

func (q *queueIndex) onAdvisory(created bool) nats.MsgHandler {
	return func(m *nats.Msg) {
		id, ok := strings.CutPrefix(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], wire.RequestStream(""))
		if !ok {
			return
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		if created {
			q.have[id] = true
			if q.created != nil {
				q.created[id] = true
			}
			return
		}
		delete(q.have, id)
		delete(q.created, id)
	}
}

// mayHave reports whether the deployment may have a request stream: false
// only when the index is fresh and knows it has none.
func (q *queueIndex) mayHave(ctx context.Context, id string) bool {
	if !q.fresh(ctx) {
		return true
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.have[id]
}

// fresh lists the streams again if the listing is older than
// queueIndexTTL, and reports whether the index can be trusted.
func (q *queueIndex) fresh(ctx context.Context) bool {
	q.refresh.Lock()
	defer q.refresh.Unlock()
	q.mu.Lock()
	ok := !q.at.IsZero() && q.now().Sub(q.at) < queueIndexTTL
	if !ok {
		q.created = map[string]bool{}
	}
	q.mu.Unlock()
	if ok {
		return true
	}
	ids, err := queue.Names(ctx, q.js)
	q.mu.Lock()
	defer q.mu.Unlock()
	created := q.created
	q.created = nil
	if err != nil {
		return false
	}
	q.have = make(map[string]bool, len(ids)+len(created))
	for _, id := range ids {
		q.have[id] = true
	}
	for id := range created {
		q.have[id] = true
	}
	q.at = q.now()
	return true
}
