// Command ggufgen writes (once) the random-weight benchmark model of
// internal/ggufgen into a cache directory and prints its path, so that
// scripts/bench.sh can deploy it through the whole path.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/infer-run/infer/internal/ggufgen"
)

func main() {
	dir := flag.String("dir", filepath.Join(os.TempDir(), "infer-bench-models"), "model cache directory")
	preset := flag.String("preset", "medium", "small, medium or large")
	flag.Parse()
	var cfg ggufgen.Config
	switch *preset {
	case "small":
		cfg = ggufgen.Small
	case "medium":
		cfg = ggufgen.Medium
	case "large":
		cfg = ggufgen.Large
	default:
		fmt.Fprintf(os.Stderr, "ggufgen: unknown preset %q: small, medium or large\n", *preset)
		os.Exit(2)
	}
	path, err := ggufgen.Cached(*dir, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ggufgen:", err)
		os.Exit(1)
	}
	fmt.Println(path)
	fmt.Fprintf(os.Stderr, "ggufgen: %s, %d parameters\n", path, cfg.Parameters())
}
