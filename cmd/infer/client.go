package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/wire"
	"github.com/infer-run/infer/registry"
)

// client talks to an activator's API as the CLI user.
type client struct {
	base string
	key  string
	http *http.Client
}

func newClient() (*client, error) {
	key := os.Getenv("INFER_API_KEY")
	if key == "" {
		// `infer dev` saves its first admin key here.
		home := env("INFER_HOME", ".infer")
		if b, err := os.ReadFile(filepath.Join(home, "admin-key")); err == nil {
			key = strings.TrimSpace(string(b))
		}
	}
	if key == "" {
		return nil, usageError{errors.New("no API key: set $INFER_API_KEY (or run 'infer dev', which saves one to $INFER_HOME/admin-key)")}
	}
	return &client{
		base: strings.TrimRight(env("INFER_URL", "http://127.0.0.1:8080"), "/"),
		key:  key,
		http: &http.Client{Transport: uploadTransport()},
	}, nil
}

// apiErr is an error response in OpenAI's shape.
type apiErr struct {
	Status int
	Body   struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    *string `json:"code"`
		} `json:"error"`
		// Errors are the refused items of a batch (PUT /v1/deployments).
		Errors []struct {
			Index int    `json:"index"`
			Name  string `json:"name"`
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		} `json:"errors"`
	}
}

func (e *apiErr) Error() string {
	if e.Body.Error.Message == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return e.Body.Error.Message
}

// do sends a request and decodes a JSON answer into out.
func (c *client) do(ctx context.Context, method, path string, body io.Reader, size int64, contentType string, out any) error {
	rc, err := c.send(ctx, method, path, body, size, contentType)
	if err != nil {
		return err
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("reading response: %w", err)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("decoding response: %w", err)
		}
	}
	return nil
}

// send sends a request with the key and returns the answer's body, to be
// read as it comes (a log stream, a CSV export) and closed; an answer
// other than 2xx is an *apiErr.
func (c *client) send(ctx context.Context, method, path string, body io.Reader, size int64, contentType string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	if size >= 0 && body != nil {
		req.ContentLength = size
	}
	if body != nil && size > expectContinueBytes {
		// The server can refuse (quota, size, key) before a byte is
		// sent.
		req.Header.Set("Expect", "100-continue")
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("calling %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		data, _ := io.ReadAll(resp.Body)
		e := &apiErr{Status: resp.StatusCode}
		json.Unmarshal(data, &e.Body)
		return nil, e
	}
	return resp.Body, nil
}

func (c *client) json(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	size := int64(-1)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body, size = bytes.NewReader(b), int64(len(b))
	}
	return c.do(ctx, method, path, body, size, "application/json", out)
}

func deployCmd() *cobra.Command {
	var (
		weights      string
		artifact     string
		idleTimeout  time.Duration
		keepWarm     time.Duration
		queueTimeout time.Duration
		minRunners   int
		maxRunners   int
		parallel     int
		contextLen   int
		queueLimit   int
		chatTemplate string
		asJSON       bool
		s3Endpoint   string
		prices       [3]float64 // prompt, completion, runner-second
		cpu, memory  string
		gpus         int
		nodeSelector map[string]string
	)
	cmd := &cobra.Command{
		Use:   "deploy NAME [--weights FILE|URL | --artifact SHA256]",
		Short: "Upload GGUF weights and create or update a deployment",
		Long: `deploy uploads a GGUF file (validated on the way; nothing is stored if it is
not valid GGUF) and points deployment NAME at it. NAME becomes the "model" of
OpenAI requests. No runner starts until a request arrives. Without --weights,
deploy changes the settings of an existing deployment; with --artifact SHA256 it
points the deployment at weights uploaded before (a rollback). Before
uploading, deploy asks the server to check the name, settings and quotas, and
hashes the file: weights the server already holds are not sent again.

--weights also takes an http://, https:// or s3://BUCKET/KEY URL: deploy
downloads it into $INFER_HOME/downloads (else the user's cache directory),
checking that it is GGUF from its first bytes, then uploads it as a file.
An interrupted download is resumed where it stopped, by the same run a few
times and by running the same command again, as long as the source's ETag
or Last-Modified is unchanged (otherwise it starts again). The size, and
the digest when the source declares one (Repr-Digest, Digest, Hugging
Face's X-Linked-Etag, a plain S3 object's MD5 ETag), are checked before the
upload. s3:// uses $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY, $AWS_REGION
and --s3-endpoint or $AWS_ENDPOINT_URL (MinIO and other S3-compatible
stores).`,
		Example: `  infer deploy stories --weights ../shared/models/stories260K.gguf --idle-timeout 10s
  infer deploy qwen --weights https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf
  AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… infer deploy llama --weights s3://models/llama.gguf --s3-endpoint http://minio:9000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			remote := remoteWeights(weights)
			if weights != "" && !remote {
				if err := checkWeightsFile(weights); err != nil {
					return err
				}
			}
			if s3Endpoint != "" && !strings.HasPrefix(weights, "s3://") {
				return usageError{errors.New("--s3-endpoint goes with --weights s3://BUCKET/KEY")}
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			spec := map[string]any{}
			if weights != "" && artifact != "" {
				return usageError{errors.New("give --weights FILE or --artifact SHA256, not both")}
			}
			if artifact != "" {
				// Weights uploaded before: a rollback, or a second
				// deployment of them.
				spec["artifact"] = artifact
			}
			fl := cmd.Flags()
			if fl.Changed("idle-timeout") {
				spec["idle_timeout"] = idleTimeout.String()
			}
			if fl.Changed("keep-warm") {
				spec["keep_warm"] = keepWarm.String()
			}
			if fl.Changed("queue-timeout") {
				spec["queue_timeout"] = queueTimeout.String()
			}
			for name, v := range map[string]int{"min-runners": minRunners, "max-runners": maxRunners, "parallel": parallel, "context": contextLen, "queue-limit": queueLimit} {
				if fl.Changed(name) {
					key := strings.ReplaceAll(name, "-", "_")
					if name == "context" {
						key = "context_length"
					}
					spec[key] = v
				}
			}
			if fl.Changed("chat-template") {
				spec["chat_template"] = chatTemplate
			}
			// Nested objects carry only the flags given, so the API keeps
			// the other values.
			setNested := func(obj, field, flag string, v any) {
				if !fl.Changed(flag) {
					return
				}
				m, _ := spec[obj].(map[string]any)
				if m == nil {
					m = map[string]any{}
					spec[obj] = m
				}
				m[field] = v
			}
			setNested("prices", "prompt_per_mtok", "price-prompt", prices[0])
			setNested("prices", "completion_per_mtok", "price-completion", prices[1])
			setNested("prices", "runner_second", "price-runner-second", prices[2])
			setNested("resources", "cpu", "cpu", cpu)
			setNested("resources", "memory", "memory", memory)
			setNested("resources", "gpus", "gpus", gpus)
			setNested("resources", "node_selector", "node-selector", nodeSelector)
			if weights != "" {
				path, sha := weights, ""
				if remote {
					// The server checks the name, settings and quota
					// before gigabytes are downloaded, not only before
					// they are uploaded.
					if err := dryRun(ctx, c, args[0], spec); err != nil {
						return err
					}
					if path, sha, err = fetchWeights(ctx, c, weights, s3Endpoint, asJSON); err != nil {
						return err
					}
				}
				if remote && path == "" {
					// The source declared a digest the server holds.
					if !asJSON {
						fmt.Fprintf(os.Stderr, "the server holds %s already (%s); not downloading it\n", cacheKeyShown(weights), short(sha))
					}
				} else if sha, err = uploadChecked(ctx, c, args[0], spec, path, sha, asJSON); err != nil {
					if remote {
						return fmt.Errorf("%w (the downloaded weights are in %s: deploy them with --weights %s)", err, path, path)
					}
					return err
				}
				spec["artifact"] = sha
				if remote && path != "" {
					// The server holds them now; the copy here is not needed.
					os.Remove(path)
				}
			}
			// --json prints the API's whole answer, not just the fields
			// the human summary uses.
			var raw json.RawMessage
			if err := c.json(ctx, http.MethodPut, "/v1/deployments/"+args[0], spec, &raw); err != nil {
				return err
			}
			if asJSON {
				return printJSON(raw)
			}
			var d deploymentInfo
			if err := json.Unmarshal(raw, &d); err != nil {
				return fmt.Errorf("reading the saved deployment: %w", err)
			}
			fmt.Printf("deployment %s → artifact %s (idle timeout %s, runners %d–%d, parallel %d, chat template %s)\n",
				d.Name, short(d.ArtifactSHA256), seconds(d.IdleTimeout), d.MinRunners, d.MaxRunners, d.Parallel, templateName(d.Template))
			fmt.Printf("call it with \"model\": %q at %s/v1/chat/completions\n", d.Name, c.base)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&weights, "weights", "", "GGUF file, or http(s):// or s3://BUCKET/KEY URL to download (resumable), to upload (skipped when the server holds it already)")
	f.StringVar(&s3Endpoint, "s3-endpoint", "", "S3-compatible endpoint of an s3:// --weights, e.g. http://127.0.0.1:9000 (default $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS)")
	f.StringVar(&artifact, "artifact", "", "sha256 of weights uploaded before (see infer artifacts ls), e.g. to roll back")
	f.DurationVar(&idleTimeout, "idle-timeout", 5*time.Minute, "stop a runner after this long without requests")
	f.DurationVar(&keepWarm, "keep-warm", 0, "after a request, keep the last runner this long even past --idle-timeout (0: off; billed as runner-seconds)")
	f.DurationVar(&queueTimeout, "queue-timeout", 5*time.Minute, "fail a request (504) that waited this long without starting")
	f.IntVar(&minRunners, "min-runners", 0, "runners kept warm (0 scales to zero)")
	f.IntVar(&maxRunners, "max-runners", 1, "most runners at once")
	f.IntVar(&parallel, "parallel", 4, "requests one runner decodes together")
	f.IntVar(&contextLen, "context", 0, "tokens per request (0: the model's trained length, at most 4096)")
	f.IntVar(&queueLimit, "queue-limit", 1000, "most requests queued or running; more get 429")
	f.StringVar(&chatTemplate, "chat-template", "", "override the chat template: "+strings.Join(chat.Names(), ", ")+" (jinja: the model's own; default: the model's own, or its family where the engine cannot run it)")
	f.Float64Var(&prices[0], "price-prompt", 0, "US dollars per 1M prompt tokens")
	f.Float64Var(&prices[1], "price-completion", 0, "US dollars per 1M completion tokens")
	f.Float64Var(&prices[2], "price-runner-second", 0, "US dollars per second a runner exists (cold start and idle cost)")
	f.StringVar(&cpu, "cpu", "", "CPU per runner where a driver places runners (Kubernetes quantity, e.g. 4 or 500m)")
	f.StringVar(&memory, "memory", "", "memory per runner where a driver places runners (e.g. 2Gi)")
	f.IntVar(&gpus, "gpus", 0, "GPUs per runner (Kubernetes driver)")
	f.StringToStringVar(&nodeSelector, "node-selector", nil, "node labels runners must run on, as key=value,... (Kubernetes driver)")
	f.BoolVar(&asJSON, "json", false, "print the deployment as JSON")
	return cmd
}

// checkWeightsFile refuses a --weights that is not a regular file before
// anything is sent: a directory would otherwise fail mid-upload, looking
// like a network error.
func checkWeightsFile(path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return usageError{fmt.Errorf("--weights %s: no such file", path)}
	case err != nil:
		return usageError{fmt.Errorf("--weights %s: %w", path, err)}
	case st.IsDir():
		return usageError{fmt.Errorf("--weights %s is a directory; give the .gguf file itself", path)}
	case !st.Mode().IsRegular():
		return usageError{fmt.Errorf("--weights %s is not a regular file; give a .gguf file", path)}
	}
	return nil
}

// seconds prints a duration the API gives in seconds as Go writes one.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

type artifactInfo struct {
	SHA256       string `json:"sha256"`
	Size         int64  `json:"size"`
	Architecture string `json:"architecture"`
}

// upload streams a weights file to the API with a progress bar on a
// terminal (not when quiet).
func upload(ctx context.Context, c *client, path string, quiet bool) (artifactInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return artifactInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return artifactInfo{}, err
	}
	var body io.Reader = f
	if !quiet && term.IsTerminal(int(os.Stderr.Fd())) {
		bar := progressbar.DefaultBytes(st.Size(), "uploading "+filepath.Base(path))
		body = io.TeeReader(f, bar)
		defer bar.Finish()
	}
	var a artifactInfo
	if err := c.do(ctx, http.MethodPost, "/v1/artifacts", body, st.Size(), "application/octet-stream", &a); err != nil {
		return artifactInfo{}, fmt.Errorf("uploading %s: %w", path, err)
	}
	return a, nil
}

// deploymentInfo mirrors the API's deployment status.
type deploymentInfo struct {
	Name           string  `json:"name"`
	ArtifactSHA256 string  `json:"artifact_sha256"`
	MinRunners     int     `json:"min_runners"`
	MaxRunners     int     `json:"max_runners"`
	Parallel       int     `json:"parallel"`
	IdleTimeout    float64 `json:"idle_timeout"` // seconds
	Template       string  `json:"template"`
	Queued         int     `json:"queued"`
	InFlight       int     `json:"in_flight"`
	Runners        []struct {
		RunnerID    string        `json:"runner_id"`
		Phase       string        `json:"phase"`
		Artifact    string        `json:"artifact"`
		InFlight    int           `json:"in_flight"`
		Slots       int           `json:"slots"`
		LastRequest time.Time     `json:"last_request"`
		Detail      string        `json:"detail"`
		Devices     []wire.Device `json:"devices"`
		GPULayers   int           `json:"gpu_layers"`
	} `json:"runners"`
}

// templateName is a deployment's template in use as the CLI shows it.
func templateName(t string) string {
	if t == "" {
		// Weights uploaded before the registry recorded their template.
		return "from the weights"
	}
	if t == chat.Jinja {
		return "jinja (the model's own)"
	}
	return t
}

func lsCmd() *cobra.Command {
	var (
		asJSON bool
		pg     pageFlags
	)
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List deployments with their runners and queues",
		Long: `ls lists deployments by name with their runners and queues: the first
--limit of them (0: all), fetched a page at a time. When more follow it says
so on stderr, with the --after that continues the list.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := pg.check(); err != nil {
				return err
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			items, next, err := c.list(cmd.Context(), "/v1/deployments", pg)
			if err != nil {
				return err
			}
			defer pg.more("deployments", next)
			if asJSON {
				return printJSON(items) // every field, not just the table's
			}
			deps := make([]deploymentInfo, len(items))
			for i, it := range items {
				if err := json.Unmarshal(it, &deps[i]); err != nil {
					return fmt.Errorf("reading deployments: %w", err)
				}
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tARTIFACT\tRUNNERS\tQUEUED\tIN FLIGHT\tIDLE TIMEOUT\tTEMPLATE\tON")
			for _, d := range deps {
				phases := make([]string, 0, len(d.Runners))
				for _, r := range d.Runners {
					phases = append(phases, r.Phase)
				}
				runners := fmt.Sprintf("%d", len(d.Runners))
				if len(phases) > 0 {
					runners += " (" + strings.Join(phases, ",") + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", d.Name, short(d.ArtifactSHA256), runners, d.Queued, d.InFlight, seconds(d.IdleTimeout), templateName(d.Template))
				// One row per runner: during a redeploy, which artifact
				// each serves shows the switch in progress.
				for _, r := range d.Runners {
					last := "no requests yet"
					if !r.LastRequest.IsZero() {
						last = "last request " + time.Since(r.LastRequest).Round(time.Second).String() + " ago"
					}
					if r.Phase == string(wire.PhaseWaiting) {
						// Not a runner yet: why none could start.
						fmt.Fprintf(tw, "  %s\t\t%s\t\t\t%s\t\n", r.RunnerID, r.Phase, r.Detail)
						continue
					}
					fmt.Fprintf(tw, "  runner %s\t%s\t%s\t\t%d/%d\t%s\t\t%s\n", r.RunnerID, short(r.Artifact), r.Phase, r.InFlight, r.Slots, last, runsOn(r.Devices, r.GPULayers))
				}
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	pg.add(cmd, 100, "a deployment name: list the ones after it")
	return cmd
}

func rmCmd() *cobra.Command {
	return deleteCmd("rm NAME", "Delete a deployment (its runners drain and stop)", "/v1/deployments/", "deleted", nil)
}

// deleteCmd is a command that DELETEs path+ARG and reports it; query, if
// not nil, returns the query string to add (with its "?").
func deleteCmd(use, short, path, done string, query func() string) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var out map[string]any
			target := path + url.PathEscape(args[0])
			if query != nil {
				target += query()
			}
			if err := c.json(cmd.Context(), http.MethodDelete, target, nil, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Printf("%s %s\n", done, args[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's answer as JSON")
	return cmd
}

func usageCmd() *cobra.Command {
	var (
		asJSON       bool
		deployment   string
		key          string
		since, until string
		rep          usageReportFlags
		pg           pageFlags
	)
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show usage records: requests, tokens, latency and cold starts",
		Long: `usage lists usage records, newest first: the first --limit of them (0: all),
fetched a page at a time, with the time, key and deployment of each request.
When more follow it says so on stderr, with the --after that continues the
list. --group-by (or --csv) prints totals per day, deployment or key instead.
--since and --until take an RFC 3339 time or an age such as 90m, 24h or 7d.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if deployment != "" {
				q.Set("deployment", deployment)
			}
			if key != "" {
				q.Set("key", key)
			}
			now := time.Now()
			for _, w := range []struct{ flag, v, param string }{{"since", since, "since"}, {"until", until, "until"}} {
				if w.v == "" {
					continue
				}
				t, err := parseWhen(w.v, now)
				if err != nil {
					return usageError{fmt.Errorf("--%s: %w", w.flag, err)}
				}
				q.Set(w.param, t.UTC().Format(time.RFC3339Nano))
			}
			if rep.wanted() {
				if cmd.Flags().Changed("limit") || pg.after != "" {
					return usageError{errors.New("--limit and --after page records; --group-by and --csv print every group")}
				}
			} else if err := pg.check(); err != nil {
				return err
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			path := "/v1/usage?" + q.Encode()
			if rep.wanted() {
				return rep.run(cmd.Context(), c, path, asJSON)
			}
			items, next, err := c.list(cmd.Context(), path, pg)
			if err != nil {
				return err
			}
			defer pg.more("usage records", next)
			if asJSON {
				return printJSON(items)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tREQUEST\tDEPLOYMENT\tKEY\tSTATUS\tPROMPT\tCOMPLETION\tQUEUE MS\tTTFT MS\tTOTAL MS\tCOLD\tCOST USD")
			for _, it := range items {
				var r registry.UsageRecord
				if err := json.Unmarshal(it, &r); err != nil {
					return fmt.Errorf("reading usage: %w", err)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%.0f\t%.0f\t%.0f\t%v\t%.6f\n", r.CreatedAt.Local().Format("2006-01-02 15:04:05"),
					r.RequestID, r.Deployment, usageKey(r), r.Status, r.PromptTokens, r.CompletionTokens,
					r.QueueWaitMS, r.TTFTMS, r.DurationMS, r.ColdStart, r.CostUSD)
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON")
	f.StringVar(&deployment, "deployment", "", "only this deployment")
	f.StringVar(&key, "key", "", "only this API key's requests (its ID)")
	f.StringVar(&since, "since", "", "only records at or after this time or age (e.g. 24h, 7d, 2026-01-02T15:04:05Z)")
	f.StringVar(&until, "until", "", "only records before this time or age (e.g. 1h, 2026-01-02T15:04:05Z)")
	rep.add(cmd)
	pg.add(cmd, 100, "a request ID: list the records older than it")
	return cmd
}

// usageKey names a record's key: its name, else its ID (a deleted key), else
// "-" (no key).
func usageKey(r registry.UsageRecord) string {
	switch {
	case r.KeyName != "":
		return r.KeyName
	case r.KeyID != "":
		return r.KeyID
	}
	return "-"
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

func short(sha string) string {
	if len(sha) > 12 {
		return sha[:12]
	}
	return sha
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func keysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create, list and revoke API keys, set their shares (admin key required)",
	}
	var role string
	var asJSON bool
	var lim keyLimitFlags
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create an API key; the key is printed once and stored only as a hash",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := newClient()
			if err != nil {
				return err
			}
			var out map[string]any
			body, err := lim.body(args[0], role)
			if err != nil {
				return err
			}
			if err := c.json(cmd.Context(), http.MethodPost, "/v1/keys", body, &out); err != nil {
				return err
			}
			if asJSON {
				return printJSON(out)
			}
			fmt.Printf("created %s key %v (%v); it is shown only now:\n\n    %v\n\n", out["role"], out["id"], out["name"], out["key"])
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "user", "user (calls deployments) or admin (also manages deployments and keys)")
	lim.add(create)
	create.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	ls := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List the tenant's API keys",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return listTable(cmd.Context(), "/v1/keys", asJSON, "ID\tNAME\tROLE\tPREFIX\tCREATED\tREVOKED\tLIMITS", func(k map[string]any) string {
				revoked := "-"
				if k["revoked_at"] != nil {
					revoked = fmt.Sprint(k["revoked_at"])
				}
				return fmt.Sprintf("%v\t%v\t%v\t%v…\t%v\t%s\t%s", k["id"], k["name"], k["role"], k["prefix"], k["created_at"], revoked, keyLimits(k))
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	// Revoking the key this CLI calls with locks it out; the API refuses
	// it (409, naming this flag) unless asked explicitly.
	var allowSelf bool
	revoke := deleteCmd("revoke ID", "Revoke an API key at once", "/v1/keys/", "revoked", func() string {
		if allowSelf {
			return "?allow_self=true"
		}
		return ""
	})
	revoke.Flags().BoolVar(&allowSelf, "allow-self", false, "allow revoking the key this command authenticates with (it stops working at once)")
	var share int
	var shareJSON bool
	setShare := &cobra.Command{
		Use:     "share ID",
		Short:   "Change a key's share: its weight when a saturated deployment's places are shared between keys",
		Example: "  infer keys share key_abc --share 3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("share") {
				return usageError{fmt.Errorf("give --share N (1 to %d)", registry.MaxShare)}
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			var out map[string]any
			if err := c.json(cmd.Context(), http.MethodPatch, "/v1/keys/"+url.PathEscape(args[0]), map[string]any{"share": share}, &out); err != nil {
				return err
			}
			if shareJSON {
				return printJSON(out)
			}
			fmt.Printf("key %v (%v) has share %v\n", out["id"], out["name"], out["share"])
			return nil
		},
	}
	setShare.Flags().IntVar(&share, "share", 1, fmt.Sprintf("the key's weight, 1 to %d: a key with share 3 gets three places for each one a key with share 1 gets", registry.MaxShare))
	setShare.Flags().BoolVar(&shareJSON, "json", false, "print JSON")
	cmd.AddCommand(create, ls, revoke, setShare)
	return cmd
}
