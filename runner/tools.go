package runner

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/wire"
)

// errToolChoice is a tool_choice the tools cannot honour (the activator
// checks it first; the runner trusts no queue).
var errToolChoice = errors.New("invalid tool_choice")

// toolCaller is the part of a choiceSink a toolSink finishes with calls.
type toolCaller interface {
	Sink
	setToolCalls([]wire.ToolCall)
	// callDeltas passes on pieces of calls being written (after the text
	// delivered before them).
	callDeltas([]wire.ToolCallDelta)
}

// toolSink sits between the engine and the reply sink of a chat with
// tools. It reads the reply as it comes (chat.ToolStream): text before a
// tool call streams as content, a call streams as its ID and name once
// its name is written, then its arguments in pieces, and the reply ends
// with "tool_calls" when the calls parse whole. A reply that only looked
// like a call is sent as the text it is, at the end (the pieces of a call
// already streamed then stay the client's: they came from a reply that
// broke off its call, which a client sees in finish_reason "stop").
type toolSink struct {
	next   toolCaller
	format chat.ToolFormat
	// forced: the grammar makes the whole reply a call.
	forced bool
	single bool
	stream *chat.ToolStream
	ids    []string // the calls' IDs, as announced
}

func (s *toolSink) Start(promptTokens int) { s.next.Start(promptTokens) }

// Logprob passes a token's logprob on (a job may ask for logprobs and
// offer tools): the reply sink sends those of text it delivers, so a
// reply's tool call carries none.
func (s *toolSink) Logprob(lp wire.TokenLogprob) {
	if l, ok := s.next.(LogprobSink); ok {
		l.Logprob(lp)
	}
}

func (s *toolSink) Deliver(text []byte) {
	if s.stream == nil {
		s.stream = s.format.Stream(s.forced)
	}
	content, deltas := s.stream.Feed(string(text))
	if content != "" {
		s.next.Deliver([]byte(content))
	}
	var out []wire.ToolCallDelta
	for _, d := range deltas {
		if s.single && d.Index > 0 {
			continue // parallel_tool_calls: false
		}
		w := wire.ToolCallDelta{Index: d.Index, Name: d.Name, Arguments: d.Arguments}
		if d.Name != "" {
			w.ID = newCallID()
			s.ids = append(s.ids, w.ID)
		}
		out = append(out, w)
	}
	if len(out) > 0 {
		s.next.callDeltas(out)
	}
}

func newCallID() string { return "call_" + rand.Text()[:24] }

func (s *toolSink) Finish(reason string, u wire.Usage, err error) {
	if err == nil && reason != "cancelled" && s.stream != nil {
		content, calls, ok := s.stream.Close()
		if ok {
			if s.single {
				calls = calls[:1] // parallel_tool_calls: false
			}
			for i := range calls {
				if i < len(s.ids) {
					calls[i].ID = s.ids[i]
				} else {
					calls[i].ID = newCallID()
				}
			}
			s.next.setToolCalls(calls)
			s.next.Finish("tool_calls", u, nil)
			return
		}
		if content != "" {
			s.next.Deliver([]byte(content))
		}
	}
	s.next.Finish(reason, u, err)
}

// toolRequest prepares a chat with tools: the tools the template shows,
// and for a required call the schema the reply is constrained to. It
// returns the sinks to run the request's completions with.
func (p *prompter) toolRequest(job wire.Job, req *Request, sinks []*choiceSink) ([]Sink, error) {
	out := make([]Sink, len(sinks))
	for i, s := range sinks {
		out[i] = s
	}
	choice := wire.ToolChoice{Mode: "auto"}
	if job.ToolChoice != nil {
		choice = *job.ToolChoice
	}
	if len(job.Tools) == 0 || choice.Mode == "none" {
		return out, nil
	}
	forced := false
	if choice.Mode == "required" || choice.Mode == "function" {
		schema, err := chat.ForcedFormat().Schema(job.Tools, choice)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errToolChoice, err)
		}
		req.Sampling.JSONSchema = json.RawMessage(schema)
		forced = true
	}
	format := chat.ToolFormatFor(p.name, p.source)
	for i, s := range sinks {
		out[i] = &toolSink{next: s, format: format, single: choice.Single, forced: forced}
	}
	return out, nil
}
