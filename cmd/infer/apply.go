package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	"github.com/spf13/cobra"

	"github.com/infer-run/infer/registry"
)

// applyCmd creates or updates many deployments from a file through PUT
// /v1/deployments, 1,000 a request: one commit each, where `infer deploy`
// in a loop pays one per deployment (performance.md, "Many deployments").
func applyCmd() *cobra.Command {
	var (
		dryRun bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "apply FILE",
		Short: "Create or update many deployments from a JSON file (- for stdin)",
		Long: `apply creates or updates the deployments FILE lists, as PUT /v1/deployments
takes them: {"deployments": [{"name": "...", "artifact": "<sha256>", ...}, ...]}
or the list alone. Each takes the settings of 'infer deploy' (as API fields:
idle_timeout, max_runners, parallel, ...); the weights must be uploaded
already (infer deploy, or POST /v1/artifacts). A file of up to 1,000 is saved
all or none. A longer one is first checked whole (dry run), then saved 1,000
at a time; every refused deployment is listed with its index in the file.`,
		Example: `  infer apply deployments.json
  jq -n '[range(100) | {name: "tenant-\(.)", artifact: "'$SHA'", idle_timeout: "2m"}]' | infer apply -`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			items, err := readApplyFile(args[0])
			if err != nil {
				return err
			}
			c, err := newClient()
			if err != nil {
				return err
			}
			put := func(dry bool) ([]json.RawMessage, error) {
				var saved []json.RawMessage
				for start := 0; start < len(items); start += registry.MaxDeploymentBatch {
					chunk := items[start:min(len(items), start+registry.MaxDeploymentBatch)]
					path := "/v1/deployments"
					if dry {
						path += "?dry_run=true"
					}
					var out struct {
						Data []json.RawMessage `json:"data"`
					}
					err := c.json(cmd.Context(), http.MethodPut, path, map[string]any{"deployments": chunk}, &out)
					if ae := (*apiErr)(nil); errors.As(err, &ae) && len(ae.Body.Errors) > 0 {
						for _, e := range ae.Body.Errors {
							fmt.Fprintf(os.Stderr, "deployment %d (%s): %s\n", start+e.Index, e.Name, e.Error.Message)
						}
						msg := fmt.Sprintf("%d of %d deployments refused; nothing was saved", len(ae.Body.Errors), len(items))
						if start > 0 && !dry {
							msg = fmt.Sprintf("%d of %d deployments refused; the first %d were saved, none after", len(ae.Body.Errors), len(items), start)
						}
						return nil, refusedItems{msg, ae}
					} else if err != nil {
						if start > 0 && !dry {
							return nil, fmt.Errorf("%w (the first %d were saved, none after)", err, start)
						}
						return nil, err
					}
					saved = append(saved, out.Data...)
				}
				return saved, nil
			}
			if len(items) > registry.MaxDeploymentBatch && !dryRun {
				if _, err := put(true); err != nil {
					return err
				}
			}
			saved, err := put(dryRun)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(saved)
			}
			if dryRun {
				fmt.Printf("%d deployments checked, nothing saved (dry run)\n", len(saved))
			} else {
				fmt.Printf("%d deployments saved\n", len(saved))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "check every deployment and save nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the deployments as saved, as JSON")
	return cmd
}

// readApplyFile reads apply's FILE: a PUT /v1/deployments body or its list.
func readApplyFile(name string) ([]json.RawMessage, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, usageError{err}
	}
	var items []json.RawMessage
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		err = json.Unmarshal(t, &items)
	} else {
		var body struct {
			Deployments []json.RawMessage `json:"deployments"`
		}
		err = json.Unmarshal(t, &body)
		items = body.Deployments
	}
	if err != nil {
		return nil, usageError{fmt.Errorf("%s: not a list of deployments: %v", name, err)}
	}
	if len(items) == 0 {
		return nil, usageError{fmt.Errorf("%s lists no deployments", name)}
	}
	return items, nil
}

// refusedItems is apply's error when the API refused some deployments: its
// own summary, exiting as the API's refusal does (3).
type refusedItems struct {
	msg string
	ae  *apiErr
}

func (e refusedItems) Error() string { return e.msg }
func (e refusedItems) Unwrap() error { return e.ae }
