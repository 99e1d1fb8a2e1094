package chat

import (
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// The family renderers are Go versions of the formats that cover nearly
// every published model, for a deployment that names one and for weights
// whose Jinja template the engine cannot run. Tool calls and tool
// definitions need the model's own template: here a tool turn is a plain
// turn of its role and an assistant's calls are left out.

// RenderFamily turns messages into a prompt in the named family's format,
// ending where the assistant's reply begins. An unknown family falls back to
// ChatML, which most instruction-tuned models since 2024 understand. Roles
// are template text: the activator admits only system, user, assistant and
// tool.
func RenderFamily(family string, msgs []wire.Message) []Part {
	var b parts
	switch family {
	case Plain:
		// A base model continues text: the conversation is its prompt,
		// all of it text.
		for i, m := range msgs {
			if i > 0 {
				b.text("\n")
			}
			b.text(m.Content)
		}
	case Llama3:
		// No <|begin_of_text|>: the tokenizer adds BOS.
		for _, m := range msgs {
			b.marker("<|start_header_id|>")
			b.text(m.Role)
			b.marker("<|end_header_id|>")
			b.text("\n\n" + strings.TrimSpace(m.Content))
			b.marker("<|eot_id|>")
		}
		b.marker("<|start_header_id|>")
		b.text("assistant")
		b.marker("<|end_header_id|>")
		b.text("\n\n")
	case Llama2:
		// [INST] formats have no system role: it is folded into the first
		// user turn. [INST] is text in these vocabularies; <s> and </s>
		// are the control tokens.
		// The first <s> is the BOS the tokenizer adds.
		system := ""
		started := false
		for _, m := range msgs {
			switch m.Role {
			case "system":
				system += m.Content + "\n\n"
			case "assistant":
				b.text(" " + strings.TrimSpace(m.Content))
				b.marker("</s>")
				started = true
			default:
				if started {
					b.marker("<s>")
				}
				b.text("[INST] " + system + strings.TrimSpace(m.Content) + " [/INST]")
				system = ""
				started = true
			}
		}
	case Gemma:
		// Gemma has user and model turns; a system message joins the
		// first user turn.
		system := ""
		for _, m := range msgs {
			switch m.Role {
			case "system":
				system += m.Content + "\n\n"
			case "assistant":
				b.marker("<start_of_turn>")
				b.text("model\n" + strings.TrimSpace(m.Content))
				b.marker("<end_of_turn>")
				b.text("\n")
			default:
				b.marker("<start_of_turn>")
				b.text("user\n" + system + strings.TrimSpace(m.Content))
				b.marker("<end_of_turn>")
				b.text("\n")
				system = ""
			}
		}
		b.marker("<start_of_turn>")
		b.text("model\n")
	case Phi3:
		for _, m := range msgs {
			b.marker("<|" + m.Role + "|>")
			b.text("\n" + m.Content)
			b.marker("<|end|>")
			b.text("\n")
		}
		b.marker("<|assistant|>")
		b.text("\n")
	default: // ChatML
		for _, m := range msgs {
			b.marker("<|im_start|>")
			b.text(m.Role + "\n" + m.Content)
			b.marker("<|im_end|>")
			b.text("\n")
		}
		b.marker("<|im_start|>")
		b.text("assistant\n")
	}
	return b
}
