package chat

import (
	"encoding/json"
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// ToolStream reads a reply as the model writes it, for a chat with tools
// in auto mode (and a required call's grammar-bound reply): text before a
// tool call passes as content, the call's opener and the call do not, and
// each call is announced as soon as its name is complete (CallDelta with
// Name) and its arguments follow in pieces as they are written, compacted
// as Parse compacts them, so the pieces add up to the arguments Close
// returns. A call may come after text ("Let me check. <tool_call>{...}"):
// mid-reply, the family's marker opens it (<tool_call>, [TOOL_CALLS]; for
// Llama 3's bare JSON, {"name"), and at the start of a reply the opener
// alone.
type ToolStream struct {
	f       ToolFormat
	buf     string // held: a possible opener's start, or the call(s) from the opener on
	inCall  bool
	started bool // content other than whitespace was passed on
	// sent is, per call announced, the arguments passed on so far.
	sent []string
}

// CallDelta is a piece of a streamed tool call: its first carries the
// call's Name, later ones pieces of its Arguments.
type CallDelta struct {
	Index     int
	Name      string
	Arguments string
}

// Stream starts reading a reply in the format; forced says a grammar makes
// the whole reply one call (ForcedFormat's bare JSON).
func (f ToolFormat) Stream(forced bool) *ToolStream {
	if forced {
		return &ToolStream{f: ForcedFormat(), inCall: true}
	}
	return &ToolStream{f: f}
}

// midOpener is what opens a call after text.
func (f ToolFormat) midOpener() string {
	if f.family == Llama3 {
		return `{"name"`
	}
	return f.Opener
}

// Feed takes the next text of the reply and returns the content to pass
// on and the calls' new pieces.
func (t *ToolStream) Feed(text string) (content string, deltas []CallDelta) {
	t.buf += text
	if !t.inCall {
		content = t.findOpener()
	}
	if t.inCall {
		deltas = t.calls()
	}
	return content, deltas
}

// findOpener passes on the text before an opener, holding a possible
// opener's start.
func (t *ToolStream) findOpener() (content string) {
	if !t.started {
		p := strings.TrimLeft(t.buf, " \t\r\n")
		switch {
		case p == "" || strings.HasPrefix(t.f.Opener, p):
			return "" // not known yet
		case strings.HasPrefix(p, t.f.Opener):
			t.inCall = true
			t.buf = p
			return ""
		}
	}
	mid := t.f.midOpener()
	if i := strings.Index(t.buf, mid); i >= 0 {
		content, t.buf, t.inCall = t.buf[:i], t.buf[i:], true
		t.started = t.started || strings.TrimSpace(content) != ""
		return content
	}
	keep := 0 // the longest end of buf that may begin the opener
	for n := min(len(mid)-1, len(t.buf)); n > 0; n-- {
		if strings.HasPrefix(mid, t.buf[len(t.buf)-n:]) {
			keep = n
			break
		}
	}
	content, t.buf = t.buf[:len(t.buf)-keep], t.buf[len(t.buf)-keep:]
	t.started = t.started || strings.TrimSpace(content) != ""
	return content
}

// calls scans what is held for the calls written so far and returns what
// was not passed on of them.
func (t *ToolStream) calls() []CallDelta {
	var out []CallDelta
	for i, c := range t.f.scan(t.buf) {
		if !c.named {
			break // its name may be written after its arguments
		}
		if i == len(t.sent) {
			out = append(out, CallDelta{Index: i, Name: c.name})
			t.sent = append(t.sent, "")
		}
		args := compactPrefix(c.args)
		if c.done && args == "" {
			args = "{}" // as Parse has a call without arguments
		}
		if len(args) > len(t.sent[i]) && strings.HasPrefix(args, t.sent[i]) {
			out = append(out, CallDelta{Index: i, Arguments: args[len(t.sent[i]):]})
			t.sent[i] = args
		}
	}
	return out
}

// Close ends the reply: the calls it made, if what was held parses as
// calls (ok), else the held text as content.
func (t *ToolStream) Close() (content string, calls []wire.ToolCall, ok bool) {
	if !t.inCall {
		return t.buf, nil, false
	}
	calls, err := t.f.Parse(t.buf)
	if err != nil {
		return t.buf, nil, false
	}
	return "", calls, true
}

// partialCall is a call object as far as it is written.
type partialCall struct {
	name  string
	named bool
	args  string // its arguments' JSON text so far
	done  bool   // the object is whole
}

// scan reads the call objects in what follows an opener, the last
// perhaps unfinished.
func (f ToolFormat) scan(s string) []partialCall {
	var out []partialCall
	switch f.family {
	case Llama2:
		rest, ok := strings.CutPrefix(strings.TrimLeft(s, " \t\r\n"), "[TOOL_CALLS]")
		if !ok {
			return nil
		}
		s = strings.TrimLeft(rest, " \t\r\n")
		if !strings.HasPrefix(s, "[") {
			return nil
		}
		s = s[1:]
	}
	for {
		// Separators between calls.
		for {
			s = strings.TrimLeft(s, " \t\r\n;,")
			var cut bool
			switch f.family {
			case ChatML:
				if s, cut = strings.CutPrefix(s, "<tool_call>"); !cut {
					s, cut = strings.CutPrefix(s, "</tool_call>")
				}
			}
			if !cut {
				break
			}
		}
		if !strings.HasPrefix(s, "{") {
			return out
		}
		c, n, done := scanCall(s)
		c.done = done
		out = append(out, c)
		if !done {
			return out
		}
		s = s[n:]
	}
}

// scanCall reads a call object at the start of s: its name, once whole,
// and its arguments as far as they are written; done when the object is
// whole, n its length.
func scanCall(s string) (c partialCall, n int, done bool) {
	i := 1
	for {
		i = skipSpace(s, i)
		if i >= len(s) {
			return c, 0, false
		}
		switch s[i] {
		case '}':
			return c, i + 1, true
		case ',':
			i++
			continue
		}
		kend, ok := skipValue(s, i)
		if !ok || s[i] != '"' {
			return c, 0, false
		}
		var key string
		if json.Unmarshal([]byte(s[i:kend]), &key) != nil {
			return c, 0, false
		}
		i = skipSpace(s, kend)
		if i >= len(s) || s[i] != ':' {
			return c, 0, false
		}
		i = skipSpace(s, i+1)
		if i >= len(s) {
			return c, 0, false
		}
		vend, ok := skipValue(s, i)
		switch key {
		case "name":
			if ok && json.Unmarshal([]byte(s[i:vend]), &c.name) == nil {
				c.named = true
			}
		case "arguments", "parameters":
			if s[i] == '{' {
				c.args = s[i:vend]
			}
		}
		if !ok {
			return c, 0, false
		}
		i = vend
	}
}

func skipSpace(s string, i int) int {
	for i < len(s) && strings.IndexByte(" \t\r\n", s[i]) >= 0 {
		i++
	}
	return i
}

// skipValue finds the end of the JSON value at s[i]; ok is false when s
// ends first (end is then len(s)).
func skipValue(s string, i int) (end int, ok bool) {
	depth, inStr, esc := 0, false, false
	for j := i; j < len(s); j++ {
		c := s[j]
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
				if depth == 0 {
					return j + 1, true
				}
			}
		case c == '"':
			inStr = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth <= 0 {
				return j + 1, depth == 0
			}
		case depth == 0 && strings.IndexByte(", \t\r\n", c) >= 0:
			return j, j > i
		}
	}
	return len(s), false
}

// compactPrefix is json.Compact of a JSON text's beginning: whitespace
// outside strings dropped. Compacting more of the text only appends.
func compactPrefix(s string) string {
	var b strings.Builder
	inStr, esc := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
		case c == '"':
			inStr = true
		case strings.IndexByte(" \t\r\n", c) >= 0:
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
