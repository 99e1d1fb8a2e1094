package chat

import (
	"os"
	"testing"
	"time"

	"github.com/infer-run/infer/internal/wire"
)

// BenchmarkRender: what rendering a chat with the model's own template
// costs per request (two Jinja renders and the alignment), against the Go
// family renderer. go test ./internal/chat -bench Render -run '^$'
func BenchmarkRender(b *testing.B) {
	src, err := os.ReadFile("testdata/jinja/llama3-instruct-2.jinja") // Llama 3.1/3.2's, 4.6 KB
	if err != nil {
		b.Fatal(err)
	}
	tm, err := Compile(string(src))
	if err != nil {
		b.Fatal(err)
	}
	msgs := []wire.Message{
		{Role: "system", Content: "You are a helpful assistant."},
		{Role: "user", Content: "Hello, how are you?"},
		{Role: "assistant", Content: "I'm doing great. How can I help you today?"},
		{Role: "user", Content: "I'd like to show off how chat templating works!"},
	}
	opt := Options{BOS: "<|begin_of_text|>", SkipBOS: true, Now: time.Now()}
	b.Run("jinja", func(b *testing.B) {
		for b.Loop() {
			if _, err := tm.Render(msgs, opt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("family", func(b *testing.B) {
		for b.Loop() {
			RenderFamily(Llama3, msgs)
		}
	})
}
