package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// testdata/jinja holds the Jinja chat templates of real models (Ollama's
// template/index.json, which maps each to the name of Ollama's own Go
// template); testdata/expected/<name>/<conversation> is Ollama's expected
// rendering (template/testdata), and testdata/reference/<template>/
// <conversation> what Python's Jinja2 renders, as Hugging Face's
// apply_chat_template does (testdata/gen_reference.py).

func conversations(t *testing.T) map[string][]wire.Message {
	t.Helper()
	b, err := os.ReadFile("testdata/conversations.json")
	if err != nil {
		t.Fatal(err)
	}
	var convs map[string][]wire.Message
	if err := json.Unmarshal(b, &convs); err != nil {
		t.Fatal(err)
	}
	return convs
}

func jinjaTemplates(t *testing.T) map[string]string {
	t.Helper()
	files, err := filepath.Glob("testdata/jinja/*.jinja")
	if err != nil || len(files) == 0 {
		t.Fatalf("no templates: %v", err)
	}
	out := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[strings.TrimSuffix(filepath.Base(f), ".jinja")] = string(b)
	}
	return out
}

var testNow = time.Date(2024, 7, 26, 12, 0, 0, 0, time.UTC)

// renderReference renders as gen_reference.py does: BOS "<s>", dropped at
// the start, and a refusal as "ERROR: message".
func renderReference(t *testing.T, src string, msgs []wire.Message) string {
	t.Helper()
	tm, err := Compile(src)
	if err != nil {
		t.Fatalf("compile: %v", err)
	}
	ps, err := tm.Render(msgs, Options{BOS: "<s>", EOS: "</s>", SkipBOS: true, Now: testNow})
	if err != nil {
		var refused *RefusedError
		if errors.As(err, &refused) {
			return "ERROR: " + refused.Message
		}
		t.Fatalf("render: %v", err)
	}
	return PromptText(ps)
}

func TestJinjaMatchesPythonJinja2(t *testing.T) {
	convs := conversations(t)
	for name, src := range jinjaTemplates(t) {
		for conv, msgs := range convs {
			want, err := os.ReadFile(filepath.Join("testdata/reference", name, conv))
			if err != nil {
				t.Fatal(err)
			}
			if got := renderReference(t, src, msgs); got != string(want) {
				t.Errorf("%s, %s:\n got %q\nwant %q", name, conv, got, want)
			}
		}
	}
}

func TestJinjaMatchesOllama(t *testing.T) {
	convs := conversations(t)
	matched := map[string]bool{}
	for name, src := range jinjaTemplates(t) {
		family := name[:strings.LastIndex(name, "-")]
		all := true
		for conv, msgs := range convs {
			want, err := os.ReadFile(filepath.Join("testdata/expected", family, conv))
			if err != nil {
				t.Fatal(err)
			}
			ref, err := os.ReadFile(filepath.Join("testdata/reference", name, conv))
			if err != nil {
				t.Fatal(err)
			}
			if string(ref) != string(want) {
				// Ollama's Go template is an approximation that differs
				// from the model's own here (see docs/api.md).
				all = false
				continue
			}
			if got := renderReference(t, src, msgs); got != string(want) {
				t.Errorf("%s, %s:\n got %q\nwant %q", name, conv, got, want)
			}
		}
		matched[family] = matched[family] || all
	}
	t.Logf("families whose every expected rendering is matched by one of their templates: %v", matched)
}
