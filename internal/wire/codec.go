package wire

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Events travel as one tag byte and a body. Deltas, which are nearly all of
// the traffic, carry their text raw: no JSON encoding or escaping per token.
const (
	tagDelta = 'd'
	tagJSON  = 'j'
)

// AppendDelta appends a delta event carrying text to buf.
func AppendDelta(buf, text []byte) []byte {
	buf = append(buf, tagDelta)
	return append(buf, text...)
}

// AppendEvent appends any event to buf.
func AppendEvent(buf []byte, ev *Event) ([]byte, error) {
	if ev.Type == EventDelta {
		return AppendDelta(buf, []byte(ev.Text)), nil
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return buf, fmt.Errorf("encoding %s event: %w", ev.Type, err)
	}
	buf = append(buf, tagJSON)
	return append(buf, data...), nil
}

// DecodeEvent parses what AppendEvent or AppendDelta wrote.
func DecodeEvent(data []byte) (Event, error) {
	if len(data) == 0 {
		return Event{}, errors.New("empty event")
	}
	switch data[0] {
	case tagDelta:
		return Event{Type: EventDelta, Text: string(data[1:])}, nil
	case tagJSON:
		var ev Event
		if err := json.Unmarshal(data[1:], &ev); err != nil {
			return Event{}, fmt.Errorf("decoding event: %w", err)
		}
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
