package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// poissonArrivals is when each request of a Poisson process of rate
// requests per second is sent, as offsets from the start: independent
// exponential gaps with mean 1/rate, drawn from rng so that a seed repeats
// a run. It stops after n requests (n <= 0: no limit) or at within (0: no
// limit); at least one limit must be set.
func poissonArrivals(rate float64, n int, within time.Duration, rng *rand.Rand) []time.Duration {
	if rate <= 0 || n <= 0 && within <= 0 {
		return nil
	}
	var at []time.Duration
	var t float64 // seconds
	for n <= 0 || len(at) < n {
		t += rng.ExpFloat64() / rate
		d := time.Duration(t * float64(time.Second))
		if within > 0 && d >= within {
			break
		}
		at = append(at, d)
	}
	return at
}

// rateLevel sends a request at each arrival time, however many are still
// running (an open loop, as independent users do), and summarises them
// once all have finished.
func (b *bencher) rateLevel(ctx context.Context, rate float64, at []time.Duration, bar *progressbar.ProgressBar) benchRow {
	results := make([]benchResult, len(at))
	var wg sync.WaitGroup
	start := time.Now()
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	for i, a := range at {
		if wait := time.Until(start.Add(a)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				wg.Wait()
				row := summarize(0, results[:i], time.Since(start))
				row.Rate = rate
				return row
			case <-timer.C:
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = b.one(ctx)
			if bar != nil {
				bar.Add(1)
			}
		}()
	}
	wg.Wait()
	row := summarize(0, results, time.Since(start))
	row.Rate = rate
	return row
}
