package main

import "time"

// tokenChunk is one streamed chunk that carried output: when it arrived
// (since the request was sent), its content's length in bytes, and how
// many tokens it carried (-1 until known).
type tokenChunk struct {
	at     time.Duration
	bytes  int
	tokens int
}

// How a request's tokens were counted per chunk, best first.
const (
	countLogprobs = "logprobs" // one logprobs entry per token: exact
	countUsage    = "usage"    // the final usage spread over chunks by their bytes: an estimate
	countChunks   = "chunks"   // one token per chunk: what servers that say nothing allow
)

// countTokens fills in the chunks' unknown token counts and says how they
// were counted. Chunks with a count (from logprobs) keep it; usage (the
// completion_tokens of the final usage chunk, -1 if none came) less those
// is spread over the others in proportion to their bytes, at least one
// each; without usage each counts one.
func countTokens(chunks []tokenChunk, usage int) string {
	known, unknownBytes, unknown := 0, 0, 0
	for _, c := range chunks {
		if c.tokens >= 0 {
			known += c.tokens
		} else {
			unknown++
			unknownBytes += c.bytes
		}
	}
	if unknown == 0 {
		return countLogprobs
	}
	if usage < 0 {
		for i := range chunks {
			if chunks[i].tokens < 0 {
				chunks[i].tokens = 1
			}
		}
		return countChunks
	}
	left := max(usage-known, unknown)
	// Each chunk's share of a running total, so that the shares add up
	// to left; a chunk without text (a server that sends none) weighs
	// as much as any other.
	weight := func(c tokenChunk) int {
		if unknownBytes == 0 {
			return 1
		}
		return c.bytes
	}
	total := unknown
	if unknownBytes > 0 {
		total = unknownBytes
	}
	acc, given := 0, 0
	for i := range chunks {
		if chunks[i].tokens >= 0 {
			continue
		}
		acc += weight(chunks[i])
		n := max(left*acc/total-given, 1)
		chunks[i].tokens = n
		given += n
	}
	return countUsage
}

// tokenGaps is the time per output token of every token after the first
// chunk: a chunk of k tokens that arrived g after the one before counts k
// gaps of g/k, since its tokens were made during g. The tokens that came
// with the first token have no gap of their own (they are part of the
// time to first token). Measured per chunk instead, a server that sends
// 13 tokens every 2 ms (infer coalesces tokens for 2 ms) would seem to
// take 2 ms per token rather than 0.15.
func tokenGaps(chunks []tokenChunk) []time.Duration {
	var gaps []time.Duration
	for i := 1; i < len(chunks); i++ {
		k := chunks[i].tokens
		if k <= 0 {
			continue
		}
		g := (chunks[i].at - chunks[i-1].at) / time.Duration(k)
		for range k {
			gaps = append(gaps, g)
		}
	}
	return gaps
}
