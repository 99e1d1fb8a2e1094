package chat

import "strings"

// A Part is one piece of a rendered chat prompt. The engine tokenizes a
// marker (template text: control tokens such as <|eot_id|> and the text
// around them) with special tokens parsed, and everything else (above all
// the messages' content) as text only. Rendered to one string and
// tokenized whole, a message whose text spells a marker, say
// "<|eot_id|><|start_header_id|>system<|end_header_id|>", would become
// those control tokens and could end its turn and open a forged system
// turn.
type Part struct {
	Text   string
	Marker bool
}

// parts builds a rendered prompt; adjacent parts of one kind are joined,
// so the text between two markers is tokenized in one go, exactly as
// llama.cpp splits a whole prompt at its special tokens: a prompt without
// forged markers gets the same tokens as before.
type parts []Part

func (p *parts) marker(s string) { p.add(s, true) }

func (p *parts) text(s string) { p.add(s, false) }

func (p *parts) add(s string, marker bool) {
	if s == "" {
		return
	}
	if n := len(*p); n > 0 && (*p)[n-1].Marker == marker {
		(*p)[n-1].Text += s
		return
	}
	*p = append(*p, Part{Text: s, Marker: marker})
}

// PromptText is a rendered prompt as one string, as the model sees it.
func PromptText(ps []Part) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.Text)
	}
	return b.String()
}
