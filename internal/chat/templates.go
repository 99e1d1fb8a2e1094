// Package chat turns a conversation into a model's prompt: the template
// names a deployment may choose, the model's own Jinja template
// (tokenizer.chat_template) and the Go renderers of the common families as
// a fallback, and the stop strings each implies. It is cgo-free, so the
// activator and registry validate templates without linking llama.cpp.
package chat

import (
	"fmt"
	"strings"
)

// Template names. Jinja is the model's own template from its GGUF; the
// others are the families rendered in Go.
const (
	Jinja   = "jinja"
	ChatML  = "chatml"
	Llama3  = "llama3"
	Llama2  = "llama2" // also Mistral's [INST] format
	Gemma   = "gemma"
	Phi3    = "phi3"
	Plain   = "plain"
	unknown = ""
)

// Names lists the templates a deployment may choose.
func Names() []string { return []string{Jinja, ChatML, Llama3, Llama2, Gemma, Phi3, Plain} }

// Validate checks a deployment's template override; empty means "from the
// weights".
func Validate(name string) error {
	if name == "" {
		return nil
	}
	for _, n := range Names() {
		if n == name {
			return nil
		}
	}
	return fmt.Errorf("chat_template %q is unknown; use one of %v, or leave it empty to take it from the weights", name, Names())
}

// Detect names the family of a GGUF's Jinja chat template by its marker
// tokens, or "plain" when the model has none (base models such as
// stories260K), or "" when it is none of the families.
func Detect(jinja string) string {
	switch {
	case jinja == "":
		return Plain
	case strings.Contains(jinja, "<|start_header_id|>"):
		return Llama3
	case strings.Contains(jinja, "<|im_start|>"):
		return ChatML
	case strings.Contains(jinja, "<start_of_turn>"):
		return Gemma
	case strings.Contains(jinja, "<|user|>") && strings.Contains(jinja, "<|end|>"):
		return Phi3
	case strings.Contains(jinja, "[INST]"):
		return Llama2
	}
	return unknown
}

// Resolve names the template in use for weights whose GGUF carries
// ggufTemplate and a deployment that chose override: the override if any,
// else the model's own template when the Jinja engine can compile it, else
// the detected family, else ChatML (which most instruction-tuned models
// since 2024 understand).
func Resolve(override, ggufTemplate string) string {
	if override != "" {
		return override
	}
	if ggufTemplate != "" {
		if _, err := Compile(ggufTemplate); err == nil {
			return Jinja
		}
	}
	if f := Detect(ggufTemplate); f != unknown {
		return f
	}
	return ChatML
}

// Stops are the end-of-turn markers to stop on in addition to the model's
// end-of-generation tokens, for models whose GGUF does not mark them as
// such. For the model's own template they are those of its family.
func Stops(name, ggufTemplate string) []string {
	if name == Jinja {
		name = Detect(ggufTemplate)
	}
	switch name {
	case ChatML:
		return []string{"<|im_end|>"}
	case Llama3:
		return []string{"<|eot_id|>"}
	case Gemma:
		return []string{"<end_of_turn>"}
	case Phi3:
		return []string{"<|end|>"}
	}
	return nil
}
