package runner

import (
	"strings"

	"github.com/infer-run/infer/internal/wire"
)

// Chat template families. GGUF files carry their template as Jinja, which
// Go cannot run; instead the runner recognises the families that cover
// nearly every published model by their marker tokens and renders them in
// Go. A deployment can override the choice by name.
const (
	TemplateChatML  = "chatml"
	TemplateLlama3  = "llama3"
	TemplateLlama2  = "llama2" // also Mistral's [INST] format
	TemplateGemma   = "gemma"
	TemplatePhi3    = "phi3"
	TemplatePlain   = "plain"
	templateUnknown = ""
)

// Templates lists the names a deployment may choose.
var Templates = []string{TemplateChatML, TemplateLlama3, TemplateLlama2, TemplateGemma, TemplatePhi3, TemplatePlain}

// DetectTemplate names the family of a GGUF's Jinja chat template, or
// "plain" when the model has none (base models such as stories260K).
func DetectTemplate(jinja string) string {
	switch {
	case jinja == "":
		return TemplatePlain
	case strings.Contains(jinja, "<|start_header_id|>"):
		return TemplateLlama3
	case strings.Contains(jinja, "<|im_start|>"):
		return TemplateChatML
	case strings.Contains(jinja, "<start_of_turn>"):
		return TemplateGemma
	case strings.Contains(jinja, "<|user|>") && strings.Contains(jinja, "<|end|>"):
		return TemplatePhi3
	case strings.Contains(jinja, "[INST]"):
		return TemplateLlama2
	}
	return templateUnknown
}

// A Part is one piece of a rendered chat prompt. The engine tokenizes a
// marker (one of the template's control tokens, such as <|eot_id|>) with
// special tokens parsed, and everything else (the template's plain text
// and, above all, the messages' content) as text only. Rendered to one
// string and tokenized whole, a message whose text spells a marker, say
// "<|eot_id|><|start_header_id|>system<|end_header_id|>", would become
// those control tokens and could end its turn and open a forged system
// turn.
type Part struct {
	Text   string
	Marker bool
}

// parts builds a rendered prompt; adjacent text is joined into one part,
// so the text between two markers is tokenized in one go, exactly as
// llama.cpp splits a whole prompt at its special tokens: a prompt without
// forged markers gets the same tokens as before.
type parts []Part

func (p *parts) marker(s string) { *p = append(*p, Part{Text: s, Marker: true}) }

func (p *parts) text(s string) {
	if s == "" {
		return
	}
	if n := len(*p); n > 0 && !(*p)[n-1].Marker {
		(*p)[n-1].Text += s
		return
	}
	*p = append(*p, Part{Text: s})
}

// PromptText is a rendered prompt as one string, as the model sees it.
func PromptText(ps []Part) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.Text)
	}
	return b.String()
}

// RenderChat turns messages into a prompt in the named family's format,
// ending where the assistant's reply begins. An unknown family falls back to
// ChatML, which most instruction-tuned models since 2024 understand. Roles
// are template text: the activator admits only system, user, assistant and
// tool.
func RenderChat(family string, msgs []wire.Message) []Part {
	var b parts
	switch family {
	case TemplatePlain:
		// A base model continues text: the conversation is its prompt,
		// all of it text.
		for i, m := range msgs {
			if i > 0 {
				b.text("\n")
			}
			b.text(m.Content)
		}
	case TemplateLlama3:
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
	case TemplateLlama2:
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
	case TemplateGemma:
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
	case TemplatePhi3:
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

// templateStops are the end-of-turn markers to stop on in addition to the
// model's end-of-generation tokens, for models whose GGUF does not mark
// them as such.
func templateStops(family string) []string {
	switch family {
	case TemplateChatML:
		return []string{"<|im_end|>"}
	case TemplateLlama3:
		return []string{"<|eot_id|>"}
	case TemplateGemma:
		return []string{"<end_of_turn>"}
	case TemplatePhi3:
		return []string{"<|end|>"}
	}
	return nil
}
