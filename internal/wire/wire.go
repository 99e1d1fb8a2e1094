// Package wire defines what the activator, the control plane and the runners
// say to each other over NATS: subject and stream names, the queued Job, the
// Events a runner streams back for one job, runner heartbeats and usage
// records. Keeping it in one place keeps the request path readable: every
// message that crosses a process boundary is declared here.
package wire

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Subjects and streams are keyed by a deployment's ID, never by its name.
// A name is only unique within its tenant and is reused when a deployment
// is deleted and created again (by the same tenant or another one); the ID
// is assigned once and never reused, so a runner of a deleted deployment
// can never take the jobs, heartbeats or usage of a later one with the same
// name. IDs are "dep_" and lower-case base32 ([a-z2-7]), safe as subject
// tokens and stream-name suffixes (ValidKey checks a key from outside).
// Names still travel in jobs, heartbeats and records, for logs and display.
const (
	// RequestConsumer is the durable pull consumer all runners of a
	// deployment share; JetStream hands each job to exactly one of them.
	RequestConsumer = "runners"

	// UsageStream holds one usage record per finished request until the
	// recorder has written it to Postgres (a Postgres outage delays billing
	// and loses nothing).
	UsageStream   = "INFER_USAGE"
	usageSubjects = "infer.usage.>"

	// HeartbeatSubjects is what the control plane subscribes to.
	HeartbeatSubjects = "infer.runner.>"
	// WorkSubjects carries the activator's "work arrived" pokes, so a
	// deployment at zero scales up at once instead of at the next tick.
	WorkSubjects = "infer.work.>"
)

// Async jobs. A runner sends an async job's events to AsyncEventSubject,
// which AsyncStream keeps, instead of to one activator's inbox: any
// activator then folds them into the job's record in the AsyncBucket
// key-value bucket, so a job outlives the activator that accepted it.
const (
	AsyncStream = "INFER_ASYNC_EVENTS"
	// AsyncConsumer is the durable consumer all activators share to fold
	// async job events; JetStream hands each event to one of them.
	AsyncConsumer = "activators"
	// AsyncBucket holds one record per async job, kept for the async TTL.
	AsyncBucket   = "INFER_ASYNC"
	asyncSubjects = "infer.async.events.>"
)

// AsyncEventSubject is where runners send an async job's events.
func AsyncEventSubject(jobID string) string { return "infer.async.events." + jobID }

// AsyncSubjects lists the subjects of AsyncStream.
func AsyncSubjects() []string { return []string{asyncSubjects} }

// ValidKey reports whether a deployment key (its ID) is safe as a NATS
// subject token and a stream-name suffix: non-empty, at most 64 bytes, and
// only [a-z0-9_-]. The registry's IDs always are; a runner checks the key
// it was started with, so a mistyped flag cannot subscribe to a wildcard.
func ValidKey(key string) bool {
	if key == "" || len(key) > 64 {
		return false
	}
	for _, c := range []byte(key) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// RequestStream is the JetStream stream that queues one deployment's jobs,
// by the deployment's ID.
func RequestStream(deploymentID string) string { return "INFER_REQ_" + deploymentID }

// RequestSubject is the subject jobs for a deployment are published on.
func RequestSubject(deploymentID string) string { return "infer.req." + deploymentID }

// WorkSubject is where the activator pokes the control plane; the last
// token is the deployment's ID.
func WorkSubject(deploymentID string) string { return "infer.work." + deploymentID }

// WorkDeployment is the deployment ID a WorkSubject names.
func WorkDeployment(subject string) string { return strings.TrimPrefix(subject, "infer.work.") }

// HeartbeatSubject is where a runner reports its state.
func HeartbeatSubject(deploymentID, runnerID string) string {
	return "infer.runner." + deploymentID + "." + runnerID
}

// CancelSubject is where the activator announces that a client went away.
func CancelSubject(deploymentID string) string { return "infer.cancel." + deploymentID }

// A runner asks the reply subject of each job it streams whether anyone
// still waits, by sending a core NATS request with PingHeader set. The
// activator holding the request answers PingAlive, or PingGone when it no
// longer does; NATS itself answers "no responders" when no activator
// subscribes to the subject any more (it crashed or restarted). Either
// way the runner stops generating for nobody. PingSuperseded says another
// runner owns the job (it was redelivered while this runner was frozen):
// the runner stops and bills nothing, the owner does.
const (
	PingHeader     = "Infer-Ping"
	PingAlive      = "alive"
	PingGone       = "gone"
	PingSuperseded = "superseded"
)

// RunnerReplySubject is where a runner sends a sync job's events and
// pings: the job's ReplyTo with the runner's ID as one more token, so the
// activator knows which runner each event comes from.
func RunnerReplySubject(replyTo, runnerID string) string { return replyTo + "." + runnerID }

// ResendSubject is where a runner takes requests to send a sync job's
// events again: core NATS drops what is published while a side
// reconnects, and the activator, seeing a gap in a job's sequence
// numbers, asks for the events from the first one missing (a resend
// request, AppendResend). The runner publishes them again on the job's
// reply subject, then answers ResendOK, or ResendGone when it no longer
// has them.
func ResendSubject(runnerID string) string { return "infer.resend." + runnerID }

const (
	ResendOK   = "ok"
	ResendGone = "gone"
)

// AppendResend appends a resend request: the job's ID and the sequence
// number to resend from.
func AppendResend(buf []byte, jobID string, from uint32) []byte {
	buf = append(buf, jobID...)
	buf = append(buf, ' ')
	return strconv.AppendUint(buf, uint64(from), 10)
}

// ParseResend reads a resend request.
func ParseResend(data []byte) (jobID string, from uint32, err error) {
	id, seq, ok := strings.Cut(string(data), " ")
	if !ok || id == "" {
		return "", 0, fmt.Errorf("resend request %q: want a job ID and a sequence number", data)
	}
	n, err := strconv.ParseUint(seq, 10, 32)
	if err != nil {
		return "", 0, fmt.Errorf("resend request %q: %w", data, err)
	}
	return id, uint32(n), nil
}

// Holds of redelivered jobs. A job whose runner dies is redelivered by
// JetStream to the next runner; a job that kills every runner it reaches
// would take them all down in turn, and every other request on them. So a
// runner that takes a redelivered job records in HoldBucket (key: the job
// ID) that it holds it, and deletes the record when it stops holding it
// in any way other than dying. The runner of a later delivery reads what
// is left and asks the holder, on HoldSubject, whether it is still there:
// NATS answers "no responders" by itself for a runner whose process has
// exited, which the runner then counts as a death (Hold.Deaths).
const HoldBucket = "INFER_HOLDS"

// HoldSubject is where a runner answers whether it holds a job (the
// request's payload is the job ID): HoldHeld or HoldFree.
func HoldSubject(runnerID string) string { return "infer.hold." + runnerID }

const (
	HoldHeld = "held"
	HoldFree = "free"
)

// Hold is a HoldBucket record: the runner holding a redelivered job, and
// what earlier deliveries came to.
type Hold struct {
	Runner string `json:"runner"`
	// Alone is set once the runner runs the job with no other job beside
	// it, so that its death is the job's doing.
	Alone bool `json:"alone,omitempty"`
	// Deaths counts the job's earlier holders known to have died holding
	// it.
	Deaths int `json:"deaths,omitempty"`
}

// UsageSubject is the usage stream subject for a deployment, by its ID.
func UsageSubject(deploymentID string) string { return "infer.usage." + deploymentID }

// UsageSubjects lists the subjects of UsageStream.
func UsageSubjects() []string { return []string{usageSubjects} }

// Kind says how a job's prompt is built.
type Kind string

const (
	KindChat       Kind = "chat"
	KindCompletion Kind = "completion"
	// KindEmbedding is a /v1/embeddings request: Job.Inputs or
	// Job.InputTokens, answered with one EventEmbedding per input.
	KindEmbedding Kind = "embedding"
)

// Message is one chat message, already flattened to text.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// ToolCalls are the functions an assistant turn called.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	// ToolCallID names the call a tool turn answers.
	ToolCallID string `json:"tool_call_id,omitempty"`
}

// ToolCall is one function call of an assistant turn.
type ToolCall struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Arguments is a JSON object, as text (OpenAI sends it so).
	Arguments string `json:"arguments"`
}

// ToolCallDelta is a piece of a tool call being written: Index is the
// call's place in the reply; its first piece has ID and Name, later ones
// pieces of Arguments.
type ToolCallDelta struct {
	Index     int    `json:"n"`
	ID        string `json:"id,omitempty"`
	Name      string `json:"name,omitempty"`
	Arguments string `json:"args,omitempty"`
}

// ToolChoice is OpenAI's tool_choice.
type ToolChoice struct {
	// Mode is "auto", "none", "required", or "function" (call Name).
	Mode string `json:"mode"`
	Name string `json:"name,omitempty"`
	// Single is parallel_tool_calls false: at most one call.
	Single bool `json:"single,omitempty"`
}

// Tool is a function the model may call (OpenAI's tools[].function).
type Tool struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
}

// Sampling holds the per-request sampling parameters. Pointers are unset
// values, so the runner can apply the model's defaults.
type Sampling struct {
	Temperature      *float32 `json:"temperature,omitempty"`
	TopP             *float32 `json:"top_p,omitempty"`
	TopK             *int     `json:"top_k,omitempty"`
	MinP             *float32 `json:"min_p,omitempty"`
	Seed             *int64   `json:"seed,omitempty"`
	PresencePenalty  *float32 `json:"presence_penalty,omitempty"`
	FrequencyPenalty *float32 `json:"frequency_penalty,omitempty"`
	RepeatPenalty    *float32 `json:"repeat_penalty,omitempty"`
	// JSONSchema constrains the output to JSON matching the schema
	// (response_format json_object or json_schema); the runner turns it
	// into a llama.cpp grammar.
	JSONSchema json.RawMessage `json:"json_schema,omitempty"`
	// LogitBias adds a bias to token IDs' logits before sampling
	// (OpenAI's logit_bias); -100 bans a token.
	LogitBias map[int32]float32 `json:"logit_bias,omitempty"`
}

// Job is one queued inference request.
type Job struct {
	ID string `json:"id"`
	// Deployment is the deployment's name (for messages and records);
	// DeploymentID is its key (see RequestStream).
	Deployment   string    `json:"deployment"`
	DeploymentID string    `json:"deployment_id,omitempty"`
	Kind         Kind      `json:"kind"`
	Prompt       string    `json:"prompt,omitempty"`
	Messages     []Message `json:"messages,omitempty"`
	// Tools are the functions a chat may call; the template shows them
	// to the model.
	Tools []Tool `json:"tools,omitempty"`
	// ToolChoice says whether the reply must call one: nil is "auto"
	// when there are tools.
	ToolChoice *ToolChoice `json:"tool_choice,omitempty"`
	MaxTokens  int         `json:"max_tokens,omitempty"`
	Stop       []string    `json:"stop,omitempty"`
	Sampling   Sampling    `json:"sampling"`
	// ReplyTo is the core NATS subject the runner streams Events to.
	ReplyTo string `json:"reply_to"`
	// Deadline is when the job stops being worth starting (queue timeout).
	Deadline time.Time `json:"deadline"`
	TenantID string    `json:"tenant_id,omitempty"`
	KeyID    string    `json:"key_id,omitempty"`
	// Async marks a job nobody holds a connection for: the runner sends
	// no deltas, only a start event and then one done event carrying the
	// whole text (Event.Text), published to ReplyTo through JetStream so
	// it is stored before the job is acknowledged. A redelivered async job
	// can then restart from scratch without repeating text.
	Async bool `json:"async,omitempty"`
	// Logprobs asks for each generated token's log probability
	// (Event.Logprobs) and, with TopLogprobs, that many of the most
	// likely tokens at its position (at most 20).
	Logprobs    bool `json:"logprobs,omitempty"`
	TopLogprobs int  `json:"top_logprobs,omitempty"`
	// Inputs (text) or InputTokens (token IDs, used as given) are an
	// embedding job's inputs, one vector each; Dimensions, when not
	// zero, truncates each vector to that many and normalises it again.
	Inputs      []string `json:"inputs,omitempty"`
	InputTokens [][]int  `json:"input_tokens,omitempty"`
	Dimensions  int      `json:"dimensions,omitempty"`
	// N is how many completions to generate (OpenAI's n; 0 is 1).
	N int `json:"n,omitempty"`
	// Suffix asks a completion for fill-in-the-middle: the text between
	// Prompt and Suffix.
	Suffix string `json:"suffix,omitempty"`
	// Prices are the deployment's token prices when the job was accepted;
	// the runner copies them into the usage record, so the cost is fixed
	// at the prices in force, however late the record is ingested.
	Prices Prices `json:"prices,omitzero"`
}

// Prices are US dollars per million tokens.
type Prices struct {
	PromptPerMTok     float64 `json:"prompt_per_mtok,omitempty"`
	CompletionPerMTok float64 `json:"completion_per_mtok,omitempty"`
}

// EventType tells the activator what a runner event means.
type EventType string

const (
	// EventPhase reports cold-start progress ("starting runner",
	// "fetching weights 40%", "loading model"); it carries no output.
	EventPhase EventType = "phase"
	// EventStart says the runner admitted the job: the prompt fits and
	// tokens follow.
	EventStart EventType = "start"
	// EventDelta carries generated text (whole UTF-8 characters only).
	EventDelta EventType = "delta"
	// EventDone ends the job with a finish reason and usage (and, for
	// async jobs, the whole output in Text).
	EventDone EventType = "done"
	// EventError ends the job with an error.
	EventError EventType = "error"
	// EventEmbedding carries one input's vector of an embedding job
	// (Event.Embedding); a done event with the usage follows the last.
	EventEmbedding EventType = "embedding"
)

// Event is one message a runner sends back for a job. Deltas are coalesced
// per decode step, so one event may carry several tokens.
type Event struct {
	Type EventType `json:"t"`
	// Runner names the runner that admitted the job (start events), so
	// the activator can tell when it dies mid-generation.
	Runner       string `json:"runner,omitempty"`
	Text         string `json:"text,omitempty"`
	Phase        string `json:"phase,omitempty"`
	FinishReason string `json:"finish_reason,omitempty"`
	// ToolCalls are the calls a reply made (done events, FinishReason
	// "tool_calls"); the reply's text then is not sent as deltas.
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
	Usage     *Usage     `json:"usage,omitempty"`
	Error     *Error     `json:"error,omitempty"`
	// Logprobs are the tokens sampled since the previous event, for a
	// job that asked (Job.Logprobs). A token whose text is held back (it
	// may begin a stop sequence) comes in the event that sampled it, so
	// an event may carry logprobs before its text. The end-of-generation
	// token has none: it has no text.
	Logprobs []TokenLogprob `json:"logprobs,omitempty"`
	// Embedding is an embedding event's vector.
	Embedding *Embedding `json:"embedding,omitempty"`
	// Calls are pieces of the tool calls a reply is writing (delta
	// events): each call's ID and name first, then its arguments as they
	// are written. The done event's ToolCalls are the whole calls.
	Calls []ToolCallDelta `json:"calls,omitempty"`
	// Index is the completion a delta belongs to, for a job of N > 1.
	Index int `json:"i,omitempty"`
	// Choices end a job of N > 1 (done events): each completion's end, in
	// index order; the event's Usage counts the prompt once and every
	// completion's tokens.
	Choices []Choice `json:"choices,omitempty"`
	// Seq numbers the events one runner sends for one job, from 0; it
	// travels in the event's header (see AppendEvent).
	Seq uint32 `json:"-"`
}

// Choice is how one of a job's N > 1 completions ended; for async jobs
// with its whole text and logprobs.
type Choice struct {
	Index        int            `json:"i"`
	FinishReason string         `json:"finish_reason"`
	ToolCalls    []ToolCall     `json:"tool_calls,omitempty"`
	Text         string         `json:"text,omitempty"`
	Logprobs     []TokenLogprob `json:"logprobs,omitempty"`
	// CompletionTokens are this completion's tokens.
	CompletionTokens int `json:"completion_tokens"`
}

// TokenLogprob is one token and its log probability under the model (its
// raw logits, before temperature, penalties and logit_bias), with, for
// a sampled token, the most likely tokens at its position, most likely
// first. Token is its bytes: a token may hold part of a UTF-8 character.
type TokenLogprob struct {
	Token   []byte         `json:"b"`
	Logprob float32        `json:"l"`
	Top     []TokenLogprob `json:"top,omitempty"`
}

// Embedding is the vector of one input of an embedding job: L2-normalised
// float32s, little-endian, as OpenAI's base64 encoding_format sends them
// (JSON carries the bytes as base64: a third of the size of decimal
// floats, and exact).
type Embedding struct {
	Index  int    `json:"i"`
	Vector []byte `json:"v"`
}

// Usage counts tokens for one request.
type Usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
}

// Error is a failure the activator turns into an OpenAI error.
type Error struct {
	// Status is the HTTP status the client should see.
	Status  int    `json:"status"`
	Code    string `json:"code,omitempty"`
	Param   string `json:"param,omitempty"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Phase names a runner's lifecycle stage.
type Phase string

const (
	PhaseStarting Phase = "starting"
	PhaseFetching Phase = "fetching"
	PhaseLoading  Phase = "loading"
	PhaseReady    Phase = "ready"
	PhaseDraining Phase = "draining"
	PhaseStopped  Phase = "stopped"
	// PhaseFailed is a runner's last word when it could not start or
	// serve; Detail says why.
	PhaseFailed Phase = "failed"
	// PhaseWaiting is published for a runner that does not exist yet:
	// its driver found no room for it (no GPU free) and starts it once
	// there is. Detail says what it waits for; waiting clients are told.
	PhaseWaiting Phase = "waiting"
)

// Heartbeat is what a runner publishes on HeartbeatSubject every second and
// on every phase change.
type Heartbeat struct {
	RunnerID string `json:"runner_id"`
	// Deployment is the deployment's name, for display; DeploymentID is
	// the key everything is tracked by (the subject's token).
	Deployment   string `json:"deployment"`
	DeploymentID string `json:"deployment_id"`
	Artifact     string `json:"artifact"`
	Host         string `json:"host"`
	PID          int    `json:"pid"`
	Phase        Phase  `json:"phase"`
	Detail       string `json:"detail,omitempty"`
	// Retry, with PhaseFailed, says the failure may pass by itself (the
	// object store was unreachable): the control plane starts another
	// runner after its backoff and waiting clients keep waiting, up to
	// their queue timeout. Without it, starting again fails the same way
	// (the weights are missing or corrupt, the model does not load), and
	// after a few such failures the activator answers 503 at once.
	Retry       bool      `json:"retry,omitempty"`
	Slots       int       `json:"slots"`
	InFlight    int       `json:"in_flight"`
	LastRequest time.Time `json:"last_request,omitzero"`
	StartedAt   time.Time `json:"started_at"`
	Sent        time.Time `json:"sent"`
	// ColdStart is the runner's own account of its start, so the control
	// plane can explain a slow one.
	ColdStart ColdStart `json:"cold_start,omitzero"`
	// Devices are the ggml devices the runner loaded (CPU, each GPU it
	// was given), with their memory at start; GPULayers is how many of
	// the model's layers it offloaded to them. Absent from runners that
	// predate them.
	Devices   []Device `json:"devices,omitempty"`
	GPULayers int      `json:"gpu_layers,omitempty"`
}

// Device is one compute device a runner's ggml loaded.
type Device struct {
	Name        string `json:"name"`                  // "CPU", "CUDA0"
	Description string `json:"description,omitempty"` // "NVIDIA H200", the CPU model
	// Kind is "cpu", "gpu" or "accel" (a helper of the CPU: BLAS, AMX).
	Kind string `json:"kind"`
	// TotalBytes and FreeBytes are the device's memory when the runner
	// started (host memory for the CPU).
	TotalBytes int64 `json:"total_bytes"`
	FreeBytes  int64 `json:"free_bytes"`
}

// ColdStart times a runner's start on the runner's clock; a step not yet
// reached is zero.
type ColdStart struct {
	FetchStarted time.Time `json:"fetch_started,omitzero"`
	FetchDone    time.Time `json:"fetch_done,omitzero"`
	LoadDone     time.Time `json:"load_done,omitzero"`
	Ready        time.Time `json:"ready,omitzero"`
	// FirstToken is when the runner's first request produced its first
	// token.
	FirstToken time.Time `json:"first_token,omitzero"`
	// FetchedBytes is what was downloaded; zero when the weights were in
	// the host's cache.
	FetchedBytes int64 `json:"fetched_bytes,omitempty"`
}

// UsageRecord is published once per finished request (success or failure)
// with the request ID as the JetStream message ID, so a redelivered request
// is recorded once.
type UsageRecord struct {
	RequestID string `json:"request_id"`
	// Deployment is the name (for display), DeploymentID the deployment
	// the request ran on: the record is billed by it, never by the name.
	Deployment       string    `json:"deployment"`
	DeploymentID     string    `json:"deployment_id,omitempty"`
	TenantID         string    `json:"tenant_id,omitempty"`
	KeyID            string    `json:"key_id,omitempty"`
	RunnerID         string    `json:"runner_id"`
	PromptTokens     int       `json:"prompt_tokens"`
	CompletionTokens int       `json:"completion_tokens"`
	QueueWaitMS      float64   `json:"queue_wait_ms"`
	TTFTMS           float64   `json:"ttft_ms"`
	DurationMS       float64   `json:"duration_ms"`
	ColdStart        bool      `json:"cold_start"`
	Status           string    `json:"status"`
	FinishReason     string    `json:"finish_reason,omitempty"`
	EnqueuedAt       time.Time `json:"enqueued_at"`
	FinishedAt       time.Time `json:"finished_at"`
	Prices           Prices    `json:"prices,omitzero"`
}

// RunnerUsageSubject is where the control plane publishes a runner's
// lifetime when it ends, on the usage stream. It has one token more than
// UsageSubject, so the two never collide.
func RunnerUsageSubject(deploymentID string) string { return "infer.usage.runner." + deploymentID }

// RunnerUsageRecord is one runner's lifetime, published with the runner ID
// as the message ID (and stored idempotently by it). It names the
// deployment the runner served by ID and tenant, as the control plane knew
// them when it started the runner: a name may since belong to another
// deployment (or tenant), which must not pay for this runner.
type RunnerUsageRecord struct {
	RunnerID     string    `json:"runner_id"`
	Deployment   string    `json:"deployment"`
	DeploymentID string    `json:"deployment_id,omitempty"`
	TenantID     string    `json:"tenant_id,omitempty"`
	StartedAt    time.Time `json:"started_at"`
	EndedAt      time.Time `json:"ended_at"`
	// PricePerSecond is the deployment's runner-second price when the
	// runner ended.
	PricePerSecond float64 `json:"price_runner_second"`
}

// Runner logs. Each runner publishes its own log lines (its structured
// log, as it writes it to stderr) to LogSubject, with core NATS: LogStream,
// one stream for every deployment, keeps them for a while, so that any
// activator can serve a deployment's logs whatever driver started its
// runners and wherever they ran. The stream only has limits (age, lines
// per runner, bytes); nothing consumes it away.
const (
	LogStream   = "INFER_LOGS"
	logSubjects = "infer.logs.>"
)

// LogSubject is where one runner of a deployment publishes its log lines.
func LogSubject(deploymentID, runnerID string) string {
	return "infer.logs." + deploymentID + "." + runnerID
}

// LogFilter is the subject filter of a deployment's log lines: every
// runner's, or one runner's when runnerID is set.
func LogFilter(deploymentID, runnerID string) string {
	if runnerID == "" {
		runnerID = "*"
	}
	return LogSubject(deploymentID, runnerID)
}

// LogRunner is the runner ID a LogSubject names (its last token).
func LogRunner(subject string) string {
	return subject[strings.LastIndexByte(subject, '.')+1:]
}

// LogSubjects lists the subjects of LogStream.
func LogSubjects() []string { return []string{logSubjects} }

// LogLine is one line of a runner's log. Attrs keep the order the runner
// logged them in; values are rendered as text.
type LogLine struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"`
	Msg    string    `json:"msg"`
	Attrs  []LogAttr `json:"attrs,omitempty"`
	Runner string    `json:"runner,omitempty"`
}

// LogAttr is one key=value of a LogLine.
type LogAttr struct {
	Key   string `json:"k"`
	Value string `json:"v"`
}
