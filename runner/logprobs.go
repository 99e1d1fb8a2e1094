package runner

/*
#include <stdint.h>
#include <string.h>
struct llama_context;
float * llama_get_logits_ith(struct llama_context * ctx, int32_t i);

// infer_exp_neg is e^x for x <= 0, within 1e-6 relative error
// (TestExpNeg): x = n*ln2 + f with n an integer and |f| <= ln2/2 (ln2
// split in two so n*ln2 loses no bits), e^f by its Taylor polynomial of
// degree 6, 2^n by the float's exponent bits. Below -87 it is 0:
// float32's smallest normal is e^-87.3, and a term that small changes no
// sum of terms of which one (the maximum's) is 1. It has no branch, so
// the loops below vectorize (8 lanes with AVX2).
static inline float infer_exp_neg(float x) {
	const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
	int ok = x > -87.0f; // false for NaN too
	x = ok ? x : 0.0f;
	float n = (float)(int32_t)(x * 1.4426950408889634f - 0.5f);
	float f = x - n * ln2_hi - n * ln2_lo;
	float p = 1 + f * (1 + f * (1.0f / 2 + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
	int32_t bits = ((int32_t)n + 127) << 23;
	float two_n;
	memcpy(&two_n, &bits, sizeof two_n);
	return ok ? p * two_n : 0.0f;
}

#ifdef __AVX2__
#include <immintrin.h>
#endif

// infer_sum_exp is sum(exp(x - max)) over x, with max (x's maximum;
// NaNs are skipped) in *max. With AVX2 (make build's -march=x86-64-v3)
// eight lanes at once, infer_exp_neg's steps with FMA; the lanes sum in
// float32 over blocks of 1,024 values, each block's total in a double, so
// the error stays near float32's rounding of one term.
static double infer_sum_exp(const float *x, int64_t n, float *max) {
	int64_t i = 0;
	float mm = -__builtin_inff();
#ifdef __AVX2__
	__m256 vmax = _mm256_set1_ps(-__builtin_inff());
	for (; i + 8 <= n; i += 8)
		vmax = _mm256_max_ps(_mm256_loadu_ps(x + i), vmax); // a NaN gives vmax
	float lanes[8];
	_mm256_storeu_ps(lanes, vmax);
	for (int j = 0; j < 8; j++) mm = lanes[j] > mm ? lanes[j] : mm;
#endif
	for (int64_t k = i; k < n; k++) mm = x[k] > mm ? x[k] : mm;
	*max = mm;
	if (mm == -__builtin_inff()) return 0;
	double sum = 0;
	i = 0;
#ifdef __AVX2__
	const __m256 vm = _mm256_set1_ps(mm), lo = _mm256_set1_ps(-87.0f), log2e = _mm256_set1_ps(1.4426950408889634f),
		half = _mm256_set1_ps(0.5f), ln2_hi = _mm256_set1_ps(0.693145751953125f), ln2_lo = _mm256_set1_ps(1.428606765330187e-06f),
		c6 = _mm256_set1_ps(1.0f / 720), c5 = _mm256_set1_ps(1.0f / 120), c4 = _mm256_set1_ps(1.0f / 24),
		c3 = _mm256_set1_ps(1.0f / 6), c2 = _mm256_set1_ps(1.0f / 2), one = _mm256_set1_ps(1.0f);
	const __m256i bias = _mm256_set1_epi32(127);
	while (i + 8 <= n) {
		__m256 acc = _mm256_setzero_ps();
		int64_t end = i + 1024 < n ? i + 1024 : n;
		for (; i + 8 <= end; i += 8) {
			__m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
			__m256 keep = _mm256_cmp_ps(v, lo, _CMP_GT_OQ); // false for NaN
			v = _mm256_max_ps(v, lo);                       // a NaN gives -87
			__m256i ni = _mm256_cvttps_epi32(_mm256_fmsub_ps(v, log2e, half));
			__m256 nf = _mm256_cvtepi32_ps(ni);
			__m256 f = _mm256_fnmadd_ps(nf, ln2_lo, _mm256_fnmadd_ps(nf, ln2_hi, v));
			__m256 p = _mm256_fmadd_ps(f, c6, c5);
			p = _mm256_fmadd_ps(f, p, c4);
			p = _mm256_fmadd_ps(f, p, c3);
			p = _mm256_fmadd_ps(f, p, c2);
			p = _mm256_fmadd_ps(f, p, one);
			p = _mm256_fmadd_ps(f, p, one);
			__m256 two_n = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, bias), 23));
			acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_mul_ps(p, two_n), keep));
		}
		_mm256_storeu_ps(lanes, acc);
		for (int j = 0; j < 8; j++) sum += lanes[j];
	}
#endif
	for (; i < n; i++) sum += infer_exp_neg(x[i] - mm);
	return sum;
}
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
// from the maximum so no exp overflows. In C, so it vectorizes: over a
// 128k vocabulary math.Exp took ~2.2 ms a token, the same polynomial in
// Go 0.73 ms, in C with AVX2 0.048 ms; the whole step with 20
// alternatives went from 0.85 to 0.19 ms (BenchmarkLogprobStep), against
// a GPU's decode step of 16 sequences of a few ms.
func logSumExp(logits []float32) float32 {
	if len(logits) == 0 {
		return float32(math.Inf(-1))
	}
	var m C.float
	s := C.infer_sum_exp((*C.float)(unsafe.Pointer(&logits[0])), C.int64_t(len(logits)), &m)
	if math.IsInf(float64(m), -1) {
		return float32(m)
	}
	return float32(m) + float32(math.Log(float64(s)))
}

// expNeg is e^x for x ≤ 0 (infer_exp_neg), for its test.
func expNeg(x float32) float32 { return float32(C.infer_exp_neg(C.float(x))) }

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
