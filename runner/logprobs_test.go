package runner

import (
	"bytes"
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/infer-run/infer/internal/wire"
)

func TestTopTokens(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tt := range []struct{ vocab, k int }{{1, 1}, {3, 5}, {512, 1}, {512, 5}, {512, 20}, {32000, 20}} {
		logits := make([]float32, tt.vocab)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 4)
		}
		logits[tt.vocab/2] = logits[0] // a tie
		dst := make([]int32, tt.k)
		n := topTokens(logits, dst)
		want := make([]int32, tt.vocab)
		for i := range want {
			want[i] = int32(i)
		}
		slices.SortStableFunc(want, func(a, b int32) int {
			switch {
			case logits[a] > logits[b]:
				return -1
			case logits[a] < logits[b]:
				return 1
			}
			return 0
		})
		want = want[:min(tt.k, tt.vocab)]
		if n != len(want) {
			t.Fatalf("vocab %d k %d: filled %d, want %d", tt.vocab, tt.k, n, len(want))
		}
		for i := range want { // ties may come in either order: compare logits
			if logits[dst[i]] != logits[want[i]] {
				t.Errorf("vocab %d k %d: entry %d is token %d (%g), want %d (%g)", tt.vocab, tt.k, i, dst[i], logits[dst[i]], want[i], logits[want[i]])
			}
		}
	}
}

func TestLogSumExp(t *testing.T) {
	for _, tt := range []struct {
		logits []float32
		want   float64
	}{
		{[]float32{0}, 0},
		{[]float32{0, 0}, math.Log(2)},
		{[]float32{1000, 1000}, 1000 + math.Log(2)}, // exp(1000) overflows
		{[]float32{-1000, 0}, 0},
		{[]float32{float32(math.Inf(-1)), 0}, 0}, // a banned token
	} {
		if got := logSumExp(tt.logits); math.Abs(float64(got)-tt.want) > 1e-4 {
			t.Errorf("logSumExp(%v) = %g, want %g", tt.logits, got, tt.want)
		}
	}
	// Vocabularies long enough for the vector path (8 lanes, blocks of
	// 1,024) and its scalar tail, with banned tokens and NaNs among them,
	// against float64 arithmetic.
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{7, 8, 9, 1023, 1025, 32000, 128256} {
		logits := make([]float32, n)
		for i := range logits {
			logits[i] = float32(rng.NormFloat64() * 4)
		}
		logits[n/2] = float32(math.Inf(-1))
		if n > 8 {
			logits[n/3] = float32(math.NaN())
		}
		m := math.Inf(-1)
		for _, x := range logits {
			if float64(x) > m {
				m = float64(x)
			}
		}
		sum := 0.0
		for _, x := range logits {
			if !math.IsNaN(float64(x)) {
				sum += math.Exp(float64(x) - m)
			}
		}
		want := m + math.Log(sum)
		if got := logSumExp(logits); math.Abs(float64(got)-want) > 1e-5*math.Max(1, math.Abs(want)) {
			t.Errorf("logSumExp of %d random logits = %.7g, want %.7g", n, got, want)
		}
	}
}

func TestExpNeg(t *testing.T) {
	worst := 0.0
	for x := float32(0); x > -87; x -= 0.0137 {
		want := math.Exp(float64(x))
		if rel := math.Abs(float64(expNeg(x))-want) / want; rel > worst {
			worst = rel
		}
	}
	if worst > 1e-6 {
		t.Errorf("expNeg's worst relative error %g, want at most 1e-6", worst)
	}
	for _, x := range []float32{-87.5, -1000, float32(math.Inf(-1)), float32(math.NaN())} {
		if got := expNeg(x); got != 0 {
			t.Errorf("expNeg(%g) = %g, want 0", x, got)
		}
	}
	if got := expNeg(0); got != 1 {
		t.Errorf("expNeg(0) = %g", got)
	}
}

func TestLogitBiasChecks(t *testing.T) {
	if _, err := logitBias(map[int32]float32{512: 1}, 512); !errors.Is(err, ErrBadLogitBias) {
		t.Errorf("token past the vocabulary: %v", err)
	}
	if _, err := logitBias(map[int32]float32{-1: 1}, 512); !errors.Is(err, ErrBadLogitBias) {
		t.Errorf("negative token: %v", err)
	}
	if _, err := logitBias(map[int32]float32{3: 101}, 512); !errors.Is(err, ErrBadLogitBias) {
		t.Errorf("bias 101: %v", err)
	}
	b, err := logitBias(map[int32]float32{9: -100, 2: 5}, 512)
	if err != nil || len(b) != 2 || b[0].tok != 2 {
		t.Fatalf("logitBias = %v, %v; want sorted by token", b, err)
	}
	logits := []float32{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}
	raw := make([]float32, len(b))
	applyBias(logits, b, raw)
	if logits[2] != 7 || !math.IsInf(float64(logits[9]), -1) {
		t.Errorf("biased logits %v", logits)
	}
	if rawLogit(logits, b, raw, 9) != 9 || rawLogit(logits, b, raw, 2) != 2 || rawLogit(logits, b, raw, 4) != 4 {
		t.Errorf("raw logits not restored")
	}
}

// lpCollect is a collect that takes logprobs.
type lpCollect struct {
	*collect
	mu  sync.Mutex
	lps []wire.TokenLogprob
}

func (c *lpCollect) Logprob(lp wire.TokenLogprob) {
	c.mu.Lock()
	c.lps = append(c.lps, lp)
	c.mu.Unlock()
}

// TestEngineLogprobs: with greedy sampling each token is its position's
// most likely, so it heads its own top list with the same logprob; the
// tokens spell the text; the alternatives are in order and their
// probabilities sum to at most 1.
func TestEngineLogprobs(t *testing.T) {
	e := loadTestEngine(t, 2, 256)
	c := &lpCollect{collect: newCollect()}
	if _, err := e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 30, Sampling: greedy(), Logprobs: true, TopLogprobs: 5}, c); err != nil {
		t.Fatal(err)
	}
	text := c.wait(t)
	if c.err != nil {
		t.Fatal(c.err)
	}
	if len(c.lps) != c.usage.CompletionTokens {
		t.Fatalf("%d logprobs for %d tokens", len(c.lps), c.usage.CompletionTokens)
	}
	var spelled []byte
	for i, lp := range c.lps {
		spelled = append(spelled, lp.Token...)
		if len(lp.Top) != 5 {
			t.Fatalf("token %d: %d alternatives, want 5", i, len(lp.Top))
		}
		if !bytes.Equal(lp.Top[0].Token, lp.Token) || lp.Top[0].Logprob != lp.Logprob {
			t.Errorf("token %d %q (%g) is greedy but its top is %q (%g)", i, lp.Token, lp.Logprob, lp.Top[0].Token, lp.Top[0].Logprob)
		}
		sum := 0.0
		for j, a := range lp.Top {
			if a.Logprob > 0 || j > 0 && a.Logprob > lp.Top[j-1].Logprob {
				t.Errorf("token %d: alternatives out of order or positive: %+v", i, lp.Top)
			}
			sum += math.Exp(float64(a.Logprob))
		}
		if sum > 1.0001 || sum <= 0 {
			t.Errorf("token %d: top-5 probabilities sum to %g", i, sum)
		}
	}
	if string(spelled) != text {
		t.Errorf("tokens spell %q, the text is %q", spelled, text)
	}

	// Without logprobs the same request writes the same text.
	plain := generate(t, e, Request{Prompt: "Once upon a time", MaxTokens: 30, Sampling: greedy()}).wait(t)
	if plain != text {
		t.Errorf("logprobs changed the text:\n%q\n%q", text, plain)
	}
}

// TestEngineLogitBias: banning the greedy first token changes it, and a
// +100 bias forces a token at every step.
func TestEngineLogitBias(t *testing.T) {
	e := loadTestEngine(t, 2, 256)
	first := func(bias map[int32]float32) ([]byte, string) {
		t.Helper()
		s := greedy()
		s.LogitBias = bias
		c := &lpCollect{collect: newCollect()}
		if _, err := e.Submit(context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 5, Sampling: s, Logprobs: true}, c); err != nil {
			t.Fatal(err)
		}
		text := c.wait(t)
		if c.err != nil || len(c.lps) == 0 {
			t.Fatalf("bias %v: %v, %d tokens", bias, c.err, len(c.lps))
		}
		return c.lps[0].Token, text
	}
	tok0, _ := first(nil)
	// The tokens that write a text (a byte token may write the same as
	// a merged one), from the vocabulary.
	tokenIDs := func(piece string) []int {
		var ids []int
		for id := range e.model.NumVocab() {
			if e.model.TokenToPiece(id) == piece {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 {
			t.Fatalf("no token %q", piece)
		}
		return ids
	}
	ban := map[int32]float32{}
	for _, id := range tokenIDs(string(tok0)) {
		ban[int32(id)] = -100
	}
	if banned, _ := first(ban); bytes.Equal(banned, tok0) {
		t.Errorf("banned tokens %v (%q) were still sampled", ban, tok0)
	}
	cat := tokenIDs("at")[0]
	if _, text := first(map[int32]float32{int32(cat): 100}); text != strings.Repeat(e.model.TokenToPiece(cat), 5) {
		t.Errorf("token %d forced by +100: got %q", cat, text)
	}
	s := greedy()
	s.LogitBias = map[int32]float32{1 << 20: 1}
	if _, err := e.Submit(context.Background(), Request{Prompt: "hi", MaxTokens: 1, Sampling: s}, newCollect()); !errors.Is(err, ErrBadLogitBias) {
		t.Errorf("a token past the vocabulary: %v, want ErrBadLogitBias", err)
	}
}

// TestCovered: a token's logprob goes once its text begins to be
// delivered; an empty token once the text before it is.
func TestCovered(t *testing.T) {
	lps := []wire.TokenLogprob{{Token: []byte("Once")}, {Token: []byte(" upon")}, {Token: nil}, {Token: []byte(" a.")}}
	for _, tt := range []struct{ at, released, n, after int }{
		{0, 0, 0, 0},
		{0, 1, 1, 4},   // "O" of "Once"
		{0, 4, 1, 4},   // " upon" not begun
		{0, 5, 2, 9},   // " upon" begun
		{0, 9, 3, 9},   // " upon" delivered, and the empty token after it
		{0, 11, 4, 12}, // " a" delivered, "." held back: the token goes
		{4, 9, 2, 9},
	} {
		if n, after := covered(lps[len(lps)-countFrom(lps, tt.at):], tt.at, tt.released); n != tt.n || after != tt.after {
			t.Errorf("covered(at %d, released %d) = %d, %d; want %d, %d", tt.at, tt.released, n, after, tt.n, tt.after)
		}
	}
}

// countFrom is how many of lps start at or after text offset at.
func countFrom(lps []wire.TokenLogprob, at int) int {
	off := 0
	for i, lp := range lps {
		if off >= at {
			return len(lps) - i
		}
		off += len(lp.Token)
	}
	return 0
}
