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

// toolCaller is the part of replySink a toolSink finishes with calls.
type toolCaller interface {
	Sink
	setToolCalls([]wire.ToolCall)
}

// toolSink sits between the engine and the reply sink of a chat with
// tools. A reply that starts as the model's format starts a tool call is
// held back, and parsed when it ends: well-formed calls finish the reply
// with "tool_calls", anything else is sent as the text it is. Other
// replies stream as usual; only the opener's few bytes wait.
type toolSink struct {
	next   toolCaller
	format chat.ToolFormat
	// forced: the grammar makes the whole reply a call.
	forced  bool
	single  bool
	held    []byte
	holding bool // the reply is a tool call so far
	decided bool
}

func (s *toolSink) Start(promptTokens int) { s.next.Start(promptTokens) }

// Logprob passes a token's logprob on (a job may ask for logprobs and
// offer tools): the reply sink sends those of text it delivers, so a
// reply that became a tool call carries none.
func (s *toolSink) Logprob(lp wire.TokenLogprob) {
	if l, ok := s.next.(LogprobSink); ok {
		l.Logprob(lp)
	}
}

func (s *toolSink) Deliver(text []byte) {
	if s.decided && !s.holding {
		s.next.Deliver(text)
		return
	}
	s.held = append(s.held, text...)
	if s.decided || s.forced {
		return
	}
	calls, known := s.format.Starts(string(s.held))
	if !known {
		return
	}
	s.decided, s.holding = true, calls
	if !calls {
		s.next.Deliver(s.held)
		s.held = nil
	}
}

func (s *toolSink) Finish(reason string, u wire.Usage, err error) {
	if err == nil && reason != "cancelled" && len(s.held) > 0 {
		format := s.format
		if s.forced {
			format = chat.ForcedFormat()
		}
		if calls, perr := format.Parse(string(s.held)); perr == nil {
			if s.single {
				calls = calls[:1] // parallel_tool_calls: false
			}
			for i := range calls {
				calls[i].ID = "call_" + rand.Text()[:24]
			}
			s.next.setToolCalls(calls)
			s.next.Finish("tool_calls", u, nil)
			return
		}
		s.next.Deliver(s.held)
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
