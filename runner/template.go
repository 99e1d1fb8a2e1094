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

// RenderChat turns messages into one prompt in the named family's format,
// ending where the assistant's reply begins. An unknown family falls back to
// ChatML, which most instruction-tuned models since 2024 understand.
func RenderChat(family string, msgs []wire.Message) string {
	var b strings.Builder
	switch family {
	case TemplatePlain:
		// A base model continues text: the conversation is its prompt.
		for i, m := range msgs {
			if i > 0 {
				b.WriteString("\n")
			}
			b.WriteString(m.Content)
		}
	case TemplateLlama3:
		// No <|begin_of_text|>: the tokenizer adds BOS.
		for _, m := range msgs {
			b.WriteString("<|start_header_id|>" + m.Role + "<|end_header_id|>\n\n" + strings.TrimSpace(m.Content) + "<|eot_id|>")
		}
		b.WriteString("<|start_header_id|>assistant<|end_header_id|>\n\n")
	case TemplateLlama2:
		// [INST] formats have no system role: it is folded into the first
		// user turn.
		// The first <s> is the BOS the tokenizer adds.
		system := ""
		for _, m := range msgs {
			switch m.Role {
			case "system":
				system += m.Content + "\n\n"
			case "assistant":
				b.WriteString(" " + strings.TrimSpace(m.Content) + "</s>")
			default:
				if b.Len() > 0 {
					b.WriteString("<s>")
				}
				b.WriteString("[INST] " + system + strings.TrimSpace(m.Content) + " [/INST]")
				system = ""
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
				b.WriteString("<start_of_turn>model\n" + strings.TrimSpace(m.Content) + "<end_of_turn>\n")
			default:
				b.WriteString("<start_of_turn>user\n" + system + strings.TrimSpace(m.Content) + "<end_of_turn>\n")
				system = ""
			}
		}
		b.WriteString("<start_of_turn>model\n")
	case TemplatePhi3:
		for _, m := range msgs {
			b.WriteString("<|" + m.Role + "|>\n" + m.Content + "<|end|>\n")
		}
		b.WriteString("<|assistant|>\n")
	default: // ChatML
		for _, m := range msgs {
			b.WriteString("<|im_start|>" + m.Role + "\n" + m.Content + "<|im_end|>\n")
		}
		b.WriteString("<|im_start|>assistant\n")
	}
	return b.String()
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
