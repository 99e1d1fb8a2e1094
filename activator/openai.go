package activator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
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
// /v1/completions that infer honours; checkFields refuses the others and
// unknown ones (compat.go).
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
	Stop                stopField    `json:"stop"`
	Seed                *int64       `json:"seed"`
	PresencePenalty     *float64     `json:"presence_penalty"`
	FrequencyPenalty    *float64     `json:"frequency_penalty"`
	RepeatPenalty       *float64     `json:"repeat_penalty"`
	RepetitionPenalty   *float64     `json:"repetition_penalty"`
	// Logprobs is true or false for chat, an integer 0 to 5 for
	// completions; decodeRequest reads it into logprobs and topLogprobs.
	Logprobs      json.RawMessage    `json:"logprobs"`
	TopLogprobs   *int               `json:"top_logprobs"`
	LogitBias     map[string]float64 `json:"logit_bias"`
	Echo          *bool              `json:"echo"`
	N             *int               `json:"n"`
	BestOf        *int               `json:"best_of"`
	Suffix        *string            `json:"suffix"`
	Stream        bool               `json:"stream"`
	StreamOptions *struct {
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

	logprobs    bool
	topLogprobs int
	logitBias   map[int32]float32
}

// maxTokensLimit bounds max_tokens before the runner checks it against the
// model's context.
const maxTokensLimit = 1 << 20

// decodeRequest parses and validates a request body. Every problem is a 400
// naming the offending parameter.
// async says the request came to an async endpoint.
func decodeRequest(body []byte, kind wire.Kind, async bool) (*completionRequest, *apiError) {
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
	if e := checkFields(body, kind, async); e != nil {
		return nil, e
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
	if e := req.decodeLogprobs(kind, async); e != nil {
		return nil, e
	}
	if e := req.decodeLogitBias(); e != nil {
		return nil, e
	}
	if req.RepetitionPenalty != nil {
		if req.RepeatPenalty != nil {
			return nil, errInvalid("repetition_penalty", "repetition_penalty and repeat_penalty are two names for one setting; send one")
		}
		if v := *req.RepetitionPenalty; math.IsNaN(v) || v < 0 || v > 10 {
			return nil, errInvalid("repetition_penalty", "repetition_penalty must be between 0 and 10")
		}
		req.RepeatPenalty = req.RepetitionPenalty
	}
	if req.Echo != nil && *req.Echo {
		switch {
		case async:
			return nil, unsupported("echo", "echo is not supported on the async endpoints")
		case req.logprobs:
			return nil, unsupported("echo", "echo with logprobs is not supported: infer has no logprobs for prompt tokens")
		}
	}
	if e := req.checkN(); e != nil {
		return nil, e
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
		if r.Suffix != nil {
			j.Suffix = *r.Suffix
		}
	}
	if r.N != nil && *r.N > 1 {
		j.N = *r.N
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
	s.LogitBias = r.logitBias
	j.Logprobs, j.TopLogprobs = r.logprobs, r.topLogprobs
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

// maxTopLogprobs is OpenAI's limit for chat's top_logprobs; completions'
// logprobs stop at maxLegacyLogprobs.
const (
	maxTopLogprobs    = 20
	maxLegacyLogprobs = 5
)

// decodeLogprobs reads logprobs and top_logprobs as the endpoint spells
// them.
func (r *completionRequest) decodeLogprobs(kind wire.Kind, async bool) *apiError {
	raw := bytes.TrimSpace(r.Logprobs)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		raw = nil
	}
	if kind == wire.KindCompletion {
		if raw != nil {
			var n int
			if json.Unmarshal(raw, &n) != nil || n < 0 || n > maxLegacyLogprobs {
				return errInvalid("logprobs", "logprobs must be an integer between 0 and %d: the number of likeliest tokens to list at each position", maxLegacyLogprobs)
			}
			r.logprobs, r.topLogprobs = true, n
		}
	} else {
		if raw != nil && json.Unmarshal(raw, &r.logprobs) != nil {
			return errInvalid("logprobs", "logprobs must be true or false")
		}
		if r.TopLogprobs != nil {
			if *r.TopLogprobs < 0 || *r.TopLogprobs > maxTopLogprobs {
				return errInvalid("top_logprobs", "top_logprobs must be between 0 and %d", maxTopLogprobs)
			}
			if !r.logprobs && *r.TopLogprobs > 0 {
				return errInvalid("top_logprobs", "top_logprobs needs logprobs: true")
			}
			r.topLogprobs = *r.TopLogprobs
		}
	}
	return nil
}

// maxLogitBias bounds logit_bias's entries (OpenAI allows 300).
const maxLogitBias = 1024

// decodeLogitBias reads logit_bias: token IDs (as JSON object keys) to
// biases from -100 to 100. Whether an ID is in the model's vocabulary
// only the runner knows; it refuses one that is not, naming logit_bias.
func (r *completionRequest) decodeLogitBias() *apiError {
	if len(r.LogitBias) == 0 {
		return nil
	}
	if len(r.LogitBias) > maxLogitBias {
		return errInvalid("logit_bias", "logit_bias has %d entries; at most %d are allowed", len(r.LogitBias), maxLogitBias)
	}
	r.logitBias = make(map[int32]float32, len(r.LogitBias))
	for k, v := range r.LogitBias {
		id, err := strconv.ParseInt(k, 10, 32)
		if err != nil || id < 0 {
			return errInvalid("logit_bias", "logit_bias keys must be token IDs (non-negative integers), not %q", k)
		}
		if math.IsNaN(v) || v < -100 || v > 100 {
			return errInvalid("logit_bias", "the bias of token %d must be between -100 and 100", id)
		}
		r.logitBias[int32(id)] = float32(v)
	}
	return nil
}

// maxN bounds n: each completion takes one of a runner's sequences, and
// accept also keeps n within the deployment's parallel sequences, so
// that all of them decode together, sharing the prompt's KV cells.
const maxN = 16

// checkN validates n and best_of. best_of asks for the best n of more
// completions, judged by their log probability, which infer does not
// rank: it is taken only as n (or unset).
func (r *completionRequest) checkN() *apiError {
	n := 1
	if r.N != nil {
		n = *r.N
		if n < 1 || n > maxN {
			return errInvalid("n", "n must be between 1 and %d", maxN)
		}
	}
	if r.BestOf != nil && *r.BestOf != n {
		e := unsupported("best_of", "best_of=%d is not supported by infer: best_of must equal n (%d); ranking more completions than are returned is not supported", *r.BestOf, n)
		e.Code = strp("unsupported_value")
		return e
	}
	return nil
}

// choices is the number of completions a request asks for.
func (r *completionRequest) choices() int {
	if r.N == nil || *r.N < 1 {
		return 1
	}
	return *r.N
}
