package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/infer-run/infer/registry"
)

// keyLimitFlags are the restrictions `infer keys create` can put on a key.
type keyLimitFlags struct {
	deployments string
	rpm, tpm    int
	budget      float64
	share       int
}

func (f *keyLimitFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.deployments, "deployments", "", "comma-separated deployments the key may call (default: all of the tenant's)")
	cmd.Flags().IntVar(&f.rpm, "rpm", 0, "requests per minute the key may make (0: unlimited)")
	cmd.Flags().IntVar(&f.tpm, "tpm", 0, "prompt plus completion tokens per minute the key may use (0: unlimited)")
	cmd.Flags().Float64Var(&f.budget, "budget", -1, "US dollars the key may spend in total (default: unlimited)")
	cmd.Flags().IntVar(&f.share, "share", 0, "the key's weight in fair sharing, 1 to 1000: while a deployment is saturated, places go to keys in proportion to their shares (default 1)")
}

// body is the POST /v1/keys request.
func (f *keyLimitFlags) body(name, role string) (map[string]any, error) {
	if f.rpm < 0 || f.tpm < 0 {
		return nil, usageError{fmt.Errorf("--rpm and --tpm must not be negative")}
	}
	b := map[string]any{"name": name, "role": role, "requests_per_minute": f.rpm, "tokens_per_minute": f.tpm}
	if f.deployments != "" {
		var deps []string
		for _, d := range strings.Split(f.deployments, ",") {
			if d = strings.TrimSpace(d); d != "" {
				deps = append(deps, d)
			}
		}
		b["deployments"] = deps
	}
	if f.budget >= 0 {
		b["budget_usd"] = f.budget
	}
	if f.share != 0 {
		b["share"] = f.share
	}
	return b, nil
}

// usageReportFlags turn `infer usage` from a list of records into totals.
type usageReportFlags struct {
	groupBy string
	csv     bool
}

func (f *usageReportFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.groupBy, "group-by", "", "total by day, deployment or key, with runner-seconds and cost")
	cmd.Flags().BoolVar(&f.csv, "csv", false, "print CSV (totals; by day unless --group-by says otherwise)")
}

func (f *usageReportFlags) wanted() bool { return f.groupBy != "" || f.csv }

// usageGroup is a row of GET /v1/usage?group_by=…, as the registry
// computes it.
type usageGroup = registry.UsageGroup

func (f *usageReportFlags) run(ctx context.Context, c *client, path string, asJSON bool) error {
	by := f.groupBy
	if by == "" {
		by = "day"
	}
	if by != "day" && by != "deployment" && by != "key" {
		return usageError{fmt.Errorf("--group-by must be day, deployment or key")}
	}
	path += "&group_by=" + by
	var out struct {
		Data []usageGroup `json:"data"`
	}
	if err := c.json(ctx, http.MethodGet, path, nil, &out); err != nil {
		return err
	}
	if asJSON {
		return printJSON(out.Data)
	}
	money := func(v float64) string { return strconv.FormatFloat(v, 'f', 6, 64) }
	if f.csv {
		w := csv.NewWriter(os.Stdout)
		w.Write([]string{by, "requests", "prompt_tokens", "completion_tokens", "cold_starts", "runner_seconds",
			"request_cost_usd", "runner_cost_usd", "cost_usd"})
		for _, g := range out.Data {
			w.Write([]string{g.Group, strconv.FormatInt(g.Requests, 10), strconv.FormatInt(g.PromptTokens, 10),
				strconv.FormatInt(g.CompletionTokens, 10), strconv.FormatInt(g.ColdStarts, 10),
				strconv.FormatFloat(g.RunnerSeconds, 'f', 3, 64), money(g.RequestCostUSD), money(g.RunnerCostUSD), money(g.CostUSD)})
		}
		w.Flush()
		return w.Error()
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\tREQUESTS\tPROMPT\tCOMPLETION\tCOLD STARTS\tRUNNER S\tCOST USD\n", strings.ToUpper(by))
	for _, g := range out.Data {
		name := g.Group
		if name == "" && by == "key" {
			name = "(runners)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%s\n", name, g.Requests, g.PromptTokens, g.CompletionTokens,
			g.ColdStarts, g.RunnerSeconds, money(g.CostUSD))
	}
	return tw.Flush()
}

// keyLimits describes a key's restrictions for `infer keys ls`.
func keyLimits(k map[string]any) string {
	var parts []string
	if deps, _ := k["deployments"].([]any); len(deps) > 0 {
		names := make([]string, len(deps))
		for i, d := range deps {
			names[i] = fmt.Sprint(d)
		}
		parts = append(parts, "deployments="+strings.Join(names, ","))
	}
	if v := num(k["requests_per_minute"]); v > 0 {
		parts = append(parts, fmt.Sprintf("rpm=%.0f", v))
	}
	if v := num(k["tokens_per_minute"]); v > 0 {
		parts = append(parts, fmt.Sprintf("tpm=%.0f", v))
	}
	if v, ok := k["budget_usd"].(float64); ok {
		parts = append(parts, fmt.Sprintf("budget=$%g", v))
	}
	if v := num(k["share"]); v > 1 {
		parts = append(parts, fmt.Sprintf("share=%.0f", v))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}
