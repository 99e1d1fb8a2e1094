package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"testing"

	"github.com/infer-run/infer/internal/blob"
	"github.com/infer-run/infer/internal/testenv"
)

// cliAs runs the CLI with another API key.
func (p *platform) cliAs(key string, args ...string) (string, error) {
	cmd := exec.Command(p.bin, args...)
	cmd.Env = append(append([]string{}, p.env...), "INFER_API_KEY="+key)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestTenantsCLI runs an operator's day with the CLI only: create a tenant
// with quotas, which deploys with its own key (the name and quota are
// checked before the upload, and weights it holds already are not sent
// again), lists and tries to delete its weights, rolls back by digest,
// gets suspended and resumed, exports an invoice, and is deleted once its
// deployments are.
func TestTenantsCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatform(t)
	var created struct {
		Tenant   struct{ ID, Name string } `json:"tenant"`
		AdminKey struct{ Key string }      `json:"admin_key"`
	}
	p.cliJSON(t, &created, "tenants", "create", "acme", "--max-deployments", "1", "--max-runners", "1")
	id, key := created.Tenant.ID, created.AdminKey.Key
	if id == "" || !strings.HasPrefix(key, "sk-infer-") {
		t.Fatalf("tenants create: %+v", created)
	}
	waitKey(t, p, key)
	model := testenv.ModelPath(t)
	must := func(out string, err error) string {
		t.Helper()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
	must(p.cliAs(key, "deploy", "stories", "--weights", model))
	// The same weights again: hashed, found, not sent.
	if out := must(p.cliAs(key, "deploy", "stories", "--weights", model, "--parallel", "2")); !strings.Contains(out, "not uploading it again") {
		t.Errorf("redeploying held weights uploaded them again:\n%s", out)
	}
	// A second deployment is over the quota: refused before the upload.
	out, err := p.cliAs(key, "deploy", "second", "--weights", model)
	if err == nil || !strings.Contains(out, "nothing was uploaded") || !strings.Contains(out, "quota") {
		t.Errorf("deploy over the deployment quota: %v\n%s", err, out)
	}

	var arts []struct {
		SHA256      string   `json:"sha256"`
		Deployments []string `json:"deployments"`
	}
	cmd := exec.Command(p.bin, "artifacts", "ls", "--json")
	cmd.Env = append(append([]string{}, p.env...), "INFER_API_KEY="+key)
	b, err := cmd.Output()
	if err != nil || json.Unmarshal(b, &arts) != nil || len(arts) != 1 || arts[0].Deployments[0] != "stories" {
		t.Fatalf("artifacts ls: %v %s", err, b)
	}
	if out, err := p.cliAs(key, "artifacts", "rm", arts[0].SHA256); err == nil || !strings.Contains(out, "stories") {
		t.Errorf("artifacts rm of weights in use: %v\n%s", err, out)
	}
	must(p.cliAs(key, "deploy", "stories", "--artifact", arts[0].SHA256))

	// The object behind the record goes missing (a bucket emptied): the
	// server says it does not hold the weights, so deploying again sends
	// them, the record follows the new object, and the deployment serves.
	blobs, err := blob.NewS3(context.Background(), p.s3)
	if err != nil {
		t.Fatal(err)
	}
	var object string
	if code, _, b := p.do(http.MethodGet, "/v1/artifacts/"+arts[0].SHA256, key, ""); code != http.StatusOK ||
		json.Unmarshal(b, &struct {
			ObjectKey *string `json:"object_key"`
		}{&object}) != nil || object == "" {
		t.Fatalf("GET the artifact: %d %s", code, b)
	}
	if err := blobs.Delete(context.Background(), object); err != nil {
		t.Fatal(err)
	}
	if out := must(p.cliAs(key, "deploy", "stories", "--weights", model)); strings.Contains(out, "not uploading it again") {
		t.Errorf("deploying weights whose object is gone skipped the upload:\n%s", out)
	}
	if code, _, b := p.do(http.MethodPost, "/v1/chat/completions", key, `{"model":"stories","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`); code != http.StatusOK {
		t.Errorf("a request on the weights uploaded again: %d %s", code, b)
	}

	// Suspended, its key is refused; resumed, it works again.
	must(p.cli("tenants", "suspend", id))
	if out, err := p.cliAs(key, "ls"); err == nil || !strings.Contains(out, "suspended") {
		t.Errorf("infer ls of a suspended tenant: %v\n%s", err, out)
	}
	must(p.cli("tenants", "resume", id))
	must(p.cliAs(key, "ls"))

	if out := must(p.cli("tenants", "ls")); !strings.Contains(out, "acme") || !strings.Contains(out, "(operator)") ||
		!strings.Contains(out, "SPENT THIS MONTH") {
		t.Errorf("tenants ls:\n%s", out)
	}

	// A key's share: set at creation, changed in place, shown by keys ls.
	var heavy struct {
		ID    string `json:"id"`
		Share int    `json:"share"`
	}
	p.cliJSON(t, &heavy, "keys", "create", "heavy", "--share", "3")
	if heavy.Share != 3 {
		t.Errorf("keys create --share 3: share %d", heavy.Share)
	}
	if out := must(p.cli("keys", "share", heavy.ID, "--share", "5")); !strings.Contains(out, "share 5") {
		t.Errorf("keys share:\n%s", out)
	}
	if out := must(p.cli("keys", "ls")); !strings.Contains(out, "share=5") {
		t.Errorf("keys ls does not show the share:\n%s", out)
	}
	if out, err := p.cli("keys", "share", heavy.ID, "--share", "0"); err == nil || !strings.Contains(out, "share") {
		t.Errorf("keys share --share 0: %v\n%s", err, out)
	}
	cmd = exec.Command(p.bin, "tenants", "invoice", id, "--format", "csv")
	cmd.Env = p.env
	b, err = cmd.Output()
	rows, cerr := csv.NewReader(strings.NewReader(string(b))).ReadAll()
	if err != nil || cerr != nil || len(rows) < 2 || rows[0][0] != "tenant_id" || rows[len(rows)-1][3] != "total" {
		t.Errorf("tenants invoice --format csv: %v %v\n%s", err, cerr, b)
	}
	// Its own admin reads its invoice too.
	must(p.cliAs(key, "tenants", "invoice", id, "--json"))

	if out, err := p.cli("tenants", "rm", id); err == nil || !strings.Contains(out, "deployments") {
		t.Errorf("tenants rm with a deployment: %v\n%s", err, out)
	}
	must(p.cliAs(key, "rm", "stories"))
	must(p.cli("tenants", "rm", id))
	if out, err := p.cliAs(key, "ls"); err == nil {
		t.Errorf("the deleted tenant's key still works:\n%s", out)
	}
}
