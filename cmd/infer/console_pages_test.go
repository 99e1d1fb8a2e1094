package main

import (
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsoleDeploymentPages opens the console's deployments page with 151
// deployments in headless Chromium: it shows (and polls) one page of 100,
// Next page shows the other 51 and keeps them through the live updates,
// Previous page goes back; the page writes no error to its console.
func TestConsoleDeploymentPages(t *testing.T) {
	if testing.Short() {
		t.Skip("the browser test builds the binary and starts Chromium")
	}
	chromiumPath(t) // skip before starting a platform
	p := startPlatformWith(t, platformOptions{localBlobs: true})
	sha := p.deployBase("base")
	p.createMany("row", 150, sha, "")
	b := newConsoleBrowser(t, t.TempDir())
	b.do("opening the console", chromedp.Navigate(p.url+"/"), chromedp.WaitVisible(chromedp.CSS("#signin-key")))
	b.signIn(p.key)

	const rows = `document.querySelectorAll('#deployments tbody tr')`
	page := func(what string, n int, first string, prev, next bool) {
		t.Helper()
		b.waitJS(what, `(() => { const r = `+rows+`; return r.length === `+strconv.Itoa(n)+` && r[0].dataset.deployment === `+jsString(first)+
			` && document.getElementById('dep-prev').hidden === `+boolJS(!prev)+` && document.getElementById('dep-next').hidden === `+boolJS(!next)+`; })()`, 15*time.Second)
	}
	page("the first page", 100, "base", false, true)
	b.do("next page", chromedp.Click(chromedp.CSS("#dep-next")))
	page("the second page", 51, "row-00099", true, false)
	time.Sleep(2500 * time.Millisecond) // two live updates: still the second page
	page("the second page after updates", 51, "row-00099", true, false)
	b.screenshot("deployments-page-2")
	b.do("previous page", chromedp.Click(chromedp.CSS("#dep-prev")))
	page("the first page again", 100, "base", false, true)
	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Errorf("the console logged errors: %q", errs)
	}
}

func boolJS(v bool) string {
	if v {
		return "true"
	}
	return "false"
}
