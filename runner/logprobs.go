package runner

/*
#include <stdint.h>
struct llama_context;
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"unsafe"

	"github.com/ollama/ollama/llama"

	"github.com/infer-run/infer/internal/wire"
)

// Logprobs and logit_bias work on the logits of the position a sequence
// samples from, which the llama package does not expose: llama.cpp's
// sampler reads them from llama_get_logits_ith when it samples, so biases
// written there before Sample are what it samples from.

// MaxTopLogprobs is the most alternatives a token's logprobs list
// (OpenAI's top_logprobs limit).
const MaxTopLogprobs = 20

// ErrBadLogitBias is returned by Submit for a logit_bias naming a token the
// model does not have.
var ErrBadLogitBias = errors.New("invalid logit_bias")

// logitsAt is the logits the last decode computed for batch index i, one
// per vocabulary entry; valid until the next decode.
func logitsAt(c *llama.Context, i, vocab int) []float32 {
	p := C.llama_get_logits_ith(cContext(c), C.int32_t(i))
	if p == nil {
		return nil
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(p)), vocab)
}

// biasEntry is one token's logit_bias.
type biasEntry struct {
	tok  int32
	bias float32
}

// logitBias checks a request's logit_bias against the vocabulary and
// returns it as a list sorted by token.
func logitBias(m map[int32]float32, vocab int) ([]biasEntry, error) {
	if len(m) == 0 {
		return nil, nil
	}
	out := make([]biasEntry, 0, len(m))
	for tok, b := range m {
		if tok < 0 || int(tok) >= int(vocab) {
			return nil, fmt.Errorf("%w: token %d is not in the model's vocabulary of %d tokens", ErrBadLogitBias, tok, vocab)
		}
		if math.IsNaN(float64(b)) || b < -100 || b > 100 {
			return nil, fmt.Errorf("%w: the bias of token %d must be between -100 and 100", ErrBadLogitBias, tok)
		}
		out = append(out, biasEntry{tok, b})
	}
	slices.SortFunc(out, func(a, b biasEntry) int { return int(a.tok) - int(b.tok) })
	return out, nil
}

// applyBias adds the biases to logits, saving the logits it changes in
// raw (by bias entry). -100 bans a token outright, as OpenAI documents it,
// whatever the other logits are.
func applyBias(logits []float32, bias []biasEntry, raw []float32) {
	for i, b := range bias {
		raw[i] = logits[b.tok]
		if b.bias <= -100 {
			logits[b.tok] = float32(math.Inf(-1))
		} else {
			logits[b.tok] += b.bias
		}
	}
}

// logSumExp is log(Σ exp(x)), the log-softmax's normaliser, computed
// from the maximum so no exp overflows. expNeg instead of math.Exp: over a
// 128k vocabulary math.Exp took ~2.2 ms a token here (BenchmarkLogprobStep),
// more than a GPU's decode step of 16 sequences.
func logSumExp(logits []float32) float32 {
	m := float32(math.Inf(-1))
	for _, x := range logits {
		if x > m {
			m = x
		}
	}
	if math.IsInf(float64(m), -1) {
		return m
	}
	// Four independent sums, so the CPU overlaps their exps.
	var s0, s1, s2, s3 float64
	i := 0
	for ; i+4 <= len(logits); i += 4 {
		v := logits[i : i+4 : i+4]
		s0 += float64(expNeg(v[0] - m))
		s1 += float64(expNeg(v[1] - m))
		s2 += float64(expNeg(v[2] - m))
		s3 += float64(expNeg(v[3] - m))
	}
	for ; i < len(logits); i++ {
		s0 += float64(expNeg(logits[i] - m))
	}
	return m + float32(math.Log(s0+s1+s2+s3))
}

// expNeg is e^x for x ≤ 0, within 1e-6 relative error (TestExpNeg):
// x = n·ln2 + f with n an integer and |f| ≤ ln2/2 (ln2 split in two so
// n·ln2 loses no bits), e^f by its Taylor polynomial of degree 6, 2^n by
// the float's exponent bits. Below -87 it is 0: float32's smallest
// normal is e^-87.3, and a term that small changes no sum of terms of
// which one (the maximum's) is 1.
func expNeg(x float32) float32 {
	if !(x > -87) { // NaN too
		return 0
	}
	const ln2Hi, ln2Lo = 0.693145751953125, 1.428606765330187e-06
	n := float32(int32(x*math.Log2E - 0.5)) // x < 0: truncation rounds up; -0.5 makes it nearest
	f := x - n*ln2Hi - n*ln2Lo
	p := 1 + f*(1+f*(1.0/2+f*(1.0/6+f*(1.0/24+f*(1.0/120+f*(1.0/720))))))
	return p * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// topTokens fills dst (its length is k) with the k tokens of largest logit,
// largest first, by one pass keeping the best k in order: a full sort of a
// 128k vocabulary per token would cost ~10 ms; this costs one comparison
// per entry once dst is full. It returns how many it filled (fewer than
// k only for a vocabulary smaller than k).
func topTokens(logits []float32, dst []int32) int {
	n := 0
	k := len(dst)
	for i, x := range logits {
		if n == k && x <= logits[dst[k-1]] {
			continue
		}
		j := n
		if n < k {
			n++
		} else {
			j = k - 1
		}
		for j > 0 && logits[dst[j-1]] < x {
			dst[j] = dst[j-1]
			j--
		}
		dst[j] = int32(i)
	}
	return n
}

// logprober computes one sequence's logprobs, reusing its buffers.
type logprober struct {
	top int // alternatives per token
	idx []int32
}

// before reads what the sampled token's entry needs from the raw logits,
// before biases change them: the normaliser and the top alternatives.
func (p *logprober) before(logits []float32, piece func(int) string) (lse float32, top []wire.TokenLogprob) {
	lse = logSumExp(logits)
	if p.top == 0 {
		return lse, nil
	}
	if cap(p.idx) < p.top {
		p.idx = make([]int32, p.top)
	}
	n := topTokens(logits, p.idx[:p.top])
	top = make([]wire.TokenLogprob, n)
	for i, tok := range p.idx[:n] {
		top[i] = wire.TokenLogprob{Token: []byte(piece(int(tok))), Logprob: clampLogprob(logits[tok] - lse)}
	}
	return lse, top
}

// rawLogit is a token's logit before applyBias changed it.
func rawLogit(logits []float32, bias []biasEntry, raw []float32, tok int) float32 {
	if i, ok := slices.BinarySearchFunc(bias, int32(tok), func(b biasEntry, t int32) int { return int(b.tok) - int(t) }); ok {
		return raw[i]
	}
	return logits[tok]
}

// minLogprob is what OpenAI reports for a token of probability 0 (JSON
// has no -Inf).
const minLogprob = -9999

func clampLogprob(x float32) float32 {
	if math.IsNaN(float64(x)) || x < minLogprob {
		return minLogprob
	}
	return x
}
