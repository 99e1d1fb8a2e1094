package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/wire"
)

// EngineConfig sizes one llama context.
type EngineConfig struct {
	ModelPath string
	// Parallel is how many sequences decode together in one batch.
	Parallel int
	// Context is the number of tokens each sequence may use (prompt and
	// output). Zero means the smaller of the model's trained length and 4096.
	Context int
	// Threads for llama.cpp; zero picks a default for the model size.
	Threads int
	// GPULayers is passed to llama.cpp for GPU builds; 0 keeps everything
	// on the CPU.
	GPULayers int
	// BatchSize is the most tokens one decode step may carry (prompt chunks
	// of newly admitted sequences plus one token per decoding sequence).
	BatchSize int
}

// ErrContextLength is returned by Submit when a prompt does not fit.
var ErrContextLength = errors.New("prompt does not fit the context")

// ErrBadSchema is returned by Submit for a JSON schema llama.cpp cannot
// turn into a grammar.
var ErrBadSchema = errors.New("invalid JSON schema")

// Request is one generation as the engine sees it.
type Request struct {
	Prompt    string
	MaxTokens int // 0: until the context is full
	Stop      []string
	Sampling  wire.Sampling
}

// Sink receives one sequence's output. The engine calls it from its decode
// loop, so implementations must not block.
type Sink interface {
	// Deliver is called at most once per decode step with the text that
	// step produced; text is only valid during the call.
	Deliver(text []byte)
	// Finish is called exactly once: reason is "stop", "length" or
	// "cancelled", or err is set.
	Finish(reason string, usage wire.Usage, err error)
}

// Engine runs continuous batching over one model and one llama context:
// every decode step carries a token for every decoding sequence plus prompt
// chunks of newly admitted ones. A new request joins at the next step and a
// finished one leaves at once; nothing waits for a batch to fill.
type Engine struct {
	log      *slog.Logger
	model    *llama.Model
	lctx     *llama.Context
	batch    *llama.Batch
	batchCap int
	nCtx     int // tokens per sequence
	parallel int
	threads  int
	info     ModelInfo

	queue chan *sequence

	// pieces maps token → text, filled lazily by the decode loop (its only
	// user) so per-token work does not allocate.
	pieces []string
	known  []bool
}

// sequence is one request occupying a slot of the llama context.
type sequence struct {
	ctx       context.Context
	sink      Sink
	prompt    []int
	sampler   *llama.SamplingContext
	maxTokens int
	text      stopBuffer

	slot      int
	prefilled int // prompt tokens already in the KV cache
	nPast     int // tokens of this sequence in the KV cache
	decoding  bool
	last      int // the sampled token to feed next
	batchIdx  int // where this sequence's logits are in the current batch, or -1
	generated int
}

// slot is one KV cache sequence. It remembers what it holds after its
// request finishes, so the next request with the same prefix (a chat client
// resending the conversation) skips that part of the prompt.
type slot struct {
	seq    *sequence
	cached []int
}

// LoadEngine loads the model and creates the llama context.
func LoadEngine(log *slog.Logger, cfg EngineConfig, progress func(float32)) (*Engine, error) {
	info, err := ReadModelInfo(cfg.ModelPath)
	if err != nil {
		return nil, err
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = 1
	}
	if cfg.Context <= 0 {
		cfg.Context = min(4096, info.ContextLength)
		if cfg.Context <= 0 {
			cfg.Context = 2048
		}
	}
	if cfg.Threads <= 0 {
		cfg.Threads = DefaultThreads(info.ParameterCount)
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 512
	}
	cfg.BatchSize = max(cfg.BatchSize, cfg.Parallel)

	llama.BackendInit()
	model, err := llama.LoadModelFromFile(cfg.ModelPath, llama.ModelParams{
		NumGpuLayers: cfg.GPULayers,
		UseMmap:      true,
		Progress:     progress,
	})
	if err != nil {
		return nil, fmt.Errorf("loading model %s: %w", cfg.ModelPath, err)
	}
	params := llama.NewContextParams(cfg.Context*cfg.Parallel, cfg.BatchSize, cfg.Parallel, cfg.Threads, false, "")
	lctx, err := llama.NewContextWithModel(model, params)
	if err != nil {
		llama.FreeModel(model)
		return nil, fmt.Errorf("creating llama context (%d sequences × %d tokens): %w", cfg.Parallel, cfg.Context, err)
	}
	batch, err := llama.NewBatch(cfg.BatchSize, 1, 0)
	if err != nil {
		llama.FreeModel(model)
		return nil, fmt.Errorf("allocating batch: %w", err)
	}
	nv := model.NumVocab()
	e := &Engine{
		log:      log,
		model:    model,
		lctx:     lctx,
		batch:    batch,
		batchCap: cfg.BatchSize,
		nCtx:     cfg.Context,
		parallel: cfg.Parallel,
		threads:  cfg.Threads,
		info:     info,
		queue:    make(chan *sequence, cfg.Parallel),
		pieces:   make([]string, nv),
		known:    make([]bool, nv),
	}
	log.Info("model loaded", "arch", info.Architecture, "params", info.ParameterCount,
		"parallel", cfg.Parallel, "context", cfg.Context, "threads", cfg.Threads, "batch", cfg.BatchSize)
	return e, nil
}

// DefaultThreads picks llama.cpp's thread count. Tiny models are bound by
// synchronisation, not arithmetic: stories260K decodes 2–3× faster on one
// thread than on two. Bigger ones use every core.
func DefaultThreads(params uint64) int {
	if params < 20_000_000 {
		return 1
	}
	return max(1, runtime.NumCPU())
}

// Info describes the loaded model.
func (e *Engine) Info() ModelInfo { return e.info }

// Parallel is the number of sequences the engine runs at once.
func (e *Engine) Parallel() int { return e.parallel }

// Context is the number of tokens each sequence may use.
func (e *Engine) Context() int { return e.nCtx }

// Tokenize turns text into tokens, adding BOS where the model wants it and
// parsing special tokens written by chat templates.
func (e *Engine) Tokenize(text string) ([]int, error) {
	return e.model.Tokenize(text, true, true)
}

// Submit tokenizes a request and queues it for the next decode step. It
// fails at once, before anything runs, when the prompt does not fit. The
// caller must not submit more requests than Parallel at a time; Submit
// blocks while the queue is full.
func (e *Engine) Submit(ctx context.Context, req Request, sink Sink) (promptTokens int, err error) {
	tokens, err := e.Tokenize(req.Prompt)
	if err != nil {
		return 0, fmt.Errorf("tokenizing prompt: %w", err)
	}
	if len(tokens) == 0 {
		return 0, errors.New("prompt is empty")
	}
	if len(tokens) >= e.nCtx {
		return len(tokens), fmt.Errorf("%w: the prompt has %d tokens and the context holds %d", ErrContextLength, len(tokens), e.nCtx)
	}
	params := samplingParams(req.Sampling)
	if len(req.Sampling.JSONSchema) > 0 {
		grammar := llama.SchemaToGrammar(req.Sampling.JSONSchema)
		if grammar == nil {
			return len(tokens), fmt.Errorf("%w: response_format schema could not be turned into a grammar", ErrBadSchema)
		}
		params.Grammar = string(grammar)
	}
	sampler, err := llama.NewSamplingContext(e.model, params)
	if err != nil {
		return len(tokens), fmt.Errorf("creating sampler: %w", err)
	}
	s := &sequence{
		ctx:       ctx,
		sink:      sink,
		prompt:    tokens,
		sampler:   sampler,
		maxTokens: req.MaxTokens,
		text:      newStopBuffer(req.Stop),
		batchIdx:  -1,
	}
	select {
	case e.queue <- s:
		return len(tokens), nil
	case <-ctx.Done():
		return len(tokens), ctx.Err()
	}
}

// samplingParams maps OpenAI-style parameters to llama.cpp's sampler, with
// the defaults OpenAI and vLLM use (temperature 1, no top-k, top-p 1).
func samplingParams(s wire.Sampling) llama.SamplingParams {
	p := llama.SamplingParams{
		Temp:          1,
		TopP:          1,
		TopK:          0,
		MinP:          0,
		TypicalP:      1,
		RepeatLastN:   64,
		PenaltyRepeat: 1,
		Seed:          rand.Uint32(),
	}
	if s.Temperature != nil {
		p.Temp = *s.Temperature
	}
	if s.TopP != nil {
		p.TopP = *s.TopP
	}
	if s.TopK != nil {
		p.TopK = *s.TopK
	}
	if s.MinP != nil {
		p.MinP = *s.MinP
	}
	if s.Seed != nil {
		p.Seed = uint32(*s.Seed)
	}
	if s.PresencePenalty != nil {
		p.PenaltyPresent = *s.PresencePenalty
	}
	if s.FrequencyPenalty != nil {
		p.PenaltyFreq = *s.FrequencyPenalty
	}
	if s.RepeatPenalty != nil {
		p.PenaltyRepeat = *s.RepeatPenalty
	}
	return p
}

// Run is the decode loop. It owns the llama context: nothing else touches
// it while Run is running. It returns when ctx is done, after failing the
// sequences still running.
func (e *Engine) Run(ctx context.Context) error {
	slots := make([]slot, e.parallel)
	active := 0
	for {
		// Admit new sequences into free slots. Block only when idle.
		if active == 0 {
			select {
			case s := <-e.queue:
				e.admit(slots, s)
				active++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	admit:
		for active < e.parallel {
			select {
			case s := <-e.queue:
				e.admit(slots, s)
				active++
			default:
				break admit
			}
		}
		if ctx.Err() != nil {
			for i := range slots {
				if s := slots[i].seq; s != nil {
					e.finish(&slots[i], "", ctx.Err())
				}
			}
			return ctx.Err()
		}

		// Leave cancelled sequences before spending a step on them.
		for i := range slots {
			if s := slots[i].seq; s != nil && s.ctx.Err() != nil {
				e.finish(&slots[i], "cancelled", nil)
				active--
			}
		}
		if active == 0 {
			continue
		}

		e.fillBatch(slots)
		if err := e.lctx.Decode(e.batch); err != nil {
			// A failed step poisons every sequence in it; fail them
			// rather than retrying forever.
			e.log.Error("decode failed", "err", err, "tokens", e.batch.NumTokens())
			for i := range slots {
				if slots[i].seq != nil {
					e.finish(&slots[i], "", fmt.Errorf("decoding: %w", err))
					active--
				}
			}
			continue
		}
		for i := range slots {
			if s := slots[i].seq; s != nil && s.batchIdx >= 0 {
				if e.sample(&slots[i]) {
					active--
				}
			}
		}
	}
}

// admit places s in the free slot whose cached tokens share the longest
// prefix with its prompt, and drops the rest of that slot's cache.
func (e *Engine) admit(slots []slot, s *sequence) {
	best, bestLen := -1, -1
	for i := range slots {
		if slots[i].seq != nil {
			continue
		}
		n := commonPrefix(slots[i].cached, s.prompt)
		if n > bestLen {
			best, bestLen = i, n
		}
	}
	// Keep at least one prompt token to decode: its logits give the first
	// output token.
	reuse := min(bestLen, len(s.prompt)-1)
	sl := &slots[best]
	if !e.lctx.KvCacheSeqRm(best, reuse, -1) {
		// Some caches cannot drop a tail; start the slot from scratch.
		e.lctx.KvCacheSeqRm(best, 0, -1)
		reuse = 0
	}
	sl.cached = append(sl.cached[:reuse], s.prompt[reuse:]...)
	s.slot = best
	s.prefilled = reuse
	s.nPast = reuse
	sl.seq = s
}

func commonPrefix(a, b []int) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// fillBatch builds one decode step: first one token for every decoding
// sequence (so generation never stalls behind a long prompt), then prompt
// chunks for the rest within the batch budget.
func (e *Engine) fillBatch(slots []slot) {
	e.batch.Clear()
	budget := e.batchCap
	for i := range slots {
		s := slots[i].seq
		if s == nil || !s.decoding {
			continue
		}
		e.batch.Add(s.last, nil, s.nPast, true, s.slot)
		s.batchIdx = e.batch.NumTokens() - 1
		s.nPast++
		budget--
	}
	for i := range slots {
		s := slots[i].seq
		if s == nil || s.decoding || budget == 0 {
			continue
		}
		n := min(budget, len(s.prompt)-s.prefilled)
		for j := 0; j < n; j++ {
			pos := s.prefilled + j
			last := pos == len(s.prompt)-1
			e.batch.Add(s.prompt[pos], nil, pos, last, s.slot)
			if last {
				s.batchIdx = e.batch.NumTokens() - 1
			}
		}
		s.prefilled += n
		s.nPast = s.prefilled
		budget -= n
	}
}

// sample picks the next token for a sequence whose logits are in the batch
// and reports whether the sequence finished.
func (e *Engine) sample(sl *slot) bool {
	s := sl.seq
	tok := s.sampler.Sample(e.lctx, s.batchIdx)
	s.sampler.Accept(tok, true)
	s.batchIdx = -1
	s.decoding = true
	s.last = tok
	s.generated++

	if e.model.TokenIsEog(tok) {
		e.emit(s, s.text.flush())
		e.finish(sl, "stop", nil)
		return true
	}
	sl.cached = append(sl.cached, tok)
	out, stopped := s.text.add(e.piece(tok))
	e.emit(s, out)
	switch {
	case stopped:
		e.finish(sl, "stop", nil)
		return true
	case s.maxTokens > 0 && s.generated >= s.maxTokens, s.nPast+1 >= e.nCtx:
		e.emit(s, s.text.flush())
		e.finish(sl, "length", nil)
		return true
	}
	return false
}

func (e *Engine) emit(s *sequence, text []byte) {
	if len(text) > 0 {
		s.sink.Deliver(text)
	}
}

// finish ends the slot's sequence and keeps what its KV cells hold for
// prefix reuse. The sampled token that was never decoded is not in the
// cache, so it is dropped from cached.
func (e *Engine) finish(sl *slot, reason string, err error) {
	s := sl.seq
	sl.seq = nil
	if len(sl.cached) > s.nPast {
		sl.cached = sl.cached[:s.nPast]
	}
	completion := s.generated
	if reason == "cancelled" || err != nil {
		// A sequence cut off mid-prompt leaves cells we cannot vouch
		// for; drop them.
		if !s.decoding {
			e.lctx.KvCacheSeqRm(s.slot, 0, -1)
			sl.cached = sl.cached[:0]
		}
	}
	s.sink.Finish(reason, wire.Usage{PromptTokens: len(s.prompt), CompletionTokens: completion}, err)
}

// piece returns a token's text, caching it: llama's TokenToPiece allocates
// on every call and this runs once per generated token.
func (e *Engine) piece(tok int) string {
	if tok < 0 || tok >= len(e.pieces) {
		return ""
	}
	if !e.known[tok] {
		e.pieces[tok] = e.model.TokenToPiece(tok)
		e.known[tok] = true
	}
	return e.pieces[tok]
}

// Close frees the model. Run must have returned.
func (e *Engine) Close() {
	e.batch.Free()
	llama.FreeModel(e.model)
}
