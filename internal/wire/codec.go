package wire

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// Events travel as one tag byte, the event's sequence number (4 bytes,
// big-endian) and a body. Deltas, which are nearly all of the traffic,
// carry their text raw: no JSON encoding or escaping per token.
//
// A runner numbers the events it sends for one job from 0, so that the
// activator can tell a lost event (NATS drops what is published to a
// subject while its subscriber is reconnecting) from a repeated one (the
// runner repeats a job's last event until it is acknowledged).
const (
	tagDelta = 'd'
	tagJSON  = 'j'
)

// EventHeaderLen is the length of an event's tag and sequence number.
const EventHeaderLen = 5

// AppendDelta appends a delta event carrying text to buf.
func AppendDelta(buf []byte, seq uint32, text []byte) []byte {
	buf = append(buf, tagDelta)
	buf = binary.BigEndian.AppendUint32(buf, seq)
	return append(buf, text...)
}

// SetSeq numbers an encoded event, for a delta whose number is known only
// once its text is complete.
func SetSeq(event []byte, seq uint32) {
	binary.BigEndian.PutUint32(event[1:EventHeaderLen], seq)
}

// AppendEvent appends any event to buf, numbered ev.Seq.
// A delta with logprobs, or of a completion but the first (Index), travels
// as JSON: an activator that predates them still reads its text.
func AppendEvent(buf []byte, ev *Event) ([]byte, error) {
	if ev.Type == EventDelta && len(ev.Logprobs) == 0 && ev.Index == 0 && len(ev.Calls) == 0 {
		return AppendDelta(buf, ev.Seq, []byte(ev.Text)), nil
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return buf, fmt.Errorf("encoding %s event: %w", ev.Type, err)
	}
	buf = append(buf, tagJSON)
	buf = binary.BigEndian.AppendUint32(buf, ev.Seq)
	return append(buf, data...), nil
}

// DecodeEvent parses what AppendEvent or AppendDelta wrote.
func DecodeEvent(data []byte) (Event, error) {
	if len(data) < EventHeaderLen {
		return Event{}, fmt.Errorf("event of %d bytes, shorter than its header", len(data))
	}
	seq, body := binary.BigEndian.Uint32(data[1:EventHeaderLen]), data[EventHeaderLen:]
	switch data[0] {
	case tagDelta:
		return Event{Type: EventDelta, Text: string(body), Seq: seq}, nil
	case tagJSON:
		var ev Event
		if err := json.Unmarshal(body, &ev); err != nil {
			return Event{}, fmt.Errorf("decoding event: %w", err)
		}
		ev.Seq = seq
		return ev, nil
	}
	return Event{}, fmt.Errorf("unknown event tag %q", data[0])
}

// NewID returns a random identifier of n bytes, hex-encoded.
func NewID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
