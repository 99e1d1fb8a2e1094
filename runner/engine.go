package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/gguf"
	"github.com/infer-run/infer/internal/jsonschema"
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
	// Contexts is how many llama contexts share the Parallel sequences;
	// zero picks a default for the model size (see DefaultContexts).
	Contexts int
	// Threads for llama.cpp per context; zero picks a default: with one
	// context, the count that decodes fastest on this host (measured at
	// the first load, then read from CacheDir), else a heuristic for the
	// model size (DefaultThreads).
	Threads int
	// CacheDir keeps measured settings (the thread count) across cold
	// starts; empty measures at every load.
	CacheDir string
	// GPULayers is how many layers llama.cpp offloads to the GPUs:
	// AutoGPULayers (-1) every layer that fits their free memory, 0 none;
	// more than the model has means all. Either way LoadEngine checks the
	// estimate (memest.go) against the free memory first and refuses
	// with a *FitError when it cannot fit, unless CPUFallback.
	GPULayers int
	// CPUFallback lets a model that does not fit the GPUs run its other
	// layers on the CPU (several times slower) instead of refusing.
	CPUFallback bool
	// Devices are the ggml devices to place on; nil asks ggml (Devices).
	// Tests give a made-up GPU here: no GPU runs on this build machine.
	Devices []wire.Device
	// BatchSize is the most tokens one decode step may carry (prompt chunks
	// of newly admitted sequences plus one token per decoding sequence).
	BatchSize int
	// InitialKV is the KV cells each context starts with before it grows
	// with its sequences (kvpool.go); zero uses kvInitialCells, negative
	// allocates every sequence's whole context up front.
	InitialKV int
	// DecodeNice lowers the scheduling priority of the decode threads
	// (Linux nice, 1–19; 0 leaves them alone). A busy engine keeps every
	// core computing; at equal priority the threads that take new jobs and
	// send tokens wait behind it, and each new request's first token with
	// them. Niced decode threads still get all the CPU nothing else asks
	// for. In a container, nice only ranks threads within the container.
	DecodeNice int
}

// DefaultDecodeNice is the decode threads' nice value `infer runner` uses
// unless told otherwise (--decode-nice). BenchmarkAddedLatency at 16
// streams on 2 cores: with decode threads at 10, the activator path's
// time to first token fell from ~19 to ~10 ms p50.
const DefaultDecodeNice = 10

// ErrContextLength is returned by Submit when a prompt does not fit.
var ErrContextLength = errors.New("prompt does not fit the context")

// ErrMaxTokens is returned by Submit when max_tokens and the prompt
// together do not fit the context.
var ErrMaxTokens = errors.New("max_tokens does not fit the context")

// ErrBadSchema is returned by Submit for a response_format JSON schema
// that internal/jsonschema refuses.
var ErrBadSchema = errors.New("invalid JSON schema")

// Request is one generation as the engine sees it.
type Request struct {
	// Prompt is a raw prompt (a completion): tokenized whole, with the
	// special tokens it spells parsed as such. The client writes the whole
	// prompt, markers included, as with OpenAI's and llama.cpp's raw
	// completions; there is no template for it to break out of, and a
	// client that wants <|eot_id|> in its own prompt means the token.
	Prompt string
	// Parts, when set, is a rendered chat (see chat.Part) and Prompt is unused.
	Parts     []chat.Part
	MaxTokens int // 0: until the context is full
	Stop      []string
	Sampling  wire.Sampling
	// Logprobs asks for each sampled token's logprob, with TopLogprobs
	// alternatives (at most MaxTopLogprobs); the sink must be a
	// LogprobSink.
	Logprobs    bool
	TopLogprobs int
	// N is how many completions of the prompt to generate (OpenAI's n;
	// 0 is 1). They share the prompt's KV cells (see SubmitN).
	N int
	// Suffix, for a raw prompt, asks for fill-in-the-middle: the model
	// writes what goes between Prompt and Suffix, in its vocabulary's
	// FIM tokens (ErrNoFIM if it has none).
	Suffix string
}

// LogprobSink is a Sink that takes logprobs: the engine calls Logprob for
// each sampled token (but an end-of-generation one) before it delivers
// the text that token released, from its decode loop.
type LogprobSink interface {
	Sink
	Logprob(lp wire.TokenLogprob)
}

// Sink receives one sequence's output. The engine calls it from its decode
// loop, so implementations must not block.
type Sink interface {
	// Start is called once Submit has accepted the request, before any
	// output, with the prompt's token count.
	Start(promptTokens int)
	// Deliver is called at most once per decode step with the text that
	// step produced; text is only valid during the call.
	Deliver(text []byte)
	// Finish is called exactly once: reason is "stop", "length" or
	// "cancelled", or err is set.
	Finish(reason string, usage wire.Usage, err error)
}

// Engine runs continuous batching over one model: every decode step carries
// a token for every decoding sequence plus prompt chunks of newly admitted
// ones. A new request joins at the next step and a finished one leaves at
// once; nothing waits for a batch to fill.
//
// The sequences are spread over one or more llama contexts (decoders),
// each with its own KV cache and decode loop. In this llama.cpp every
// sequence of a context attends over all of the context's used KV cells,
// so on tiny models, where attention rather than the weights dominates, one
// context per sequence is several times faster than one big batch; on
// larger models one shared context batches the weight reads and wins.
type Engine struct {
	log      *slog.Logger
	cfg      EngineConfig
	model    *llama.Model // the first context's, for tokenizing
	info     gguf.ModelInfo
	nCtx     int // tokens per sequence
	parallel int

	mu       sync.Mutex
	decoders []*decoder // loaded and running
	pending  []int      // sequences of each context still to load
	// measureThreads is set when the first context's load should time
	// the thread counts: "-" to measure only, else the file to record in.
	measureThreads string
	wg             sync.WaitGroup
	// firsts counts submitted sequences that have not sampled their first
	// token yet; see decoder.run.
	firsts atomic.Int32
	// alphabet is what the model can write (modelAlphabet), read at the
	// first response_format schema.
	alphabet func() *jsonschema.Alphabet
	// emb is the embeddings context, made at the first embedding
	// request (embed.go).
	emb embedState
}

// decoder is one llama context and its decode loop.
type decoder struct {
	log      *slog.Logger
	model    *llama.Model
	lctx     *llama.Context
	batch    *llama.Batch
	batchCap int
	threads  int
	nCtx     int // tokens per sequence
	// cells is the KV pool of lctx; maxCells what parallel sequences of
	// nCtx tokens can need. growTo is the pool being built in the
	// background (0: none), delivered on grown.
	cells, maxCells int
	growTo          int
	grown           chan grownContext
	stateBuf        []byte        // copySequence's buffer
	stepCap         int           // tokens a step may take after llama found no room; 0: no limit
	kvCells         atomic.Int64  // cells, for readers outside the loop
	parallel        int           // sequences in this context
	share           int           // sequences it carries once every context is up
	nice            int           // EngineConfig.DecodeNice
	firsts          *atomic.Int32 // the engine's
	queue           chan *sequence
	load            atomic.Int32 // sequences submitted and not finished
	// promptDecoded counts the prompt tokens this context decoded (what
	// the prefix cache and n's sharing save shows in it).
	promptDecoded atomic.Int64

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
	bias      []biasEntry // logit_bias, by token
	raw       []float32   // the logits bias changed, before it did
	lp        *logprober  // nil: no logprobs asked
	lpSink    LogprobSink

	slot      int
	prefilled int // prompt tokens already in the KV cache
	nPast     int // tokens of this sequence in the KV cache
	decoding  bool
	last      int // the sampled token to feed next
	batchIdx  int // where this sequence's logits are in the current batch, or -1
	generated int
	before    [2]int // nPast and prefilled before the current step (undoStep)

	// leader, for one of n completions of a prompt (SubmitN), is the
	// sequence that decodes the prompt: this one waits, then copies the
	// leader's KV cells of the prompt but its last token (which it
	// decodes itself, for its own logits) and goes on alone. nil once
	// copied, and for a leader.
	leader   *sequence
	admitted bool // in a slot
	done     bool // finished
}

// slot is one KV cache sequence. It remembers what it holds after its
// request finishes, so the next request with the same prefix (a chat client
// resending the conversation) skips that part of the prompt.
type slot struct {
	seq    *sequence
	cached []int
}

// LoadEngine loads the model and creates its llama contexts.
func LoadEngine(log *slog.Logger, cfg EngineConfig, progress func(float32)) (*Engine, error) {
	info, err := gguf.ReadFile(cfg.ModelPath)
	if err != nil {
		return nil, err
	}
	cfg.Parallel = max(1, cfg.Parallel)
	if cfg.Context <= 0 {
		cfg.Context = min(4096, info.ContextLength)
		if cfg.Context <= 0 {
			cfg.Context = 2048
		}
	}
	if cfg.Contexts <= 0 {
		cfg.Contexts = DefaultContexts(uint64(info.ParameterCount), cfg.Parallel)
	}
	if info.EmbeddingOnly() {
		// Its generation contexts never decode (embed.go): one, for the
		// model it lends the embedder, and no thread measurement.
		cfg.Contexts = 1
		if cfg.Threads <= 0 {
			cfg.Threads = DefaultThreads(uint64(info.ParameterCount), 1)
		}
	}
	cfg.Contexts = min(cfg.Contexts, cfg.Parallel)
	measure := ""
	if cfg.Threads <= 0 {
		cfg.Threads = DefaultThreads(uint64(info.ParameterCount), cfg.Contexts)
		// Several contexts decode at once and share the cores, which a
		// lone timed decode cannot judge; the heuristic stays for them.
		// Small models are bound by thread synchronisation and always
		// fastest on one thread, so their cold starts skip the ~200 ms
		// the measurement costs.
		if cfg.Contexts == 1 && runtime.NumCPU() > 1 && info.ParameterCount >= smallModel {
			measure = "-" // measure, do not record
			if cfg.CacheDir != "" {
				if path, err := threadsCacheFile(cfg.CacheDir, info, cfg.ModelPath); err == nil {
					if n, ok := cachedThreads(path); ok {
						cfg.Threads, measure = n, ""
					} else {
						measure = path
					}
				}
			}
		}
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = min(512, cfg.Context)
	}
	llama.BackendInit()
	if cfg.Devices == nil {
		cfg.Devices = Devices()
	}
	if cfg.GPULayers, err = placeLayers(cfg, info); err != nil {
		return nil, err
	}
	if cfg.GPULayers > 0 && cfg.InitialKV == 0 {
		// On a GPU the whole pool up front: clearing it there costs
		// milliseconds, not the page faults that make a CPU pool grow
		// with the work, and growing would create a context while the
		// decode loop runs on the same device, which CUDA refuses
		// mid-step (H200, measured: "operation not permitted when
		// stream is capturing" in the new pool's clear, then a crash).
		cfg.InitialKV = -1
	}

	e := &Engine{info: info, nCtx: cfg.Context, parallel: cfg.Parallel, cfg: cfg, log: log, measureThreads: measure}
	for i := range cfg.Contexts {
		// Spread the sequences as evenly as the division allows.
		seqs := cfg.Parallel / cfg.Contexts
		if i < cfg.Parallel%cfg.Contexts {
			seqs++
		}
		e.pending = append(e.pending, seqs)
	}
	// The first context is loaded now, the rest when Run starts, in the
	// background: a cold start waits for one load only. Until the others
	// are up the first takes every sequence (its KV pool is shared by
	// its sequences and starts small, so the extra slots cost nothing
	// until used): a burst arriving at zero decodes at once instead of
	// queueing for contexts still being created.
	d, err := e.loadDecoder(cfg.Parallel, e.pending[0], progress)
	if err != nil {
		return nil, err
	}
	e.pending = e.pending[1:]
	e.model = d.model
	e.decoders = []*decoder{d}
	e.alphabet = sync.OnceValue(func() *jsonschema.Alphabet { return modelAlphabet(d.model) })
	log.Info("model loaded", "arch", info.Architecture, "params", info.ParameterCount,
		"parallel", cfg.Parallel, "contexts", cfg.Contexts, "context", cfg.Context, "threads", e.cfg.Threads, "batch", cfg.BatchSize, "gpu_layers", cfg.GPULayers)
	return e, nil
}

// loadDecoder loads the model and creates one context for seqs sequences.
// Every context gets its own model instance: in this llama.cpp, contexts
// that share a model and decode at the same time corrupt each other's
// output (measured: greedy text differs from a lone run). The weights are
// memory-mapped, so the copies share the page cache.
// share is the part of the engine's sequences it is meant to carry once
// every context is up (pick balances by it); seqs may be more.
func (e *Engine) loadDecoder(seqs, share int, progress func(float32)) (*decoder, error) {
	cfg := e.cfg
	model, err := llama.LoadModelFromFile(cfg.ModelPath, llama.ModelParams{
		NumGpuLayers: cfg.GPULayers,
		UseMmap:      true,
		Progress:     progress,
	})
	if err != nil {
		return nil, fmt.Errorf("loading model %s: %w", cfg.ModelPath, err)
	}
	if e.measureThreads != "" {
		// Before the real context exists: contexts of one model must not
		// decode at the same time.
		n, took, timings, err := measureThreads(model, threadCandidates(runtime.NumCPU()))
		if err != nil {
			e.log.Warn("measuring threads failed; using the default", "threads", cfg.Threads, "err", err)
		} else {
			e.log.Info("measured fastest threads", "threads", n, "took", took, "timings", timings)
			cfg.Threads, e.cfg.Threads = n, n
			if e.measureThreads != "-" {
				if err := saveThreads(e.measureThreads, n); err != nil {
					e.log.Warn("recording threads", "err", err)
				}
			}
		}
		e.measureThreads = ""
	}
	batchCap := max(cfg.BatchSize, seqs)
	maxCells := cfg.Context * seqs
	cells := initialCells(maxCells, cfg.InitialKV)
	lctx, err := newContext(model, cells, batchCap, seqs, cfg.Threads)
	if err != nil {
		llama.FreeModel(model)
		return nil, err
	}
	batch, err := llama.NewBatch(batchCap, 1, 0)
	if err != nil {
		llama.FreeModel(model)
		return nil, fmt.Errorf("allocating batch: %w", err)
	}
	nv := model.NumVocab()
	d := &decoder{
		log:      e.log,
		model:    model,
		lctx:     lctx,
		batch:    batch,
		batchCap: batchCap,
		threads:  cfg.Threads,
		nCtx:     cfg.Context,
		cells:    cells,
		maxCells: maxCells,
		grown:    make(chan grownContext, 1),
		parallel: seqs,
		share:    share,
		nice:     cfg.DecodeNice,
		firsts:   &e.firsts,
		queue:    make(chan *sequence, seqs),
		pieces:   make([]string, nv),
		known:    make([]bool, nv),
	}
	d.kvCells.Store(int64(cells))
	return d, nil
}

// smallModel is the size below which attention over the shared KV cache,
// not the weights, bounds decoding (measured on stories260K: 16 sequences
// in 16 contexts decode ~5× faster than in one).
const smallModel = 20_000_000

// DefaultContexts is how many llama contexts to spread parallel sequences
// over: two sequences per context for small models, one shared context for
// the rest. On stories260K with 16 concurrent requests on 2 cores, 8
// contexts measured ~6,000 tokens/s against ~1,500 for one context and
// ~3,500 for 16 (BenchmarkEngineContexts).
func DefaultContexts(params uint64, parallel int) int {
	if params < smallModel {
		return (parallel + 1) / 2
	}
	return 1
}

// DefaultThreads picks llama.cpp's threads per context. Tiny models are
// bound by synchronisation, not arithmetic: stories260K decodes 2–3× faster
// on one thread than on two, and several contexts already use the cores.
// Bigger ones split the cores between their contexts.
func DefaultThreads(params uint64, contexts int) int {
	if params < smallModel {
		return 1
	}
	return max(1, runtime.NumCPU()/max(1, contexts))
}

// KVCells is the KV cache cells the loaded contexts hold now; they grow
// with the work up to Parallel × Context.
func (e *Engine) KVCells() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, d := range e.decoders {
		n += int(d.kvCells.Load())
	}
	return n
}

// PromptTokensDecoded is how many prompt tokens the engine's contexts
// have decoded (a step undone for want of KV cells counts twice).
func (e *Engine) PromptTokensDecoded() int64 {
	var n int64
	for _, d := range e.decodersNow() {
		n += d.promptDecoded.Load()
	}
	return n
}

// Info describes the loaded model.
func (e *Engine) Info() gguf.ModelInfo { return e.info }

// Parallel is the number of sequences the engine runs at once.
func (e *Engine) Parallel() int { return e.parallel }

// Context is the number of tokens each sequence may use.
func (e *Engine) Context() int { return e.nCtx }

// Tokenize turns a raw prompt into tokens, adding BOS where the model
// wants it and parsing the special tokens it spells (see Request.Prompt).
func (e *Engine) Tokenize(text string) ([]int, error) {
	return e.model.Tokenize(text, true, true)
}

// TokenizeParts turns a rendered chat into tokens: BOS once where the
// model wants it, each marker with special tokens parsed, all other text
// (message content) as text only, so content that spells a control token
// stays text. Tokenizing the text between markers separately is what
// llama.cpp does with a whole prompt too, so a chat without forged markers
// gets the tokens it always did.
func (e *Engine) TokenizeParts(parts []chat.Part) ([]int, error) {
	var tokens []int
	if e.model.AddBOSToken() {
		// The special tokens of an empty text: BOS first (and an EOS
		// after it on a model that also ends every text with one, which
		// a chat prompt must not: the reply continues it).
		bos, err := e.model.Tokenize("", true, false)
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, bos[:min(1, len(bos))]...)
	}
	for _, p := range parts {
		t, err := e.model.Tokenize(p.Text, false, p.Marker)
		if err != nil {
			return nil, err
		}
		tokens = append(tokens, t...)
	}
	return tokens, nil
}

// tokenizePrompt tokenizes a request's prompt: a rendered chat's parts,
// or a raw prompt.
func (e *Engine) tokenizePrompt(req Request) ([]int, error) {
	switch {
	case req.Parts != nil:
		return e.TokenizeParts(req.Parts)
	case req.Suffix != "":
		return e.TokenizeFIM(req.Prompt, req.Suffix)
	}
	return e.Tokenize(req.Prompt)
}

// Submit tokenizes a request and queues it for the next decode step. It
// fails at once, before anything runs, when the prompt does not fit. The
// caller must not submit more requests than Parallel at a time; Submit
// blocks while the queue is full.
func (e *Engine) Submit(ctx context.Context, req Request, sink Sink) (promptTokens int, err error) {
	return e.SubmitN(ctx, req, []Sink{sink})
}

// SubmitN is Submit for n completions of one prompt (OpenAI's n), one
// sink each. The prompt is decoded once: the completions placed in one
// context copy its KV cells (llama_kv_cache_seq_cp shares them, no copy
// of the data) and each decodes only the prompt's last token for its own
// logits. Completions that do not fit one context's free sequences go to
// another, where one of them decodes the prompt again; beyond the
// engine's free sequences they wait for one, as requests do. Each has its
// own sampler: with a seed, completion i>0 samples with a seed derived
// from it (seedFor), so they differ unless the sampling is greedy.
func (e *Engine) SubmitN(ctx context.Context, req Request, sinks []Sink) (promptTokens int, err error) {
	if len(sinks) == 0 {
		return 0, errors.New("no sink")
	}
	tokens, err := e.tokenizePrompt(req)
	if err != nil {
		if errors.Is(err, ErrNoFIM) {
			return 0, err
		}
		return 0, fmt.Errorf("tokenizing prompt: %w", err)
	}
	if len(tokens) == 0 {
		return 0, errors.New("prompt is empty")
	}
	if len(tokens) >= e.nCtx {
		return len(tokens), fmt.Errorf("%w: the prompt has %d tokens and the context holds %d", ErrContextLength, len(tokens), e.nCtx)
	}
	// A max_tokens the context cannot hold is refused, as OpenAI refuses
	// it, rather than quietly cut short at the context's end: the client
	// asked for more than it can ever get.
	if left := e.nCtx - len(tokens); req.MaxTokens > left {
		return len(tokens), fmt.Errorf("%w: max_tokens is %d, but the context holds %d tokens and the prompt uses %d, which leaves %d; lower max_tokens, or leave it out to generate until the context is full",
			ErrMaxTokens, req.MaxTokens, e.nCtx, len(tokens), left)
	}
	bias, err := logitBias(req.Sampling.LogitBias, e.model.NumVocab())
	if err != nil {
		return len(tokens), err
	}
	lpSinks := make([]LogprobSink, len(sinks))
	for i, sink := range sinks {
		lpSinks[i], _ = sink.(LogprobSink)
		if req.Logprobs && lpSinks[i] == nil {
			return len(tokens), errors.New("logprobs asked with a sink that takes none")
		}
	}
	params := samplingParams(req.Sampling)
	if len(req.Sampling.JSONSchema) > 0 {
		// Our own converter, never llama.SchemaToGrammar: its grammars
		// can leave the sampler with no token to continue, which throws a
		// C++ exception that kills the runner and every stream on it.
		// The activator validated the schema already; the runner trusts
		// no queue and checks again, against what this model can write.
		grammar, err := jsonschema.GrammarFor(req.Sampling.JSONSchema, e.alphabet())
		if err != nil {
			return len(tokens), fmt.Errorf("%w: %v", ErrBadSchema, err)
		}
		params.Grammar = grammar
	}
	// Every sequence is built before any is queued: a sampler llama.cpp
	// refuses fails the request whole.
	seqs := make([]*sequence, len(sinks))
	ds := e.place(len(sinks))
	release := func(from int) {
		for _, d := range ds[from:] {
			d.load.Add(-1)
		}
	}
	for i, sink := range sinks {
		p := params
		if i > 0 && req.Sampling.Seed != nil {
			p.Seed = seedFor(*req.Sampling.Seed, i)
		} else if i > 0 {
			p.Seed = rand.Uint32()
		}
		sampler, err := llama.NewSamplingContext(ds[i].model, p)
		if err != nil {
			release(0)
			if params.Grammar != "" {
				return len(tokens), fmt.Errorf("%w: llama.cpp refused the grammar made from it", ErrBadSchema)
			}
			return len(tokens), fmt.Errorf("creating sampler: %w", err)
		}
		var lp *logprober
		if req.Logprobs {
			lp = &logprober{top: min(max(req.TopLogprobs, 0), MaxTopLogprobs)}
		}
		seqs[i] = &sequence{
			ctx:       ctx,
			sink:      sink,
			prompt:    tokens,
			sampler:   sampler,
			maxTokens: req.MaxTokens,
			text:      newStopBuffer(req.Stop),
			batchIdx:  -1,
			bias:      bias,
			raw:       make([]float32, len(bias)),
			lp:        lp,
			lpSink:    lpSinks[i],
		}
		// The first sequence placed in a context decodes the prompt for
		// the others placed there.
		for j := range i {
			if ds[j] == ds[i] {
				seqs[i].leader = seqs[j]
				break
			}
		}
	}
	for _, s := range seqs {
		s.sink.Start(len(tokens))
	}
	e.firsts.Add(int32(len(seqs)))
	// The first waits for room in its context's queue, as Submit always
	// did; completions beyond the free sequences are queued behind it
	// in the background, in order, so the caller does not wait for
	// other requests to finish.
	select {
	case ds[0].queue <- seqs[0]:
	case <-ctx.Done():
		e.firsts.Add(int32(-len(seqs)))
		release(0)
		return len(tokens), ctx.Err()
	}
	for i := 1; i < len(seqs); i++ {
		select {
		case ds[i].queue <- seqs[i]:
			continue
		default:
		}
		go e.enqueue(ctx, ds[i:], seqs[i:])
		break
	}
	return len(tokens), nil
}

// enqueue queues sequences in order, waiting for room; ones left when ctx
// ends finish cancelled.
func (e *Engine) enqueue(ctx context.Context, ds []*decoder, seqs []*sequence) {
	for i, s := range seqs {
		select {
		case ds[i].queue <- s:
		case <-ctx.Done():
			for j := i; j < len(seqs); j++ {
				e.firsts.Add(-1)
				ds[j].load.Add(-1)
				seqs[j].done = true
				seqs[j].sink.Finish("cancelled", wire.Usage{PromptTokens: len(seqs[j].prompt)}, nil)
			}
			return
		}
	}
}

// seedFor is the sampler seed of completion i > 0 of a request with a
// seed: distinct per completion, and the same on every run.
func seedFor(seed int64, i int) uint32 {
	return samplerSeed(seed + int64(i)*-0x61c8864680b583eb) // 2^64/φ, odd
}

// decodersNow is the contexts loaded so far.
func (e *Engine) decodersNow() []*decoder {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.decoders)
}

// place chooses the contexts of n sequences of one prompt and counts them
// against each: as many as fit together in the context with the most free
// sequences (they then share the prompt's KV cells), the rest likewise.
// Once none is free, the rest go where pick puts them.
func (e *Engine) place(n int) []*decoder {
	if n == 1 {
		return []*decoder{e.pick()}
	}
	e.mu.Lock()
	out := make([]*decoder, 0, n)
	for len(out) < n {
		var best *decoder
		room := int32(0)
		for _, d := range e.decoders {
			if free := int32(d.parallel) - d.load.Load(); free > room {
				best, room = d, free
			}
		}
		if best == nil {
			break
		}
		for k := 0; k < int(room) && len(out) < n; k++ {
			best.load.Add(1)
			out = append(out, best)
		}
	}
	e.mu.Unlock()
	for len(out) < n {
		out = append(out, e.pick())
	}
	return out
}

// pick chooses the least loaded ready context and counts the new sequence
// against it.
func (e *Engine) pick() *decoder {
	e.mu.Lock()
	defer e.mu.Unlock()
	var d *decoder
	for _, o := range e.decoders {
		if o.load.Load() >= int32(o.parallel) {
			continue // full: its queue would hold the sequence
		}
		// o.load/o.share < d.load/d.share, without division.
		if d == nil || o.load.Load()*int32(d.share) < d.load.Load()*int32(o.share) {
			d = o
		}
	}
	if d == nil {
		// More submitted than Parallel, against Submit's contract: wait
		// in the first context's queue.
		d = e.decoders[0]
	}
	d.load.Add(1)
	return d
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
		p.Seed = samplerSeed(*s.Seed)
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

// randomSeed is llama.cpp's LLAMA_DEFAULT_SEED: a sampler given it seeds
// itself at random.
const randomSeed = 0xFFFFFFFF

// samplerSeed maps a request's seed, any int64, to llama.cpp's 32-bit
// seed. Truncating would turn seed -1 into randomSeed (a seed that does
// not reproduce) and make seeds 2^32 apart collide; instead all 64 bits
// are mixed (SplitMix64's finalizer) and folded, and randomSeed is
// avoided, so every seed reproduces.
func samplerSeed(seed int64) uint32 {
	z := uint64(seed)
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	v := uint32(z) ^ uint32(z>>32)
	if v == randomSeed {
		v-- // one more collision among 2^64 seeds, instead of randomness
	}
	return v
}

// Run runs every context's decode loop until ctx is done, loading the
// contexts LoadEngine left for later first.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	for _, d := range e.decoders {
		e.start(ctx, d)
	}
	pending := e.pending
	e.pending = nil
	e.mu.Unlock()
	for _, seqs := range pending {
		if ctx.Err() != nil {
			break
		}
		d, err := e.loadDecoder(seqs, seqs, nil)
		if err != nil {
			e.log.Error("loading another context; serving with fewer", "err", err)
			continue
		}
		e.mu.Lock()
		e.decoders = append(e.decoders, d)
		e.start(ctx, d)
		e.mu.Unlock()
	}
	e.wg.Wait()
	return ctx.Err()
}

// start runs a decoder's loop; e.mu must be held.
func (e *Engine) start(ctx context.Context, d *decoder) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		d.run(ctx)
	}()
}

// run is one context's decode loop. It owns the llama context: nothing
// else touches it while run is running. It returns when ctx is done, after
// failing the sequences still running.
func (d *decoder) run(ctx context.Context) error {
	if d.nice > 0 {
		// The decode calls run on this goroutine's thread; keep it on one
		// thread so the priority applies to them. Never unlocked: the
		// thread then exits with the goroutine instead of going back to
		// the pool at a lower priority.
		runtime.LockOSThread()
		if err := setThreadNice(d.nice); err != nil {
			d.log.Warn("lowering the decode thread's priority", "nice", d.nice, "err", err)
		}
	}
	slots := make([]slot, d.parallel)
	active := 0
	for {
		// Admit new sequences into free slots. Block only when idle.
		if active == 0 {
			select {
			case s := <-d.queue:
				d.admit(slots, s)
				active++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	admit:
		for active < d.parallel {
			select {
			case s := <-d.queue:
				d.admit(slots, s)
				active++
			default:
				break admit
			}
		}
		if ctx.Err() != nil {
			for i := range slots {
				if s := slots[i].seq; s != nil {
					d.finish(&slots[i], "", ctx.Err())
				}
			}
			return ctx.Err()
		}

		// Leave cancelled sequences before spending a step on them.
		for i := range slots {
			if s := slots[i].seq; s != nil && s.ctx.Err() != nil {
				d.finish(&slots[i], "cancelled", nil)
				active--
			}
		}
		if active == 0 {
			continue
		}

		// First tokens first. With several contexts on few cores, a
		// context that only continues its sequences waits (up to 1 ms)
		// while another is about to sample a new sequence's first token:
		// requests arriving in a burst then get their first tokens ~40%
		// sooner, and throughput is unchanged (performance.md, "The
		// activator path").
		if d.firsts.Load() > 0 && !hasNew(slots) {
			for i := 0; i < 10 && d.firsts.Load() > 0; i++ {
				time.Sleep(100 * time.Microsecond)
			}
		}
		if d.adoptGrown(slots, false) {
			active = countActive(slots) // a sequence that could not move ended
		}
		if !d.fillBatch(slots) {
			// No free cell for any sequence: wait for the larger pool.
			if !d.adoptGrown(slots, true) {
				d.failAll(slots, errors.New("the KV cache is full and could not grow"))
			}
			active = countActive(slots)
			continue
		}
		if err := decode(d.lctx, d.batch); errors.Is(err, llama.ErrKvCacheFull) {
			// No contiguous run of cells for the step even after
			// llama.cpp's defragmentation: nothing was decoded. Undo the
			// step and take smaller ones until the pool has grown.
			d.undoStep(slots)
			d.stepCap = max(1, d.batch.NumTokens()/2)
			d.startGrowth(min(d.maxCells, 2*d.cells))
			continue
		} else if err != nil {
			// A failed step poisons every sequence in it; fail them
			// rather than retrying forever.
			d.log.Error("decode failed", "err", err, "tokens", d.batch.NumTokens())
			for i := range slots {
				if slots[i].seq != nil {
					d.finish(&slots[i], "", fmt.Errorf("decoding: %w", err))
					active--
				}
			}
			continue
		}
		for i := range slots {
			if s := slots[i].seq; s != nil && s.batchIdx >= 0 {
				if d.sample(&slots[i]) {
					active--
				}
			}
		}
	}
}

func countActive(slots []slot) int {
	n := 0
	for i := range slots {
		if slots[i].seq != nil {
			n++
		}
	}
	return n
}

// hasNew reports whether a slot holds a sequence that has not sampled its
// first token.
func hasNew(slots []slot) bool {
	for i := range slots {
		if s := slots[i].seq; s != nil && !s.decoding {
			return true
		}
	}
	return false
}

// admit places s in the free slot whose cached tokens share the longest
// prefix with its prompt, and drops the rest of that slot's cache.
func (d *decoder) admit(slots []slot, s *sequence) {
	s.admitted = true
	if s.leader != nil {
		d.admitFollower(slots, s)
		return
	}
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
	if !d.lctx.KvCacheSeqRm(best, reuse, -1) {
		// Some caches cannot drop a tail; start the slot from scratch.
		d.lctx.KvCacheSeqRm(best, 0, -1)
		reuse = 0
	}
	sl.cached = append(sl.cached[:reuse], s.prompt[reuse:]...)
	s.slot = best
	s.prefilled = reuse
	s.nPast = reuse
	sl.seq = s
}

// admitFollower places a sequence that copies its leader's prompt: in
// the free slot whose cached prefix is worth least (the shortest), which
// it empties.
func (d *decoder) admitFollower(slots []slot, s *sequence) {
	best := -1
	for i := range slots {
		if slots[i].seq == nil && (best < 0 || len(slots[i].cached) < len(slots[best].cached)) {
			best = i
		}
	}
	sl := &slots[best]
	d.lctx.KvCacheSeqRm(best, 0, -1)
	sl.cached = sl.cached[:0]
	s.slot, s.prefilled, s.nPast = best, 0, 0
	sl.seq = s
}

// follow lets a follower whose leader has the prompt in its KV cells (all
// but its last token) copy them, and frees one whose leader is gone to
// decode the prompt itself. It reports whether it still waits.
func (d *decoder) follow(sl *slot) bool {
	s := sl.seq
	l := s.leader
	switch {
	case l.done || l.ctx.Err() != nil:
		s.leader = nil // its cells cannot be vouched for: decode alone
		// As admit records a prompt: what the slot's cells will hold.
		sl.cached = append(sl.cached[:0], s.prompt...)
		return false
	case !l.admitted || !l.decoding && l.prefilled < len(l.prompt)-1:
		return true
	}
	n := len(s.prompt) - 1
	if n > 0 {
		d.lctx.KvCacheSeqCp(l.slot, s.slot, 0, n)
	}
	// The whole prompt, as admit records one: the copied cells and the
	// last token, which this step decodes (finish trims what never was).
	// Recording only the copied ones put each generated token a position
	// early, and a later prompt matching that reused cells that hold
	// something else (TestEngineNFollowerCache).
	sl.cached = append(sl.cached[:0], s.prompt...)
	s.prefilled, s.nPast, s.leader = n, n, nil
	return false
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
// chunks for the rest within the batch budget, all within the KV cells
// free. It starts growing the pool when the sequences are about to need
// more, and reports false when no sequence got a cell.
func (d *decoder) fillBatch(slots []slot) bool {
	d.batch.Clear()
	used, soon := kvNeed(slots)
	if t := growTarget(d.cells, d.maxCells, used+soon); t > 0 {
		d.startGrowth(t)
	}
	free := d.cells - used
	if free < d.parallel {
		// Cached prefixes of finished requests give way before a
		// sequence waits.
		free += d.dropCached(slots)
	}
	for i := range slots {
		if s := slots[i].seq; s != nil {
			if s.leader != nil {
				// Before any prompt chunk of this step is counted as
				// prefilled: only decoded cells are copied.
				d.follow(&slots[i])
			}
			s.before = [2]int{s.nPast, s.prefilled}
		}
	}
	budget := min(d.batchCap, free)
	if d.stepCap > 0 {
		budget, d.stepCap = min(budget, d.stepCap), 0
	}
	for i := range slots {
		s := slots[i].seq
		if s == nil || !s.decoding || budget == 0 {
			continue
		}
		d.batch.Add(s.last, nil, s.nPast, true, s.slot)
		s.batchIdx = d.batch.NumTokens() - 1
		s.nPast++
		budget--
	}
	for i := range slots {
		s := slots[i].seq
		if s == nil || s.decoding || budget == 0 {
			continue
		}
		if s.leader != nil {
			continue // its leader is still decoding the prompt
		}
		n := min(budget, len(s.prompt)-s.prefilled)
		for j := 0; j < n; j++ {
			pos := s.prefilled + j
			last := pos == len(s.prompt)-1
			d.batch.Add(s.prompt[pos], nil, pos, last, s.slot)
			if last {
				s.batchIdx = d.batch.NumTokens() - 1
			}
		}
		s.prefilled += n
		s.nPast = s.prefilled
		budget -= n
		d.promptDecoded.Add(int64(n))
	}
	return d.batch.NumTokens() > 0
}

// sample picks the next token for a sequence whose logits are in the batch
// and reports whether the sequence finished.
func (d *decoder) sample(sl *slot) bool {
	s := sl.seq
	var (
		logits []float32
		lse    float32
		top    []wire.TokenLogprob
	)
	if s.lp != nil || s.bias != nil {
		logits = logitsAt(d.lctx, s.batchIdx, len(d.pieces))
	}
	if s.lp != nil && logits != nil {
		lse, top = s.lp.before(logits, d.piece) // from the raw logits
	}
	if s.bias != nil && logits != nil {
		applyBias(logits, s.bias, s.raw)
	}
	tok := s.sampler.Sample(d.lctx, s.batchIdx)
	s.sampler.Accept(tok, true)
	if s.lp != nil && logits != nil && !d.model.TokenIsEog(tok) {
		s.lpSink.Logprob(wire.TokenLogprob{Token: []byte(d.piece(tok)), Logprob: clampLogprob(rawLogit(logits, s.bias, s.raw, tok) - lse), Top: top})
	}
	s.batchIdx = -1
	if !s.decoding {
		d.firsts.Add(-1)
	}
	s.decoding = true
	s.last = tok
	s.generated++

	if d.model.TokenIsEog(tok) {
		d.emit(s, s.text.flush())
		d.finish(sl, "stop", nil)
		return true
	}
	sl.cached = append(sl.cached, tok)
	out, stopped := s.text.add(d.piece(tok))
	d.emit(s, out)
	switch {
	case stopped:
		d.finish(sl, "stop", nil)
		return true
	case s.maxTokens > 0 && s.generated >= s.maxTokens, s.nPast+1 >= d.nCtx:
		d.emit(s, s.text.flush())
		d.finish(sl, "length", nil)
		return true
	}
	return false
}

func (d *decoder) emit(s *sequence, text []byte) {
	if len(text) > 0 {
		s.sink.Deliver(text)
	}
}

// finish ends the slot's sequence and keeps what its KV cells hold for
// prefix reuse. The sampled token that was never decoded is not in the
// cache, so it is dropped from cached.
func (d *decoder) finish(sl *slot, reason string, err error) {
	s := sl.seq
	sl.seq = nil
	s.done = true
	if len(sl.cached) > s.nPast {
		sl.cached = sl.cached[:s.nPast]
	}
	completion := s.generated
	if !s.decoding {
		d.firsts.Add(-1)
	}
	if reason == "cancelled" || err != nil {
		// A sequence cut off mid-prompt leaves cells we cannot vouch
		// for; drop them.
		if !s.decoding {
			d.lctx.KvCacheSeqRm(s.slot, 0, -1)
			sl.cached = sl.cached[:0]
		}
	}
	d.load.Add(-1)
	s.sink.Finish(reason, wire.Usage{PromptTokens: len(s.prompt), CompletionTokens: completion}, err)
}

// piece returns a token's text, caching it: llama's TokenToPiece allocates
// on every call and this runs once per generated token.
func (d *decoder) piece(tok int) string {
	if tok < 0 || tok >= len(d.pieces) {
		return ""
	}
	if !d.known[tok] {
		d.pieces[tok] = d.model.TokenToPiece(tok)
		d.known[tok] = true
	}
	return d.pieces[tok]
}

// Close frees the contexts and models. Run must have returned.
func (e *Engine) Close() {
	e.closeEmbedder()
	for _, d := range e.decoders {
		if d.growTo != 0 {
			// A larger context still being built: wait for it and free it.
			if g := <-d.grown; g.lctx != nil {
				freeContext(g.lctx)
			}
		}
		freeContext(d.lctx)
		d.batch.Free()
		llama.FreeModel(d.model)
	}
}
