package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// TestDeployFromURLAndBenchRate runs, against one real `infer dev` (with
// MinIO): `infer deploy --weights http://…` from a server that drops the
// connection halfway (the CLI resumes with Range and the deployment
// serves), the same from s3:// in MinIO, clear refusals of a missing URL
// and of content that is not GGUF, and `infer bench --rate` with --out
// and --compare.
func TestDeployFromURLAndBenchRate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts the platform")
	}
	p := startPlatform(t)
	content := storiesBytes(t)
	half := len(content) / 2
	srv := &weightsServer{content: content, etag: `"stories-v1"`, dropAt: half}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	chat := func(model string) {
		t.Helper()
		b := p.mustPost("chat with "+model, "/v1/chat/completions", `{"model":"`+model+`","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":16}`)
		var r struct {
			Choices []struct {
				Message struct {
					Content string `json:"content"`
				} `json:"message"`
			} `json:"choices"`
		}
		if err := json.Unmarshal(b, &r); err != nil || len(r.Choices) == 0 || strings.TrimSpace(r.Choices[0].Message.Content) == "" {
			t.Fatalf("%s answered %s", model, b)
		}
	}

	// http, dropped halfway: the same run resumes from the bytes it has.
	stdout, stderr, status := p.run(p.env, "deploy", "web", "--weights", ts.URL+"/stories260K.gguf", "--idle-timeout", "60s", "--json")
	if status != 0 {
		t.Fatalf("deploy from http: exit %d\n%s\n%s", status, stdout, stderr)
	}
	var d struct {
		Name           string `json:"name"`
		ArtifactSHA256 string `json:"artifact_sha256"`
	}
	if err := json.Unmarshal([]byte(stdout), &d); err != nil || d.Name != "web" || d.ArtifactSHA256 != sha256Hex(content) {
		t.Fatalf("deploy --json printed %q (%v); want deployment web with artifact %s", stdout, err, sha256Hex(content))
	}
	if strings.Contains(stderr, "downloading") || strings.Contains(stderr, "resuming") {
		t.Errorf("--json must be quiet on stderr:\n%s", stderr)
	}
	reqs := srv.requests()
	if len(reqs) != 2 || reqs[1].Get("Range") != "bytes="+strconv.Itoa(half)+"-" || reqs[1].Get("If-Range") != `"stories-v1"` {
		var got []string
		for _, r := range reqs {
			got = append(got, r.Get("Range")+" / "+r.Get("If-Range"))
		}
		t.Errorf("requests (Range / If-Range): %q; want a second one from byte %d", got, half)
	}
	if left, _ := os.ReadDir(filepath.Join(p.home, "downloads")); len(left) != 0 {
		t.Errorf("downloads left after deploying: %v", left)
	}
	chat("web")

	// A source that declares its sha256 (Repr-Digest here; Hugging Face's
	// X-Linked-Etag) is not downloaded when the server holds it.
	sum := sha256Sum(content)
	srv.mu.Lock()
	srv.digest = sum
	srv.mu.Unlock()
	stdout, stderr, status = p.run(p.env, "deploy", "again", "--weights", ts.URL+"/stories260K.gguf")
	if status != 0 || !strings.Contains(stderr, "not downloading it") || !strings.Contains(stdout, "deployment again") {
		t.Errorf("deploy of held weights from a URL: exit %d\n%s\n%s", status, stdout, stderr)
	}

	// s3:// from MinIO, with the AWS variables and --s3-endpoint.
	mc, err := minio.New(p.s3.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(p.s3.AccessKey, p.s3.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := mc.MakeBucket(ctx, "weights", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := mc.PutObject(ctx, "weights", "models/stories.gguf", bytes.NewReader(content), int64(len(content)), minio.PutObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	awsEnv := append(append([]string{}, p.env...), "AWS_ACCESS_KEY_ID="+p.s3.AccessKey, "AWS_SECRET_ACCESS_KEY="+p.s3.SecretKey)
	stdout, stderr, status = p.run(awsEnv, "deploy", "froms3", "--weights", "s3://weights/models/stories.gguf", "--s3-endpoint", "http://"+p.s3.Endpoint, "--idle-timeout", "60s")
	if status != 0 || !strings.Contains(stdout, "deployment froms3") || !strings.Contains(stderr, "downloading s3://weights/models/stories.gguf") {
		t.Fatalf("deploy from s3: exit %d\n%s\n%s", status, stdout, stderr)
	}
	t.Logf("deploy from s3 (stderr):\n%s", stderr)
	chat("froms3")

	// Refusals: exit 2 with a clear message, nothing deployed.
	for _, tt := range []struct {
		url, want string
	}{
		{ts.URL + "/missing.gguf", "not found"},
		{"s3://weights/models/missing.gguf", "not found (NoSuchKey)"},
	} {
		if tt.url == ts.URL+"/missing.gguf" {
			srv.mu.Lock()
			srv.status = 404
			srv.mu.Unlock()
		}
		_, stderr, status := p.run(awsEnv, "deploy", "refused", "--weights", tt.url, "--s3-endpoint", s3EndpointFor(tt.url, p.s3.Endpoint))
		if status != exitUsage || !strings.Contains(stderr, tt.want) {
			t.Errorf("deploy --weights %s: exit %d, want %d saying %q:\n%s", tt.url, status, exitUsage, tt.want, stderr)
		}
	}
	html := httptest.NewServer(&weightsServer{content: []byte("<!doctype html><title>Sign in</title>" + strings.Repeat(" ", 4096)), etag: `"html"`})
	defer html.Close()
	_, stderr, status = p.run(p.env, "deploy", "refused", "--weights", html.URL+"/model.gguf")
	if status != exitUsage || !strings.Contains(stderr, "not a GGUF file") {
		t.Errorf("deploy of an HTML page: exit %d, want %d saying not a GGUF file:\n%s", status, exitUsage, stderr)
	}
	if code, _, b := p.do("GET", "/v1/deployments/refused", p.key, ""); code != 404 {
		t.Errorf("a refused deploy created the deployment: %d %s", code, b)
	}

	// bench --rate: Poisson arrivals, TPOT per token, the run saved.
	out := filepath.Join(t.TempDir(), "run.json")
	stdout, stderr, status = p.run(p.env, "bench", "--model", "web", "--rate", "20", "--requests", "24", "--max-tokens", "32", "--seed", "3", "--out", out, "--json")
	if status != 0 {
		t.Fatalf("bench --rate: exit %d\n%s\n%s", status, stdout, stderr)
	}
	var rows []benchRow
	if err := json.Unmarshal([]byte(stdout), &rows); err != nil || len(rows) != 1 {
		t.Fatalf("bench --json printed %q: %v", stdout, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var run benchRun
	if err := json.Unmarshal(b, &run); err != nil {
		t.Fatal(err)
	}
	r := run.Rows[0]
	if len(run.Rows) != 1 || r.Requests != rows[0].Requests || r.TPOTp99ms != rows[0].TPOTp99ms || r.TTFTp50ms != rows[0].TTFTp50ms {
		t.Errorf("saved rows %+v, printed %+v", run.Rows, rows)
	}
	if r.Rate != 20 || r.Concurrency != 0 || r.Requests != 24 || r.Errors != 0 || r.OutputTokens == 0 || r.TokenCounts != countLogprobs ||
		r.TTFTp50ms <= 0 || r.TTFTp99ms < r.TTFTp50ms || r.TPOTp50ms <= 0 || r.TPOTp99ms < r.TPOTp50ms || r.E2Ep99ms < r.E2Ep50ms || r.TokensPerSec <= 0 {
		t.Errorf("rate row %+v", r)
	}
	s := run.Settings
	if run.Version == "" || run.Time.IsZero() || run.Machine.CPUs < 1 || run.Machine.OS == "" || s.Model != "web" ||
		len(s.Rates) != 1 || s.Rates[0] != 20 || s.RateRequests != 24 || s.Seed != 3 || s.MaxTokens != 32 || s.TokenCount != countLogprobs || len(s.Concurrency) != 0 {
		t.Errorf("saved run %s", b)
	}
	for _, field := range []string{`"ttft_p90_ms"`, `"tpot_p90_ms"`, `"itl_p99_ms"`, `"e2e_p90_ms"`, `"cpu_model"`, `"infer_version"`} {
		if !bytes.Contains(b, []byte(field)) {
			t.Errorf("saved run lacks %s", field)
		}
	}
	stdout, stderr, status = p.run(p.env, "bench", "--model", "web", "--rate", "20", "--requests", "8", "--max-tokens", "32", "--compare", out)
	if status != 0 || !strings.Contains(stdout, "compared with "+out) || !strings.Contains(stdout, "rate 20/s") || !strings.Contains(stdout, "×") {
		t.Errorf("bench --compare: exit %d\n%s\n%s", status, stdout, stderr)
	}
	t.Logf("saved run:\n%s\nbench --compare:\n%s", b, stdout)
}

// s3EndpointFor is --s3-endpoint for an s3:// URL, nothing for others.
func s3EndpointFor(u, endpoint string) string {
	if strings.HasPrefix(u, "s3://") {
		return "http://" + endpoint
	}
	return ""
}

func sha256Sum(b []byte) string {
	h := sha256.Sum256(b)
	return base64.StdEncoding.EncodeToString(h[:])
}
