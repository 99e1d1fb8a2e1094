package activator

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/infer-run/infer/internal/wire"
)

// chunkEncoder writes OpenAI response objects. Stream chunks are built by
// appending to one reused buffer around a precomputed prefix: this runs once
// per relayed event and must not cost a reflection-based JSON encode.
type chunkEncoder struct {
	kind    wire.Kind
	id      string
	model   string
	created int64
	prefix  []byte // `data: {"id":…,"choices":[{"index":`
	buf     []byte
	// toolCalls are the reply's tool calls, for body (set from the done
	// event).
	toolCalls []wire.ToolCall
}

// open starts a chunk of choice i in buf.
func (e *chunkEncoder) open(buf []byte, i int) []byte {
	buf = append(buf, e.prefix...)
	buf = strconv.AppendInt(buf, int64(i), 10)
	return append(buf, ',')
}

func newChunkEncoder(kind wire.Kind, id, model string, created int64) chunkEncoder {
	object := "chat.completion.chunk"
	if kind == wire.KindCompletion {
		object = "text_completion"
	}
	p := []byte(`data: {"id":`)
	p = appendJSONString(p, id)
	p = append(p, `,"object":"`+object+`","created":`...)
	p = strconv.AppendInt(p, created, 10)
	p = append(p, `,"model":`...)
	p = appendJSONString(p, model)
	p = append(p, `,"system_fingerprint":null,"choices":[{"index":`...)
	return chunkEncoder{kind: kind, id: id, model: model, created: created, prefix: p, buf: make([]byte, 0, 512)}
}

// first is choice i's opening chunk: chat streams announce the assistant
// role.
func (e *chunkEncoder) first(i int) []byte {
	if e.kind == wire.KindCompletion {
		return nil
	}
	e.buf = e.open(e.buf[:0], i)
	e.buf = append(e.buf, `"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`+"\n\n"...)
	return e.buf
}

func (e *chunkEncoder) delta(i int, text string) []byte { return e.deltaWith(i, text, nil) }

// deltaWith is a delta chunk of choice i with its tokens' logprobs
// object, as JSON (nil: null).
func (e *chunkEncoder) deltaWith(i int, text string, logprobs []byte) []byte {
	e.buf = e.open(e.buf[:0], i)
	if e.kind == wire.KindCompletion {
		e.buf = append(e.buf, `"text":`...)
		e.buf = appendJSONString(e.buf, text)
		e.buf = append(e.buf, `,"logprobs":`...)
	} else {
		e.buf = append(e.buf, `"delta":{"content":`...)
		e.buf = appendJSONString(e.buf, text)
		e.buf = append(e.buf, `},"logprobs":`...)
	}
	if logprobs == nil {
		logprobs = []byte("null")
	}
	e.buf = append(e.buf, logprobs...)
	e.buf = append(e.buf, `,"finish_reason":null}]}`+"\n\n"...)
	return e.buf
}

func (e *chunkEncoder) finish(i int, reason string) []byte {
	e.buf = e.open(e.buf[:0], i)
	if e.kind == wire.KindCompletion {
		e.buf = append(e.buf, `"text":"","logprobs":null,"finish_reason":`...)
	} else {
		e.buf = append(e.buf, `"delta":{},"logprobs":null,"finish_reason":`...)
	}
	e.buf = appendJSONString(e.buf, reason)
	e.buf = append(e.buf, "}]}\n\n"...)
	return e.buf
}

// usage is the extra last chunk of stream_options.include_usage: empty
// choices and the request's usage.
func (e *chunkEncoder) usage(u wire.Usage) []byte {
	b, _ := json.Marshal(usageObject(u))
	e.buf = append(e.buf[:0], e.prefix[:len(e.prefix)-len(`{"index":`)]...)
	e.buf = append(e.buf, `],"usage":`...)
	e.buf = append(e.buf, b...)
	e.buf = append(e.buf, "}\n\n"...)
	return e.buf
}

type usageJSON struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func usageObject(u wire.Usage) usageJSON {
	return usageJSON{u.PromptTokens, u.CompletionTokens, u.PromptTokens + u.CompletionTokens}
}

// choiceOut is one choice of a whole response.
type choiceOut struct {
	text      string
	reason    string
	toolCalls []wire.ToolCall
	logprobs  any // its logprobs object (nil: null)
}

// body is the whole non-streaming response of one choice; logprobs is its
// logprobs object (nil: null).
func (e *chunkEncoder) body(text, reason string, u wire.Usage, logprobs any) []byte {
	return e.bodyOf([]choiceOut{{text: text, reason: reason, toolCalls: e.toolCalls, logprobs: logprobs}}, u)
}

// bodyOf is the whole non-streaming response of its choices, in index
// order.
func (e *chunkEncoder) bodyOf(choices []choiceOut, u wire.Usage) []byte {
	type message struct {
		Role      string         `json:"role"`
		Content   *string        `json:"content"`
		ToolCalls []toolCallJSON `json:"tool_calls,omitempty"`
	}
	type choice struct {
		Index        int      `json:"index"`
		Message      *message `json:"message,omitempty"`
		Text         *string  `json:"text,omitempty"`
		Logprobs     any      `json:"logprobs"`
		FinishReason string   `json:"finish_reason"`
	}
	resp := struct {
		ID                string    `json:"id"`
		Object            string    `json:"object"`
		Created           int64     `json:"created"`
		Model             string    `json:"model"`
		SystemFingerprint any       `json:"system_fingerprint"`
		Choices           []choice  `json:"choices"`
		Usage             usageJSON `json:"usage"`
	}{ID: e.id, Created: e.created, Model: e.model, Usage: usageObject(u), Choices: []choice{}}
	resp.Object = "chat.completion"
	if e.kind == wire.KindCompletion {
		resp.Object = "text_completion"
	}
	for i, c := range choices {
		ch := choice{Index: i, FinishReason: c.reason, Logprobs: c.logprobs}
		if e.kind == wire.KindCompletion {
			ch.Text = &c.text
		} else {
			ch.Message = &message{Role: "assistant", Content: &c.text}
			if len(c.toolCalls) > 0 {
				// A reply that only calls tools has no content (OpenAI:
				// null); text it wrote before its calls is its content.
				ch.Message.ToolCalls = toolCallsJSON(c.toolCalls)
				if c.text == "" {
					ch.Message.Content = nil
				}
			}
		}
		resp.Choices = append(resp.Choices, ch)
	}
	b, _ := json.Marshal(resp)
	return b
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		// U+2028 and U+2029 are valid JSON but break JavaScript parsers
		// that treat the stream as script; escape them as encoding/json does.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
