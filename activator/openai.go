package activator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/infer-run/infer/internal/jsonschema"
	"github.com/infer-run/infer/internal/wire"
)

// apiError is an error in OpenAI's shape with the HTTP status it travels
// with. Every failure the activator reports is one of these, so SDKs raise
// their typed errors.
type apiError struct {
	Status  int     `json:"-"`
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
	// RetryAfter, in seconds, is sent as a Retry-After header.
	RetryAfter int `json:"-"`
}

func (e *apiError) Error() string { return e.Message }

func strp(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func errInvalid(param, format string, args ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: strp(param), Message: fmt.Sprintf(format, args...)}
}

func errStatus(status int, typ, code, format string, args ...any) *apiError {
	return &apiError{Status: status, Type: typ, Code: strp(code), Message: fmt.Sprintf(format, args...)}
}

// fromWire turns a runner's error into an API error.
func fromWire(e *wire.Error) *apiError {
	status := e.Status
	if status == 0 {
		status = http.StatusInternalServerError
	}
	typ := "server_error"
	if status < 500 {
		typ = "invalid_request_error"
	}
	return &apiError{Status: status, Type: typ, Param: strp(e.Param), Code: strp(e.Code), Message: redactPaths(e.Message)}
}

// contentPartsOnlyText is the message of a 400 for a non-text content part.
const contentPartsOnlyText = "only text content parts are supported"

// parseContent reads a message's content: a string, or (as the SDKs send
// for multi-part messages) an array of text parts, which are joined. Other
// parts (images, audio, files) are refused rather than silently dropped:
// the model would answer a question it never saw.
func parseContent(b json.RawMessage) (string, error) {
	if len(b) == 0 || bytes.Equal(b, []byte("null")) {
		return "", nil // an assistant turn that only called tools
	}
	if b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return "", err
		}
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return "", errors.New("content must be a string or an array of content parts")
	}
	var sb strings.Builder
	for j, p := range parts {
		if p.Type != "text" {
			return "", fmt.Errorf("content part %d has type %q: %s", j, p.Type, contentPartsOnlyText)
		}
		sb.WriteString(p.Text)
	}
	return sb.String(), nil
}

// stopField is OpenAI's stop: a string or an array of strings.
type stopField []string

func (s *stopField) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*s = nil
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = stopField{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("stop must be a string or an array of strings")
	}
	*s = many
	return nil
}

// promptField is the completions prompt: a string or an array holding one.
type promptField string

func (p *promptField) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*p = promptField(s)
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("prompt must be a string or an array of one string")
	}
	if len(many) != 1 {
		return errors.New("prompt arrays must hold exactly one string (batched prompts are not supported)")
	}
	*p = promptField(many[0])
	return nil
}

// completionRequest holds the fields of both /v1/chat/completions and
// /v1/completions; unknown fields are ignored, as OpenAI's API does.
type completionRequest struct {
	toolFields
	Model    string `json:"model"`
	Messages []struct {
		Role       string          `json:"role"`
		Content    json.RawMessage `json:"content"`
		ToolCalls  []toolCallParam `json:"tool_calls"`
		ToolCallID string          `json:"tool_call_id"`
		// text is Content as parsed by decodeRequest.
		text string
	} `json:"messages"`
	Prompt              *promptField `json:"prompt"`
	MaxTokens           *int         `json:"max_tokens"`
	MaxCompletionTokens *int         `json:"max_completion_tokens"`
	Temperature         *float64     `json:"temperature"`
	TopP                *float64     `json:"top_p"`
	TopK                *int         `json:"top_k"`
	MinP                *float64     `json:"min_p"`
	N                   *int         `json:"n"`
	Stop                stopField    `json:"stop"`
	Seed                *int64       `json:"seed"`
	PresencePenalty     *float64     `json:"presence_penalty"`
	FrequencyPenalty    *float64     `json:"frequency_penalty"`
	RepeatPenalty       *float64     `json:"repeat_penalty"`
	Stream              bool         `json:"stream"`
	StreamOptions       *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	User string `json:"user"`
	// Webhook is an infer extension for the async endpoints: a URL that
	// receives the finished job once. The sync endpoints ignore it.
	Webhook        *string `json:"webhook"`
	ResponseFormat *struct {
		Type       string `json:"type"`
		JSONSchema *struct {
			Name   string          `json:"name"`
			Schema json.RawMessage `json:"schema"`
		} `json:"json_schema"`
	} `json:"response_format"`
}

// maxTokensLimit bounds max_tokens before the runner checks it against the
// model's context.
const maxTokensLimit = 1 << 20

// decodeRequest parses and validates a request body. Every problem is a 400
// naming the offending parameter.
func decodeRequest(body []byte, kind wire.Kind) (*completionRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errInvalid("", "request body is not valid UTF-8")
	}
	var req completionRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return nil, decodeError(err, "JSON body") // in JSON's words, not Go's
	}
	if dec.More() {
		return nil, errInvalid("", "could not parse the JSON body: trailing data after the object")
	}
	if req.Model == "" {
		return nil, errInvalid("model", "you must provide a model parameter")
	}
	switch kind {
	case wire.KindChat:
		if len(req.Messages) == 0 {
			return nil, errInvalid("messages", "messages must be a non-empty array")
		}
		for i, m := range req.Messages {
			switch m.Role {
			case "system", "developer", "user", "assistant", "tool":
			default:
				return nil, errInvalid(fmt.Sprintf("messages[%d].role", i), "invalid role %q: expected system, developer, user, assistant or tool", m.Role)
			}
			text, err := parseContent(m.Content)
			if err != nil {
				param := fmt.Sprintf("messages[%d].content", i)
				return nil, errInvalid(param, "invalid %s: %v", param, err)
			}
			req.Messages[i].text = text
		}
	case wire.KindCompletion:
		if req.Prompt == nil {
			return nil, errInvalid("prompt", "you must provide a prompt")
		}
	}
	if err := req.checkTools(kind); err != nil {
		return nil, err
	}
	if req.N != nil && *req.N != 1 {
		return nil, errInvalid("n", "only n=1 is supported")
	}
	for _, f := range []struct {
		name string
		v    *int
	}{{"max_tokens", req.MaxTokens}, {"max_completion_tokens", req.MaxCompletionTokens}} {
		if f.v != nil && (*f.v < 1 || *f.v > maxTokensLimit) {
			return nil, errInvalid(f.name, "%s must be between 1 and %d", f.name, maxTokensLimit)
		}
	}
	if req.MaxCompletionTokens != nil {
		// OpenAI's newer name for max_tokens; it wins when both are sent.
		req.MaxTokens = req.MaxCompletionTokens
	}
	checks := []struct {
		name     string
		v        *float64
		min, max float64
	}{
		{"temperature", req.Temperature, 0, 2},
		{"top_p", req.TopP, 0, 1},
		{"min_p", req.MinP, 0, 1},
		{"presence_penalty", req.PresencePenalty, -2, 2},
		{"frequency_penalty", req.FrequencyPenalty, -2, 2},
		{"repeat_penalty", req.RepeatPenalty, 0, 10},
	}
	for _, c := range checks {
		if c.v != nil && (math.IsNaN(*c.v) || *c.v < c.min || *c.v > c.max) {
			return nil, errInvalid(c.name, "%s must be between %g and %g", c.name, c.min, c.max)
		}
	}
	if req.TopK != nil && *req.TopK < 0 {
		return nil, errInvalid("top_k", "top_k must not be negative")
	}
	if len(req.Stop) > 4 {
		return nil, errInvalid("stop", "at most 4 stop sequences are allowed")
	}
	if rf := req.ResponseFormat; rf != nil {
		switch rf.Type {
		case "text", "json_object":
		case "json_schema":
			if rf.JSONSchema == nil || len(rf.JSONSchema.Schema) == 0 {
				return nil, errInvalid("response_format.json_schema", "json_schema response format needs a schema")
			}
			// The runner converts the schema again (it trusts no queue),
			// but a bad one is refused here, before it is queued: one
			// pure-Go converter, bounded to well under 100 ms a schema.
			if err := jsonschema.Validate(rf.JSONSchema.Schema); err != nil {
				return nil, &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: strp("response_format"),
					Code: strp("invalid_schema"), Message: "invalid response_format: " + err.Error()}
			}
		default:
			return nil, errInvalid("response_format.type", "unsupported response_format type %q", rf.Type)
		}
	}
	return &req, nil
}

// job turns a validated request into the queued job, minus routing fields.
func (r *completionRequest) job(kind wire.Kind) wire.Job {
	j := wire.Job{Kind: kind, Stop: r.Stop}
	if r.MaxTokens != nil {
		j.MaxTokens = *r.MaxTokens
	}
	if kind == wire.KindChat {
		j.Messages = make([]wire.Message, len(r.Messages))
		for i, m := range r.Messages {
			role := m.Role
			if role == "developer" {
				role = "system" // OpenAI's newer name for the same thing
			}
			j.Messages[i] = wire.Message{Role: role, Content: m.text, ToolCalls: wireToolCalls(m.ToolCalls), ToolCallID: m.ToolCallID}
		}
		j.Tools, j.ToolChoice = r.wireTools(), r.choice
	} else {
		j.Prompt = string(*r.Prompt)
	}
	s := &j.Sampling
	s.Temperature = f32(r.Temperature)
	s.TopP = f32(r.TopP)
	s.MinP = f32(r.MinP)
	s.PresencePenalty = f32(r.PresencePenalty)
	s.FrequencyPenalty = f32(r.FrequencyPenalty)
	s.RepeatPenalty = f32(r.RepeatPenalty)
	s.TopK = r.TopK
	s.Seed = r.Seed
	if rf := r.ResponseFormat; rf != nil {
		switch rf.Type {
		case "json_object":
			s.JSONSchema = json.RawMessage(`{"type":"object"}`)
		case "json_schema":
			s.JSONSchema = rf.JSONSchema.Schema
		}
	}
	return j
}

func f32(p *float64) *float32 {
	if p == nil {
		return nil
	}
	v := float32(*p)
	return &v
}
