package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// quotaFlags are a tenant's quotas as flags; only those given are sent.
type quotaFlags struct {
	maxDeployments, maxRunners, rpm, tpm int
	maxArtifactBytes                     int64
	budget                               float64
}

func (q *quotaFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&q.maxDeployments, "max-deployments", 0, "most deployments (0: unlimited)")
	f.IntVar(&q.maxRunners, "max-runners", 0, "most runners of all its deployments at once; requests beyond them queue (0: unlimited)")
	f.Int64Var(&q.maxArtifactBytes, "max-artifact-bytes", 0, "most bytes of weights held (0: unlimited)")
	f.IntVar(&q.rpm, "requests-per-minute", 0, "requests per minute across all its keys (0: unlimited)")
	f.IntVar(&q.tpm, "tokens-per-minute", 0, "tokens per minute across all its keys (0: unlimited)")
	f.Float64Var(&q.budget, "monthly-budget", 0, "US dollars a month (UTC); once the month's cost reaches it, the tenant's inference requests get 429 budget_exceeded until the month ends")
}

func (q *quotaFlags) body(cmd *cobra.Command) map[string]any {
	m := map[string]any{}
	fl := cmd.Flags()
	for flag, v := range map[string]struct {
		key string
		v   any
	}{
		"max-deployments": {"max_deployments", q.maxDeployments}, "max-runners": {"max_runners", q.maxRunners},
		"max-artifact-bytes": {"max_artifact_bytes", q.maxArtifactBytes}, "requests-per-minute": {"requests_per_minute", q.rpm},
		"tokens-per-minute": {"tokens_per_minute", q.tpm}, "monthly-budget": {"monthly_budget_usd", q.budget},
	} {
		if fl.Changed(flag) {
			m[v.key] = v.v
		}
	}
	return m
}

func tenantsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "tenants",
		Example: "  infer tenants create acme --max-deployments 5\n  infer tenants invoice tnt_abc --month 2026-12 --format csv",
		Short:   "Create, list, suspend and delete tenants, set their quotas, export invoices (platform operator)",
		Long: `tenants manages the platform's customers. Only the platform operator may: an
admin key of the tenant "default" (the one INFER_ADMIN_KEY installs). A tenant's
own admin key may read its tenant and its invoice.`,
	}
	var asJSON bool
	var q quotaFlags
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a tenant and its first admin key; the key is printed once",
		Example: "  infer tenants create acme --max-deployments 5 --max-runners 4 --max-artifact-bytes 20000000000",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var out struct {
				Tenant   map[string]any `json:"tenant"`
				AdminKey map[string]any `json:"admin_key"`
			}
			if err := c.json(cmd.Context(), http.MethodPost, "/v1/tenants", map[string]any{"name": args[0], "quotas": q.body(cmd)}, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Printf("created tenant %v (%v); its first admin key %v is shown only now:\n\n    %v\n\n",
				out.Tenant["name"], out.Tenant["id"], out.AdminKey["id"], out.AdminKey["key"])
			return nil
		},
	}
	q.add(create)
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	ls := &cobra.Command{
		Use:     "ls",
		Short:   "List tenants with their state and quotas",
		Example: "  infer tenants ls",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type tenant struct {
				ID            string         `json:"id"`
				Name          string         `json:"name"`
				SuspendedAt   *string        `json:"suspended_at"`
				Operator      bool           `json:"operator"`
				Quotas        map[string]any `json:"quotas"`
				MonthSpentUSD string         `json:"month_spent_usd"`
			}
			return listTable(cmd.Context(), "/v1/tenants", asJSON, "ID\tNAME\tSTATE\tDEPLOYMENTS\tRUNNERS\tARTIFACT BYTES\tRPM\tTPM\tMONTHLY BUDGET\tSPENT THIS MONTH", func(t tenant) string {
				state := "active"
				if t.SuspendedAt != nil {
					state = "suspended"
				}
				if t.Operator {
					state += " (operator)"
				}
				qv := func(k string) string {
					if v, ok := t.Quotas[k]; ok && num(v) != 0 {
						return fmt.Sprint(v)
					}
					return "-"
				}
				budget := qv("monthly_budget_usd")
				if b, ok := t.Quotas["monthly_budget_usd"]; ok && overBudget(t.MonthSpentUSD, num(b)) {
					budget += " (reached: requests refused)"
				}
				return fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", t.ID, t.Name, state, qv("max_deployments"), qv("max_runners"),
					qv("max_artifact_bytes"), qv("requests_per_minute"), qv("tokens_per_minute"), budget, t.MonthSpentUSD)
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var uq quotaFlags
	quota := &cobra.Command{
		Use:     "quota ID",
		Short:   "Change a tenant's quotas (the flags given; the others stay)",
		Example: "  infer tenants quota tnt_abc --max-runners 8 --tokens-per-minute 100000",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var out map[string]any
			if err := c.json(cmd.Context(), http.MethodPatch, "/v1/tenants/"+url.PathEscape(args[0]), map[string]any{"quotas": uq.body(cmd)}, &out); err != nil {
				return err
			}
			return printJSON(out)
		},
	}
	uq.add(quota)
	quota.Flags().Bool("json", true, "print JSON (always)")

	state := func(verb, short string) *cobra.Command {
		var asJSON bool
		c := &cobra.Command{
			Use:     verb + " ID",
			Short:   short,
			Example: "  infer tenants " + verb + " tnt_abc",
			Args:    cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := newClient()
				if err != nil {
					return err
				}
				var out map[string]any
				if err := c.json(cmd.Context(), http.MethodPost, "/v1/tenants/"+url.PathEscape(args[0])+"/"+verb, nil, &out); err != nil {
					return err
				}
				if asJSON {
					return printJSON(out)
				}
				fmt.Printf("%sed tenant %v (%v)\n", verb, out["name"], out["id"])
				return nil
			},
		}
		c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
		return c
	}
	rm := deleteCmd("rm ID", "Delete a tenant without deployments (its keys go; its usage stays)", "/v1/tenants/", "deleted tenant", nil)
	rm.Example = "  infer tenants rm tnt_abc"

	var month, format string
	invoice := &cobra.Command{
		Use:   "invoice ID",
		Short: "A tenant's usage and cost for a month, by deployment (JSON, CSV or a table)",
		Long: `invoice prints a tenant's usage and cost for a calendar month (UTC): one line
per deployment and their total, which is the exact sum of the lines (decimal,
never floating point). --format csv prints the CSV to keep as an invoice's basis.`,
		Example: "  infer tenants invoice tnt_abc --month 2026-12 --format csv > acme-2026-12.csv",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			q := url.Values{}
			if month != "" {
				q.Set("month", month)
			}
			path := "/v1/tenants/" + url.PathEscape(args[0]) + "/invoice?"
			if format == "csv" {
				q.Set("format", "csv")
				return c.raw(cmd.Context(), path+q.Encode(), os.Stdout)
			}
			var inv struct {
				Month string           `json:"month"`
				Lines []map[string]any `json:"lines"`
				Total map[string]any   `json:"total"`
				Over  bool             `json:"over_budget"`
			}
			var raw json.RawMessage
			if err := c.json(cmd.Context(), http.MethodGet, path+q.Encode(), nil, &raw); err != nil {
				return err
			}
			if format == "json" || asJSON {
				return printJSON(raw)
			}
			if err := json.Unmarshal(raw, &inv); err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEPLOYMENT\tREQUESTS\tPROMPT TOKENS\tCOMPLETION TOKENS\tREQUEST USD\tRUNNER SECONDS\tRUNNER USD\tUSD")
			for _, l := range append(inv.Lines, inv.Total) {
				fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v\t%v\t%v\t%v\n", l["deployment"], l["requests"], l["prompt_tokens"], l["completion_tokens"],
					l["request_cost_usd"], l["runner_seconds"], l["runner_cost_usd"], l["cost_usd"])
			}
			if inv.Over {
				fmt.Fprintln(tw, "the month's cost is over the tenant's monthly budget")
			}
			return tw.Flush()
		},
	}
	invoice.Flags().StringVar(&month, "month", "", "YYYY-MM (UTC); default the current month")
	invoice.Flags().StringVar(&format, "format", "table", "table, json or csv")
	invoice.Flags().BoolVar(&asJSON, "json", false, "print JSON (as --format json)")

	cmd.AddCommand(create, ls, quota, state("suspend", "Suspend a tenant: its keys get 403 on every activator within a second"),
		state("resume", "Resume a suspended tenant"), rm, invoice)
	return cmd
}

// overBudget reports whether spent (a decimal string) has reached budget.
func overBudget(spent string, budget float64) bool {
	// The budget as the decimal it was typed as, not its binary float.
	s, ok := new(big.Rat).SetString(spent)
	b, bok := new(big.Rat).SetString(strconv.FormatFloat(budget, 'f', -1, 64))
	return ok && bok && s.Cmp(b) >= 0
}

// raw GETs path and copies the answer (such as CSV) to w.
func (c *client) raw(ctx context.Context, path string, w io.Writer) error {
	rc, err := c.send(ctx, http.MethodGet, path, nil, -1, "")
	if err != nil {
		return err
	}
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return err
}

func artifactsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "artifacts",
		Example: "  infer artifacts ls\n  infer artifacts rm SHA256",
		Short:   "List and delete uploaded weights (admin key required)",
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:     "ls",
		Short:   "List the weights the tenant holds and the deployments using each",
		Example: "  infer artifacts ls",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type artifact struct {
				SHA256       string   `json:"sha256"`
				Size         int64    `json:"size"`
				Architecture string   `json:"architecture"`
				Quantization string   `json:"quantization"`
				CreatedAt    string   `json:"created_at"`
				Deployments  []string `json:"deployments"`
			}
			return listTable(cmd.Context(), "/v1/artifacts", asJSON, "SHA256\tSIZE\tARCH\tQUANT\tCREATED\tUSED BY", func(a artifact) string {
				used := "-"
				if len(a.Deployments) > 0 {
					used = fmt.Sprint(a.Deployments)
				}
				return fmt.Sprintf("%s\t%d\t%s\t%s\t%s\t%s", a.SHA256, a.Size, a.Architecture, a.Quantization, a.CreatedAt, used)
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rm := deleteCmd("rm SHA256", "Delete weights no deployment uses (the object goes once no tenant holds it)", "/v1/artifacts/", "deleted artifact", nil)
	rm.Example = "  infer artifacts rm 270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d"
	cmd.AddCommand(ls, rm)
	return cmd
}

// fileSHA256 hashes a weights file, so deploy can ask whether the server
// holds it before sending gigabytes (about 1–2 GB/s on one core).
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// heldArtifact reports whether the tenant holds the weights with digest
// sha (GET /v1/artifacts/{sha}).
func heldArtifact(ctx context.Context, c *client, sha string) (artifactInfo, bool, error) {
	var a artifactInfo
	err := c.json(ctx, http.MethodGet, "/v1/artifacts/"+sha, nil, &a)
	var ae *apiErr
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return a, false, nil
	}
	return a, err == nil, err
}

// expectContinueBytes is the body size above which the CLI asks the server
// to accept a request before sending its body (Expect: 100-continue).
const expectContinueBytes = 1 << 20

// uploadTransport waits for the server's 100 Continue (or its refusal)
// before sending a large body.
func uploadTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ExpectContinueTimeout = 10 * time.Second
	return t
}

// dryRun asks the server to check deployment name's settings and quota
// without changing anything.
func dryRun(ctx context.Context, c *client, name string, spec map[string]any) error {
	if err := c.json(ctx, http.MethodPut, "/v1/deployments/"+url.PathEscape(name)+"?dry_run=true", spec, nil); err != nil {
		return fmt.Errorf("the server refuses deployment %s (nothing was uploaded): %w", name, err)
	}
	return nil
}

// uploadChecked uploads weights for deployment name only once the server
// has accepted the deployment's name, settings and quota (a dry run) and
// does not hold the weights already; it returns their digest.
// sha, when not empty, is the file's digest already computed; quiet
// (--json) shows no progress bar and no note.
func uploadChecked(ctx context.Context, c *client, name string, spec map[string]any, path, sha string, quiet bool) (string, error) {
	if err := dryRun(ctx, c, name, spec); err != nil {
		return "", err
	}
	if sha == "" {
		var err error
		if sha, err = fileSHA256(path); err != nil {
			return "", err
		}
	}
	if _, held, err := heldArtifact(ctx, c, sha); err != nil {
		return "", err
	} else if held {
		if !quiet {
			fmt.Fprintf(os.Stderr, "the server holds %s already (%s); not uploading it again\n", path, short(sha))
		}
		return sha, nil
	}
	a, err := upload(ctx, c, path, quiet)
	if err != nil {
		return "", err
	}
	return a.SHA256, nil
}
