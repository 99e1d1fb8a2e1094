package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// shellCommands returns the commands in a Markdown document's ```sh blocks
// that come after the first heading matching from (all of them when from is
// empty): continuation lines joined, trailing "# comments", blank lines and
// surrounding spaces dropped, so only the command text has to match.
func shellCommands(t *testing.T, doc, from string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, doc))
	if err != nil {
		t.Fatal(err)
	}
	comment := regexp.MustCompile(`\s+#\s.*$`)
	var cmds []string
	started := from == ""
	inBlock := false
	var cont string
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case !inBlock && strings.HasPrefix(line, "#") && strings.Contains(line, from) && from != "":
			started = true
		case !inBlock && strings.HasPrefix(line, "```sh"):
			inBlock = true
		case inBlock && strings.HasPrefix(line, "```"):
			inBlock = false
		case inBlock && started:
			line = strings.TrimSpace(line)
			if strings.HasSuffix(line, `\`) {
				cont += strings.TrimSuffix(line, `\`)
				continue
			}
			line = strings.TrimSpace(comment.ReplaceAllString(cont+line, ""))
			cont = ""
			if line != "" && !strings.HasPrefix(line, "#") {
				cmds = append(cmds, line)
			}
		}
	}
	return cmds
}

// TestGettingStartedMatchesREADME keeps docs/getting-started.md from
// drifting from the README: every command of the README's quick start and
// Docker Compose steps appears, word for word, in the getting-started guide
// in the same order (the guide may have more).
func TestGettingStartedMatchesREADME(t *testing.T) {
	readme := shellCommands(t, "README.md", "Five minutes with it")
	guide := shellCommands(t, "docs/getting-started.md", "")
	if len(readme) < 10 {
		t.Fatalf("found only %d commands in README.md's quick start: %q", len(readme), readme)
	}
	i := 0
	for _, want := range readme {
		for i < len(guide) && guide[i] != want {
			i++
		}
		if i == len(guide) {
			t.Fatalf("docs/getting-started.md lacks README.md's command (or has it out of order):\n  %s", want)
		}
		i++
	}
}

// TestReadmeComposeStepsMatchComposeFile checks the README's Docker Compose
// steps against docker-compose.yml: the key the CLI uses is the one the
// activator installs, and the URL is the port it publishes.
func TestReadmeComposeStepsMatchComposeFile(t *testing.T) {
	cmds := strings.Join(shellCommands(t, "README.md", "Docker Compose"), "\n")
	for _, want := range []string{
		"export INFER_ADMIN_KEY=", // exported: compose and the CLI both see it
		"docker compose up",
		"curl -sf localhost:8080/healthz",
		"INFER_API_KEY=$INFER_ADMIN_KEY",
		"INFER_URL=http://127.0.0.1:8080",
		"bin/infer deploy",
		"/v1/chat/completions",
	} {
		if !strings.Contains(cmds, want) {
			t.Errorf("README.md's Docker Compose steps lack %q:\n%s", want, cmds)
		}
	}
	p := loadCompose(t, map[string]string{"INFER_ADMIN_KEY": "from-the-environment-0123456789"})
	a := service(t, p, "activator")
	if got := envValue(a, "INFER_ADMIN_KEY"); got != "from-the-environment-0123456789" {
		t.Errorf("activator INFER_ADMIN_KEY = %q, want the exported INFER_ADMIN_KEY", got)
	}
}
