package runner

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/gguf"
)

// Embeddings run on a llama context of their own, never on the decode
// loops' contexts: a generation context pools nothing and its KV pool is
// shared with sequences mid-generation, and contexts of one model must not
// decode at the same time (loadDecoder). How a model's vectors are pooled:
//
//   - A GGUF that declares <arch>.pooling_type (mean, cls, last) is an
//     embedding model: llama.cpp pools each input's token vectors as the
//     model was trained to, and the runner refuses chat and completions on
//     it (a pooled model's logits are not what it was trained for, and a
//     BERT has none). So do the encoder architectures, which have no
//     causal language-model head, whatever their file says.
//   - A model that declares none (a decoder LLM such as stories260K or a
//     Llama) embeds an input as the final hidden state of its last token,
//     as Ollama does for such models: under causal attention the last
//     position is the only one that has seen the whole input. Its context
//     is created at the first embedding request, so a generative
//     deployment pays nothing for embeddings it never serves.
//
// Every vector is L2-normalised, as OpenAI's are, so a dot product is the
// cosine similarity.

// ErrInputLength is returned by Embed for an input longer than the
// context.
var ErrInputLength = errors.New("input does not fit the context")

// ErrDimensions is returned by Embed for dimensions the model cannot give.
var ErrDimensions = errors.New("dimensions exceeds the model's embedding size")

// ErrNotEmbedding is returned by Embed for a model that makes no
// embeddings (a reranker: pooling type rank).
var ErrNotEmbedding = errors.New("the model does not make embeddings")

// ErrBadToken is returned by Embed for a token ID outside the vocabulary.
var ErrBadToken = errors.New("token ID outside the vocabulary")

// embedSeqs is how many inputs one embeddings decode carries at most. A
// request's inputs are packed into as few decodes as this and the
// context's tokens allow.
const embedSeqs = 16

// embedder is an embeddings context; mu serialises its decodes.
type embedder struct {
	mu       sync.Mutex
	model    *llama.Model
	ownModel bool // loaded for the embedder (else the engine's, never decoded there)
	lctx     *llama.Context
	batch    *llama.Batch
	pooled   bool // llama.cpp pools; else the last token's vector is the input's
	nCtx     int  // the most tokens of one input, and of one decode
	nEmbd    int
	nVocab   int
	lasts    []int // the batch index of each sequence's last token
}

// embedState is the engine's embedder, made at first use.
type embedState struct {
	mu  sync.Mutex
	emb *embedder
}

// EmbeddingOnly reports whether the loaded model makes embeddings and no
// text.
func (e *Engine) EmbeddingOnly() bool { return e.info.EmbeddingOnly() }

// embedderNow returns the engine's embedder, creating it at first use.
// A failed creation is tried again by the next request.
func (e *Engine) embedderNow() (*embedder, error) {
	e.emb.mu.Lock()
	defer e.emb.mu.Unlock()
	if e.emb.emb != nil {
		return e.emb.emb, nil
	}
	if e.info.Pooling == "rank" || e.info.Pooling == "unknown" {
		return nil, fmt.Errorf("%w: its pooling type is %q (a reranker, or one this llama.cpp does not know)", ErrNotEmbedding, e.info.Pooling)
	}
	em := &embedder{nCtx: e.nCtx, pooled: e.info.EmbeddingOnly()}
	if em.pooled {
		// The engine's model: its decode loops never decode on an
		// embedding model (the runner refuses text jobs), so sharing it
		// costs no second copy of the weights.
		em.model = e.model
	} else {
		m, err := llama.LoadModelFromFile(e.cfg.ModelPath, llama.ModelParams{NumGpuLayers: e.cfg.GPULayers, UseMmap: true})
		if err != nil {
			return nil, fmt.Errorf("loading the model for embeddings: %w", err)
		}
		em.model, em.ownModel = m, true
	}
	params := llama.NewContextParams(em.nCtx, em.nCtx, embedSeqs, e.cfg.Threads, false, "")
	want := -1 // the model's own
	if em.pooled {
		setUbatch(&params, em.nCtx)
		if n := gguf.PoolingType(e.info.Pooling); n > 0 {
			setPooling(&params, n)
			want = n
		}
	}
	lctx, err := llama.NewContextWithModel(em.model, params)
	if err == nil && em.pooled && contextUbatch(lctx) != em.nCtx {
		freeContext(lctx)
		err = fmt.Errorf("the embeddings context has a physical batch of %d tokens, not %d: llama_context_params' layout differs from what setUbatch expects", contextUbatch(lctx), em.nCtx)
	}
	if err == nil && em.pooled && contextPooling(lctx) == 0 {
		// An encoder that pools nothing (pooling_type none, or none
		// said): one vector per token, which OpenAI's list cannot carry.
		freeContext(lctx)
		if em.ownModel {
			llama.FreeModel(em.model)
		}
		return nil, fmt.Errorf("%w: this %s model pools no vector per input (pooling type %q): it makes one per token", ErrNotEmbedding, e.info.Architecture, cmp.Or(e.info.Pooling, "none"))
	}
	if err == nil && ((contextPooling(lctx) != 0) != em.pooled || want >= 0 && contextPooling(lctx) != want) {
		freeContext(lctx)
		err = fmt.Errorf("the embeddings context pools by type %d, against the model's metadata (%q)", contextPooling(lctx), e.info.Pooling)
	}
	if err != nil {
		if em.ownModel {
			llama.FreeModel(em.model)
		}
		return nil, fmt.Errorf("creating the embeddings context: %w", err)
	}
	batch, err := llama.NewBatch(em.nCtx, embedSeqs, 0)
	if err != nil {
		freeContext(lctx)
		if em.ownModel {
			llama.FreeModel(em.model)
		}
		return nil, fmt.Errorf("allocating the embeddings batch: %w", err)
	}
	em.lctx, em.batch = lctx, batch
	em.nEmbd, em.nVocab = em.model.NEmbd(), em.model.NumVocab()
	e.log.Info("embeddings context ready", "pooling", cmpPooling(e.info.Pooling, em.pooled), "context", em.nCtx, "embedding", em.nEmbd)
	e.emb.emb = em
	return em, nil
}

func cmpPooling(p string, pooled bool) string {
	if pooled && p != "" {
		return p
	}
	if pooled {
		return "model's own"
	}
	return "last token"
}

// closeEmbedder frees the embedder, if one was made.
func (e *Engine) closeEmbedder() {
	e.emb.mu.Lock()
	defer e.emb.mu.Unlock()
	em := e.emb.emb
	if em == nil {
		return
	}
	freeContext(em.lctx)
	em.batch.Free()
	if em.ownModel {
		llama.FreeModel(em.model)
	}
	e.emb.emb = nil
}

// EmbedTokenize tokenizes embedding inputs as the model wants them: with
// its BOS (and, for a model whose vocabulary ends every text with one,
// EOS: BERT's [CLS] … [SEP]), the text's own special-token spellings kept
// as text.
func (e *Engine) EmbedTokenize(texts []string) ([][]int, error) {
	out := make([][]int, len(texts))
	for i, t := range texts {
		toks, err := e.model.Tokenize(t, true, false)
		if err != nil {
			return nil, fmt.Errorf("tokenizing input %d: %w", i, err)
		}
		out[i] = toks
	}
	return out, nil
}

// Embed computes one vector per input, in as few decodes as the context
// allows, and hands each to out (in input order) as L2-normalised float32s,
// little-endian: truncated to dims first when dims is not zero. An input
// longer than the context is refused before anything runs.
func (e *Engine) Embed(ctx context.Context, inputs [][]int, dims int, out func(i int, vec []byte)) error {
	em, err := e.embedderNow()
	if err != nil {
		return err
	}
	if dims > em.nEmbd {
		return fmt.Errorf("%w: dimensions is %d, but this model's embeddings have %d", ErrDimensions, dims, em.nEmbd)
	}
	if dims <= 0 {
		dims = em.nEmbd
	}
	for i, in := range inputs {
		switch {
		case len(in) == 0:
			return fmt.Errorf("%w: input %d has no tokens", ErrInputLength, i)
		case len(in) > em.nCtx:
			return fmt.Errorf("%w: input %d has %d tokens and the context holds %d; shorten it or split it into several inputs", ErrInputLength, i, len(in), em.nCtx)
		}
		for _, t := range in {
			if t < 0 || t >= em.nVocab {
				return fmt.Errorf("%w: input %d has token %d; the vocabulary has %d", ErrBadToken, i, t, em.nVocab)
			}
		}
	}
	em.mu.Lock()
	defer em.mu.Unlock()
	buf := make([]byte, 4*dims)
	for next := 0; next < len(inputs); {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := em.decode(inputs[next:])
		if err != nil {
			return err
		}
		for s := range n {
			v := em.vector(s)
			if v == nil {
				return fmt.Errorf("llama.cpp returned no embedding for input %d", next+s)
			}
			if err := normalise(v[:dims], buf); err != nil {
				return fmt.Errorf("input %d: %w", next+s, err)
			}
			out(next+s, buf)
		}
		next += n
	}
	return nil
}

// decode runs one decode of as many of inputs (from the first) as fit,
// each its own sequence from position 0, and says how many it took.
func (em *embedder) decode(inputs [][]int) (int, error) {
	em.lctx.KvCacheClear()
	em.batch.Clear()
	em.lasts = em.lasts[:0]
	n, tokens := 0, 0
	for n < len(inputs) && n < embedSeqs && tokens+len(inputs[n]) <= em.nCtx {
		in := inputs[n]
		for pos, t := range in {
			// A pooled model pools over the tokens marked as output;
			// the last-token path needs only its last.
			em.batch.Add(t, nil, pos, em.pooled || pos == len(in)-1, n)
		}
		tokens += len(in)
		em.lasts = append(em.lasts, tokens-1)
		n++
	}
	if err := decode(em.lctx, em.batch); err != nil {
		return 0, fmt.Errorf("decoding embeddings: %w", err)
	}
	return n, nil
}

// vector is sequence s's embedding from the last decode: llama.cpp's
// pooled one, else its last token's.
func (em *embedder) vector(s int) []float32 {
	if em.pooled {
		return em.lctx.GetEmbeddingsSeq(s)
	}
	return em.lctx.GetEmbeddingsIth(em.lasts[s])
}

// normalise writes v scaled to unit length into buf as little-endian
// float32s. A vector of zeros stays zeros (it has no direction); a
// non-finite one is an error.
func normalise(v []float32, buf []byte) error {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	if math.IsNaN(sum) || math.IsInf(sum, 0) {
		return errors.New("the model's embedding is not finite")
	}
	scale := 0.0
	if sum > 0 {
		scale = 1 / math.Sqrt(sum)
	}
	for i, x := range v {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(float32(float64(x)*scale)))
	}
	return nil
}
