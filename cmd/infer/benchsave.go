package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// benchRun is what `infer bench --out` saves: enough to know later what
// was measured, where and with which build, and to compare (--compare).
type benchRun struct {
	Version  string        `json:"infer_version"`
	Time     time.Time     `json:"time"`
	Machine  benchMachine  `json:"machine"`
	Settings benchSettings `json:"settings"`
	Rows     []benchRow    `json:"rows"`
}

// benchMachine is the machine the benchmark ran on (the client's; for
// infer dev also the server's).
type benchMachine struct {
	Hostname    string `json:"hostname"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model,omitempty"`
	MemoryBytes int64  `json:"memory_bytes,omitempty"`
	LoadAverage string `json:"load_average,omitempty"`
}

type benchSettings struct {
	URL          string    `json:"url"` // credentials and secret query values hidden
	Model        string    `json:"model"`
	Prompt       string    `json:"prompt"`
	MaxTokens    int       `json:"max_tokens"`
	Concurrency  []int     `json:"concurrency,omitempty"`
	Requests     int       `json:"requests,omitempty"` // per concurrency level
	Rates        []float64 `json:"rates,omitempty"`
	RateRequests int       `json:"rate_requests,omitempty"` // per rate level; 0: --duration only
	Duration     string    `json:"duration,omitempty"`
	Seed         int64     `json:"seed,omitempty"`
	Cold         bool      `json:"cold,omitempty"`
	TokenCount   string    `json:"token_count"`
	Timeout      string    `json:"timeout"`
}

func thisMachine() benchMachine {
	m := benchMachine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	m.Hostname, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
				kib, _ := strconv.ParseInt(f[1], 10, 64)
				m.MemoryBytes = kib << 10
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(b)); len(f) >= 3 {
			m.LoadAverage = strings.Join(f[:3], " ")
		}
	}
	return m
}

func writeBenchRun(path string, run benchRun) error {
	b, err := json.MarshalIndent(run, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	return nil
}

func readBenchRun(path string) (*benchRun, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var run benchRun
	if err := json.Unmarshal(b, &run); err != nil {
		return nil, fmt.Errorf("%s is not a run saved with --out: %w", path, err)
	}
	if len(run.Rows) == 0 {
		return nil, fmt.Errorf("%s holds no levels (not a run saved with --out?)", path)
	}
	return &run, nil
}

// sameLevel reports whether two rows measured the same level.
func sameLevel(a, b benchRow) bool {
	return a.Cold == b.Cold && a.Concurrency == b.Concurrency && a.Rate == b.Rate
}

// ratio is now/before as the comparison prints it: below 1 is faster for
// times, slower for rates.
func ratio(now, before float64) string {
	if before == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", now/before)
}

// printComparison prints, for each level also in the saved run, every
// figure divided by the saved one.
func printComparison(w io.Writer, path string, before benchRun, rows []benchRow) {
	fmt.Fprintf(w, "\ncompared with %s (%s, %s): this run ÷ that run; times below 1× are faster, TOKENS/S and REQ/S above 1× are faster\n",
		path, before.Time.Format(time.RFC3339), before.Version)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "LEVEL\tTTFT p50\tp90\tp99\tTPOT p50\tp90\tp99\tE2E p50\tp90\tp99\tTOKENS/S\tREQ/S\tERRORS\t")
	for _, r := range rows {
		var old *benchRow
		for i := range before.Rows {
			if sameLevel(before.Rows[i], r) {
				old = &before.Rows[i]
				break
			}
		}
		if old == nil {
			fmt.Fprintf(tw, "%s\tnot in %s\t\t\t\t\t\t\t\t\t\t\t\t\n", levelName(r), path)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d→%d\t\n", levelName(r),
			ratio(r.TTFTp50ms, old.TTFTp50ms), ratio(r.TTFTp90ms, old.TTFTp90ms), ratio(r.TTFTp99ms, old.TTFTp99ms),
			ratio(r.TPOTp50ms, old.TPOTp50ms), ratio(r.TPOTp90ms, old.TPOTp90ms), ratio(r.TPOTp99ms, old.TPOTp99ms),
			ratio(r.E2Ep50ms, old.E2Ep50ms), ratio(r.E2Ep90ms, old.E2Ep90ms), ratio(r.E2Ep99ms, old.E2Ep99ms),
			ratio(r.TokensPerSec, old.TokensPerSec), ratio(r.RequestsPerS, old.RequestsPerS), old.Errors, r.Errors)
	}
	tw.Flush()
}
