package activator

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/labstack/echo/v4"

	"github.com/infer-run/infer/internal/wire"
)

// POST /v1/embeddings: OpenAI's embeddings, through the same queue, fair
// shares, limits and runners as the completions. The runner answers with
// one embedding event per input (the vector as little-endian float32s)
// and a done event with the prompt tokens; embedReply assembles OpenAI's
// list from them.

// maxEmbedInputs is OpenAI's limit on inputs per request.
const maxEmbedInputs = 2048

// embeddingRequest is the body of POST /v1/embeddings; checkFields
// refuses the fields compatTable does not list for it.
type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat *string         `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
	User           string          `json:"user"`

	texts  []string
	tokens [][]int
	base64 bool
}

// decodeEmbeddingRequest parses and validates a body; every problem is a
// 400 naming the parameter.
func decodeEmbeddingRequest(body []byte) (*embeddingRequest, *apiError) {
	if !utf8.Valid(body) {
		return nil, errInvalid("", "request body is not valid UTF-8")
	}
	var req embeddingRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&req); err != nil {
		return nil, decodeError(err, "JSON body")
	}
	if dec.More() {
		return nil, errInvalid("", "could not parse the JSON body: trailing data after the object")
	}
	if e := checkFields(body, wire.KindEmbedding, false); e != nil {
		return nil, e
	}
	if req.Model == "" {
		return nil, errInvalid("model", "you must provide a model parameter")
	}
	if e := req.parseInput(); e != nil {
		return nil, e
	}
	if f := req.EncodingFormat; f != nil {
		switch *f {
		case "float":
		case "base64":
			req.base64 = true
		default:
			return nil, errInvalid("encoding_format", "encoding_format must be float or base64, not %q", *f)
		}
	}
	if d := req.Dimensions; d != nil && *d < 1 {
		return nil, errInvalid("dimensions", "dimensions must be at least 1")
	}
	return &req, nil
}

// parseInput reads input: a string, an array of strings, an array of
// token IDs, or an array of arrays of token IDs.
func (r *embeddingRequest) parseInput() *apiError {
	raw := bytes.TrimSpace(r.Input)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return errInvalid("input", "you must provide an input")
	}
	const shape = "input must be a string, an array of strings, an array of token IDs or an array of arrays of token IDs"
	if raw[0] == '"' {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return errInvalid("input", shape)
		}
		r.texts = []string{s}
	} else {
		var items []json.RawMessage
		if json.Unmarshal(raw, &items) != nil {
			return errInvalid("input", shape)
		}
		if len(items) == 0 {
			return errInvalid("input", "input must not be an empty array")
		}
		switch first := bytes.TrimSpace(items[0]); {
		case len(first) > 0 && first[0] == '"':
			if json.Unmarshal(raw, &r.texts) != nil {
				return errInvalid("input", "%s; an array's items must all be of one kind", shape)
			}
		case len(first) > 0 && first[0] == '[':
			if json.Unmarshal(raw, &r.tokens) != nil {
				return errInvalid("input", "%s; token IDs are non-negative integers", shape)
			}
		default:
			var one []int
			if json.Unmarshal(raw, &one) != nil {
				return errInvalid("input", "%s; token IDs are non-negative integers", shape)
			}
			r.tokens = [][]int{one}
		}
	}
	n := max(len(r.texts), len(r.tokens))
	if n > maxEmbedInputs {
		return errInvalid("input", "input has %d items; at most %d are allowed", n, maxEmbedInputs)
	}
	for i, s := range r.texts {
		if s == "" {
			return errInvalid("input", "input[%d] is empty; every input must have text", i)
		}
	}
	for i, t := range r.tokens {
		if len(t) == 0 {
			return errInvalid("input", "input[%d] is empty; every input must have tokens", i)
		}
		for _, id := range t {
			if id < 0 || id > math.MaxInt32 {
				return errInvalid("input", "input[%d] has token ID %d; token IDs are non-negative integers", i, id)
			}
		}
	}
	return nil
}

// embedPromptBound bounds an embedding job's tokens: a text's tokens are
// at most its bytes plus the BOS and EOS a tokenizer adds, and no input
// runs with more than the context.
func embedPromptBound(job wire.Job, ctxLen int) int {
	n := 0
	for _, s := range job.Inputs {
		n += min(len(s)+2, ctxLen)
	}
	for _, t := range job.InputTokens {
		n += min(len(t), ctxLen)
	}
	return n
}

func (s *Server) embeddings(c echo.Context) error {
	if s.shuttingDown() {
		return errShuttingDown(false)
	}
	key, err := s.authenticate(c)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, maxBody+1))
	if err != nil {
		return bodyReadError(err)
	}
	if len(body) > maxBody {
		return errStatus(http.StatusRequestEntityTooLarge, "invalid_request_error", "request_too_large", "request body is larger than %d bytes", maxBody)
	}
	req, apiErr := decodeEmbeddingRequest(body)
	if apiErr != nil {
		return apiErr
	}
	dep, err := s.allowedDeployment(c.Request().Context(), key, req.Model)
	if err != nil {
		return err
	}
	if err := s.admitKey(c, key, dep); err != nil {
		return err
	}
	job := wire.Job{Kind: wire.KindEmbedding, Inputs: req.texts, InputTokens: req.tokens}
	stamp(&job, "embd-"+wire.NewID(12), dep, key)
	if req.Dimensions != nil {
		job.Dimensions = *req.Dimensions
	}
	hold, apiErr := s.holdBudget(c.Request().Context(), key, dep, job)
	if apiErr != nil {
		s.metrics.requests.WithLabelValues(dep.Name, deref(apiErr.Code)).Inc()
		return apiErr
	}
	a := accepted{req: &completionRequest{}, dep: dep, key: key, job: job, hold: hold}
	return s.serveJob(c, wire.KindEmbedding, a, &embedReply{n: max(len(req.texts), len(req.tokens)), base64: req.base64})
}

// embedReply collects a request's vectors as the runner sends them.
type embedReply struct {
	n       int
	base64  bool
	vectors [][]byte
}

// add takes one embedding event; a nil reply (a completion) ignores it.
func (r *embedReply) add(e *wire.Embedding) {
	if r == nil || e == nil || e.Index < 0 || e.Index >= r.n {
		return
	}
	if r.vectors == nil {
		r.vectors = make([][]byte, r.n)
	}
	r.vectors[e.Index] = e.Vector
}

// reset drops what an earlier runner sent (the job was redelivered).
func (r *embedReply) reset() {
	if r != nil {
		r.vectors = nil
	}
}

// body is OpenAI's embeddings list. Floats are written as the shortest
// decimal that reads back as the same float32.
func (r *embedReply) body(model string, u wire.Usage) ([]byte, error) {
	b := make([]byte, 0, 64+r.n*64)
	b = append(b, `{"object":"list","data":[`...)
	for i := range r.n {
		var v []byte
		if i < len(r.vectors) {
			v = r.vectors[i]
		}
		if v == nil || len(v)%4 != 0 {
			return nil, fmt.Errorf("the runner sent no embedding for input %d; retry the request", i)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"object":"embedding","index":`...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, `,"embedding":`...)
		if r.base64 {
			b = append(b, '"')
			b = base64.StdEncoding.AppendEncode(b, v)
			b = append(b, '"')
		} else {
			b = append(b, '[')
			for j := 0; j < len(v); j += 4 {
				if j > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendFloat(b, float64(math.Float32frombits(binary.LittleEndian.Uint32(v[j:]))), 'g', -1, 32)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `],"model":`...)
	b = appendJSONString(b, model)
	b = append(b, `,"usage":{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(u.PromptTokens), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(u.PromptTokens), 10)
	b = append(b, "}}"...)
	return b, nil
}
