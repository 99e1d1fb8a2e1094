package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"

	"github.com/infer-run/infer/internal/testenv"
)

// requireBrowserEnv, set to 1 (CI's .ci/run does), makes a missing
// Chromium a test failure instead of a skip.
const requireBrowserEnv = "INFER_REQUIRE_BROWSER"

// chromiumPath finds Debian's chromium, or skips (fails under
// INFER_REQUIRE_BROWSER=1) with the command that installs it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium on PATH: install it with 'apt-get install -y chromium' to run the web console's browser test"
	if os.Getenv(requireBrowserEnv) == "1" {
		t.Fatalf("%s (%s=1 requires it)", msg, requireBrowserEnv)
	}
	t.Skip(msg)
	return ""
}

// consoleBrowser drives a headless Chromium on the console and collects
// what the page writes to its console.
type consoleBrowser struct {
	t     *testing.T
	ctx   context.Context
	shots string // screenshots go here
	shot  int

	mu     sync.Mutex
	errors []string // console errors and uncaught exceptions
}

func newConsoleBrowser(t *testing.T, downloads string) *consoleBrowser {
	t.Helper()
	exe := chromiumPath(t)
	shots := filepath.Join(testenv.RepoRoot(t), "test-artifacts", "console")
	if err := os.RemoveAll(shots); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(exe),
		chromedp.UserDataDir(t.TempDir()), // a fresh profile
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &consoleBrowser{t: t, ctx: ctx, shots: shots}
	// The first action starts the browser, with no timeout: the browser
	// lives as long as the context of that call.
	if err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, browser.SetDownloadBehavior, browser.SetDownloadBehaviorParams{
			Behavior: browser.SetDownloadBehaviorBehaviorAllow, DownloadPath: downloads})
		return err
	})); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.errors = append(b.errors, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// do runs steps, failing the test (with a screenshot) if one fails.
func (b *consoleBrowser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.screenshot("failed-" + what)
		b.t.Fatalf("%s: %v", what, err)
	}
}

// waitJS waits until a JavaScript expression is true.
func (b *consoleBrowser) waitJS(what, expr string, timeout time.Duration) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(timeout))); err != nil {
		b.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
		b.t.Fatalf("waiting for %s (%s): %v", what, expr, err)
	}
}

// eval evaluates a JavaScript expression that returns JSON-able data.
func consoleEval[T any](b *consoleBrowser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// screenshot saves the page as test-artifacts/console/NN-name.png.
func (b *consoleBrowser) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return
	}
	b.shot++
	path := filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.shot, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *consoleBrowser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.errors)
}

// go navigates the single-page console to a route (#/usage, …).
func (b *consoleBrowser) route(hash string) {
	b.t.Helper()
	b.do("opening "+hash, chromedp.Evaluate[chromedp.Void](`location.hash = `+jsString(hash)))
}

func (b *consoleBrowser) signIn(key string) {
	b.t.Helper()
	b.do("signing in",
		chromedp.WaitVisible(chromedp.CSS("#signin-key")),
		chromedp.SendKeys(chromedp.CSS("#signin-key"), key),
		chromedp.Click(chromedp.CSS(`#signin button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("#nav")))
	b.waitJS("the deployments list", `document.getElementById('dep-updated')?.textContent !== ''`, 10*time.Second)
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestConsoleInBrowser walks the web console in headless Chromium against
// a real platform, as a person would: sign in with the admin key, deploy
// stories260K by dropping the file, watch it start from zero in the
// playground and stream text, find the request in usage (and export it as
// CSV), create a user key and revoke another, then sign in with the user
// key and see only its own usage and the deployment go back to zero live.
// Every page is screenshotted to test-artifacts/console/ (git-ignored),
// and the page must write no error to its console.
func TestConsoleInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("the browser test builds the binary, starts MinIO and Chromium")
	}
	chromiumPath(t) // skip before starting a platform
	downloads := t.TempDir()
	// The object store is reached through a proxy the test cuts while the
	// playground's first request waits, so that the cold start outlasts
	// the activator's 1 s header grace and the phases reach the browser as
	// SSE comments (stories260K otherwise starts in ~0.7 s, before any).
	var s3 *cuttableProxy
	p := startPlatformWith(t, platformOptions{s3Addr: func(direct string) string {
		s3 = newCuttableProxy(t, direct)
		return s3.addr
	}})
	b := newConsoleBrowser(t, downloads)
	model := testenv.ModelPath(t)

	// Sign in.
	b.do("opening the console", chromedp.Navigate(p.url+"/"), chromedp.WaitVisible(chromedp.CSS("#signin-key")))
	b.screenshot("signin")
	b.signIn(p.key)
	b.screenshot("deployments-empty")

	// Deploy by dropping the file on the drop zone: the test puts the file
	// in an input of its own (Chromium's file chooser) and drops it.
	b.do("opening Deploy", chromedp.Click(chromedp.CSS(`#nav a[href="#/deploy"]`)), chromedp.WaitVisible(chromedp.CSS("#drop")))
	b.do("picking the file",
		chromedp.Evaluate[chromedp.Void](`(() => { const i = document.createElement('input'); i.type = 'file'; i.id = 'test-source'; document.body.append(i); })()`),
		chromedp.SetUploadFiles(chromedp.CSS("#test-source"), []string{model}),
		chromedp.Evaluate[chromedp.Void](`(() => {
			const src = document.getElementById('test-source');
			const dt = new DataTransfer();
			dt.items.add(src.files[0]);
			src.remove();
			const drop = document.getElementById('drop');
			drop.dispatchEvent(new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true }));
			drop.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
		})()`))
	b.waitJS("the validation result", `document.querySelector('#validation [data-valid]') !== null`, 30*time.Second)
	if v := consoleEval[string](b, `document.querySelector('#validation [data-valid]').dataset.valid + ' ' + document.getElementById('validation').textContent`); !strings.HasPrefix(v, "true") || !strings.Contains(v, "llama") {
		t.Fatalf("validation shown after the drop: %q", v)
	}
	if v := consoleEval[float64](b, `document.getElementById('upload-progress').value`); v != 1 {
		t.Errorf("upload progress %v after the upload, want 1", v)
	}
	b.do("choosing settings",
		chromedp.SetValue(chromedp.CSS("#deploy-name"), "stories"),
		chromedp.SetValue(chromedp.CSS(`form.settings input[name=idle_timeout]`), "4s"),
		chromedp.SetValue(chromedp.CSS(`form.settings input[name=prompt_per_mtok]`), "2"),
		chromedp.SetValue(chromedp.CSS(`form.settings input[name=completion_per_mtok]`), "8"))
	b.screenshot("deploy-validated")
	b.do("creating the deployment",
		chromedp.Click(chromedp.CSS(`form.settings button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("#deployed-playground")))
	b.screenshot("deploy-done")

	// The playground: the deployment is at zero; one message cold-starts
	// it, the phases arrive as SSE comments, the answer streams.
	b.do("opening the playground", chromedp.Click(chromedp.CSS("#deployed-playground")), chromedp.WaitVisible(chromedp.CSS("#pg-prompt")))
	b.waitJS("the state at zero", `document.querySelector('#pg-state [data-state]')?.dataset.state === 'zero'`, 10*time.Second)
	// Record each state the playground shows, as it changes.
	b.do("watching states", chromedp.Evaluate[chromedp.Void](`(() => {
		window.__states = ['zero'];
		new MutationObserver(() => {
			const s = document.querySelector('#pg-state [data-state]')?.dataset.state;
			if (s && window.__states[window.__states.length - 1] !== s) window.__states.push(s);
		}).observe(document.getElementById('pg-state'), { childList: true, subtree: true });
	})()`))
	s3.Cut()
	b.do("sending a message",
		chromedp.SendKeys(chromedp.CSS("#pg-prompt"), "Once upon a time"),
		chromedp.Click(chromedp.CSS("#pg-send")))
	b.waitJS("a cold-start phase in the playground", `document.querySelectorAll('#pg-phases li').length > 0`, 20*time.Second)
	b.screenshot("playground-cold-start")
	s3.Restore()
	b.waitJS("the first streamed text", `(document.querySelector('#pg-chat .msg.assistant:not(.pending)')?.textContent || '').length > 0`, 60*time.Second)
	b.waitJS("the end of the stream", `document.querySelector('#pg-chat .msg.assistant')?.dataset.streaming === 'false'`, 60*time.Second)
	b.waitJS("the ready state", `document.querySelector('#pg-state [data-state]')?.dataset.state === 'ready'`, 10*time.Second)
	b.screenshot("playground")
	reply := consoleEval[string](b, `document.querySelector('#pg-chat .msg.assistant').textContent`)
	phases := consoleEval[[]string](b, `[...document.querySelectorAll('#pg-phases li')].map(li => li.textContent)`)
	states := consoleEval[[]string](b, `window.__states`)
	stats := consoleEval[string](b, `document.getElementById('pg-stats').textContent`)
	pgErr := consoleEval[string](b, `document.getElementById('pg-error').textContent`)
	t.Logf("playground: states %v, phases %q, stats %q, reply %q", states, phases, stats, reply)
	if pgErr != "" || len(strings.Fields(reply)) < 3 {
		t.Errorf("the playground streamed %q (error %q)", reply, pgErr)
	}
	if len(phases) == 0 {
		t.Errorf("the playground showed no cold-start phase from the SSE comments: %q", phases)
	}
	if states[0] != "zero" || states[len(states)-1] != "ready" {
		t.Errorf("the playground's state went %v; want from zero to ready", states)
	}
	if !strings.Contains(stats, "First token after") || !strings.Contains(stats, "tokens/s") {
		t.Errorf("no timing after the answer: %q", stats)
	}
	snippet := consoleEval[string](b, `document.getElementById('pg-snippet').textContent`)
	if !strings.Contains(snippet, "curl -N "+p.url+"/v1/chat/completions") || !strings.Contains(snippet, `"model":"stories"`) || strings.Contains(snippet, p.key) {
		t.Errorf("the curl snippet is wrong or holds the key:\n%s", snippet)
	}

	// Usage: the request appears (records are written as the request
	// ends), with its cost at the deployment's prices.
	b.route("#/usage")
	b.waitJS("the usage table", `document.querySelector('#u-table table') !== null`, 10*time.Second)
	for deadline := time.Now().Add(15 * time.Second); ; {
		if consoleEval[bool](b, `[...document.querySelectorAll('#u-table tbody tr')].some(tr => tr.textContent.includes('stories'))`) {
			break
		}
		if time.Now().After(deadline) {
			b.screenshot("failed-usage")
			t.Fatal("the playground's request never appeared on the usage page")
		}
		b.do("refreshing usage", chromedp.Click(chromedp.CSS("#u-refresh")), chromedp.Sleep(300*time.Millisecond))
	}
	b.screenshot("usage-requests")
	b.do("grouping by deployment", chromedp.SetValue(chromedp.CSS("#u-group"), "deployment"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('u-group').dispatchEvent(new Event('change'))`))
	b.waitJS("the grouped table", `document.querySelector('#u-table caption')?.textContent.includes('deployment')`, 10*time.Second)
	row := consoleEval[[]string](b, `[...document.querySelectorAll('#u-table tbody tr')].filter(tr => tr.children[0].textContent === 'stories').flatMap(tr => [...tr.children].map(td => td.textContent))`)
	if len(row) < 2 || row[1] != "1" {
		t.Errorf("usage grouped by deployment: row %q, want stories with 1 request", row)
	}
	b.screenshot("usage-by-deployment")
	b.do("exporting CSV", chromedp.Click(chromedp.CSS("#u-csv")))
	csvFile := filepath.Join(downloads, "infer-usage-deployment-"+time.Now().Format("2006-01-02")+".csv")
	waitFor(t, 10*time.Second, "the CSV download", func() bool { _, err := os.Stat(csvFile); return err == nil })
	f, err := os.Open(csvFile)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(recs) != 2 || recs[0][0] != "Deployment" || recs[1][0] != "stories" || recs[1][1] != "1" {
		t.Errorf("the exported CSV: %q (%v)", recs, err)
	}

	// The deployment's page: settings, runner, the last hour's charts.
	b.route("#/deployment/stories")
	b.waitJS("the deployment page", `document.querySelector('#dep-hour') !== null && document.querySelectorAll('main svg.chart').length >= 3 && document.querySelector('main dl.facts') !== null`, 15*time.Second)
	b.screenshot("deployment")
	// Its runner logs: the playground's cold start is there, and once the
	// runner has idled out, a request's cold start shows a new runner's
	// start on the page as it is written, without a reload.
	logLines := func(text string) string {
		return `[...document.querySelectorAll('#dep-logs li')].filter(li => li.textContent.includes(` + jsString(text) + `)).length`
	}
	b.waitJS("the runner's start in the log tail", logLines("model ready")+` > 0`, 15*time.Second)
	waitFor(t, 30*time.Second, "the idle runner to exit", func() bool { return len(p.runnerPIDs("stories")) == 0 })
	starts := consoleEval[float64](b, logLines("runner starting"))
	if code, _, body := p.do(http.MethodPost, "/v1/chat/completions", p.key, `{"model":"stories","messages":[{"role":"user","content":"Once"}],"max_tokens":2}`); code != 200 {
		t.Fatalf("a request to cold-start another runner: %d %s", code, body)
	}
	b.waitJS("a new runner's start in the log tail, live", fmt.Sprintf(`%s > %v`, logLines("runner starting"), starts), 20*time.Second)
	if text := consoleEval[string](b, `document.getElementById('dep-logs').textContent`); strings.Contains(text, "/cache/") || strings.Contains(text, "Once") {
		t.Errorf("the log tail shows a server path or prompt text:\n%s", text)
	}
	b.screenshot("deployment-logs")

	// Keys: create a user key (the secret is shown once), and revoke
	// another.
	b.route("#/keys")
	b.do("creating a user key",
		chromedp.WaitVisible(chromedp.CSS("#k-name")),
		chromedp.SendKeys(chromedp.CSS("#k-name"), "ci-user"),
		chromedp.SendKeys(chromedp.CSS("#k-budget"), "5"),
		chromedp.Click(chromedp.CSS("#k-create")),
		chromedp.WaitVisible(chromedp.CSS("#k-secret-value")))
	userSecret := consoleEval[string](b, `document.getElementById('k-secret-value').textContent`)
	b.waitJS("the new key in the list", `document.querySelector('tr[data-key="ci-user"]') !== null`, 10*time.Second)
	b.screenshot("keys-created")
	userID := consoleEval[string](b, `document.querySelector('tr[data-key="ci-user"]').dataset.keyId`)
	b.do("creating a key to revoke",
		chromedp.SendKeys(chromedp.CSS("#k-name"), "to-revoke"),
		chromedp.Click(chromedp.CSS("#k-create")))
	b.waitJS("the second key", `document.getElementById('k-secret-value')?.textContent !== `+jsString(userSecret)+` && document.querySelector('tr[data-key="to-revoke"]') !== null`, 10*time.Second)
	revokedSecret := consoleEval[string](b, `document.getElementById('k-secret-value').textContent`)
	b.do("revoking it", chromedp.Click(chromedp.CSS(`tr[data-key="to-revoke"] button.danger`)))
	b.waitJS("the confirmation", `document.querySelector('tr[data-key="to-revoke"] button.danger')?.textContent === 'Confirm revoke'`, 5*time.Second)
	b.do("confirming", chromedp.Click(chromedp.CSS(`tr[data-key="to-revoke"] button.danger`)))
	b.waitJS("the key shown revoked", `document.querySelector('tr[data-key="to-revoke"]')?.dataset.revoked === 'true'`, 10*time.Second)
	b.screenshot("keys-revoked")
	if !strings.HasPrefix(userSecret, "sk-") || !strings.HasPrefix(revokedSecret, "sk-") {
		t.Fatalf("secrets shown: %q, %q", userSecret, revokedSecret)
	}
	waitFor(t, 10*time.Second, "the revoked key to stop working", func() bool {
		code, _, _ := p.do(http.MethodGet, "/v1/me", revokedSecret, "")
		return code == http.StatusUnauthorized
	})

	// The user key: no admin pages, only its own usage.
	var admin struct{ ID string }
	if code, _, body := p.do(http.MethodGet, "/v1/me", p.key, ""); code != 200 || json.Unmarshal(body, &admin) != nil {
		t.Fatalf("GET /v1/me: %d %s", code, body)
	}
	b.do("signing out", chromedp.Click(chromedp.CSS("#signout")), chromedp.WaitVisible(chromedp.CSS("#signin-key")))
	b.signIn(userSecret)
	if hidden := consoleEval[[]bool](b, `[...document.querySelectorAll('[data-admin]')].map(li => li.hidden)`); len(hidden) != 2 || !hidden[0] || !hidden[1] {
		t.Errorf("a user key sees the admin pages in the menu (hidden: %v)", hidden)
	}

	// Live state, on the deployments page the user key opened: a request
	// makes stories ready (a cold start if the idle timeout passed), and
	// it goes back to zero after its idle timeout, without a reload.
	b.waitJS("stories in the list", `document.querySelector('tr[data-deployment="stories"] [data-state]') !== null`, 10*time.Second)
	if code, _, body := p.do(http.MethodPost, "/v1/chat/completions", userSecret, `{"model":"stories","messages":[{"role":"user","content":"Once upon a time"}],"max_tokens":8}`); code != 200 {
		t.Fatalf("a request with the user key: %d %s", code, body)
	}
	b.waitJS("the list to show stories ready", `document.querySelector('tr[data-deployment="stories"] [data-state]')?.dataset.state === 'ready'`, 10*time.Second)
	b.screenshot("deployments-ready")
	var exited time.Time
	waitFor(t, 30*time.Second, "the idle runner to exit", func() bool {
		if len(p.runnerPIDs("stories")) == 0 {
			exited = time.Now()
			return true
		}
		return false
	})
	b.waitJS("the list to show stories at zero", `document.querySelector('tr[data-deployment="stories"] [data-state]')?.dataset.state === 'zero'`, 10*time.Second)
	t.Logf("the deployments page showed zero %v after the runner process exited (it polls every 1 s)", time.Since(exited).Round(10*time.Millisecond))
	b.screenshot("deployments-zero")

	b.route("#/usage")
	b.waitJS("the user's usage", `document.querySelectorAll('#u-table tbody tr').length > 0`, 15*time.Second)
	keysShown := consoleEval[[]string](b, `[...document.querySelectorAll('#u-table tbody tr')].map(tr => tr.dataset.keyId + ' ' + tr.children[2].textContent)`)
	b.screenshot("usage-as-user")
	for _, k := range keysShown {
		if k != userID+" ci-user" || strings.Contains(k, admin.ID) {
			t.Errorf("the user key's usage page shows %q; want only its own requests (%s)", keysShown, userID)
			break
		}
	}
	if len(keysShown) != 1 {
		t.Errorf("the user key's usage page shows %d requests, want its 1: %q", len(keysShown), keysShown)
	}
	b.waitJS("the user's spend against its budget", `document.querySelector('#u-budget-panel meter') !== null`, 10*time.Second)
	if spend := consoleEval[[]string](b, `[...document.querySelectorAll('#u-budget-panel tbody tr')].map(tr => tr.textContent)`); len(spend) != 1 || !strings.Contains(spend[0], "ci-user") || !strings.Contains(spend[0], "$5.00") {
		t.Errorf("the user's spend panel: %q; want only ci-user with its $5.00 budget", spend)
	}

	// The dark scheme, for a look at its contrast.
	b.do("switching to the dark scheme", chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	}))
	b.route("#/deployment/stories")
	b.waitJS("the deployment page", `document.querySelectorAll('main svg.chart').length >= 3`, 15*time.Second)
	b.screenshot("dark-deployment")

	// A phone's width: the tables stack, nothing overflows sideways.
	b.do("narrowing to a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.route("#/playground/stories")
	b.waitJS("the playground on a phone", `document.querySelector('#pg-state [data-state]') !== null`, 10*time.Second)
	if w := consoleEval[float64](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the playground is %v px wide on a 390 px phone", w)
	}
	b.screenshot("phone-playground")
	b.route("#/usage")
	b.waitJS("usage on a phone", `document.querySelectorAll('#u-table tbody tr').length > 0`, 10*time.Second)
	if w := consoleEval[float64](b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the usage page is %v px wide on a 390 px phone", w)
	}
	b.screenshot("phone-usage")

	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Errorf("the console wrote errors:\n%s", strings.Join(errs, "\n"))
	}
	assertNoSecretsLogged(t, p, userSecret, revokedSecret)
}
