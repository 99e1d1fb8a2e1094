package chat

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"

	"github.com/infer-run/infer/internal/wire"
)

// Template is a compiled Jinja chat template, safe for concurrent use.
type Template struct {
	t *jinja.Template
}

// Compile compiles a GGUF's tokenizer.chat_template.
func Compile(src string) (*Template, error) {
	t, err := jinja.Compile(separateTags(src))
	if err != nil {
		return nil, err
	}
	return &Template{t: t}, nil
}

// Options are the variables a render gives the template beside the
// messages.
type Options struct {
	// BOS and EOS are the vocabulary's bos_token and eos_token.
	BOS, EOS string
	// SkipBOS drops a bos_token the template writes at the very start:
	// the tokenizer adds BOS itself, and two would confuse the model.
	SkipBOS bool
	Tools   []wire.Tool
	// Now is the time strftime_now and date_string tell (an injected
	// clock).
	Now time.Time
}

// Sentinels mark where message content sits in a render, so it can be
// tokenized as text only. They are Unicode private-use characters; one
// that occurs in the request itself is not used.
var sentinelCandidates = [][2]string{
	{"\uE000", "\uE001"}, {"\uF8F0", "\uF8F1"}, {"\U000F0000", "\U000F0001"}, {"\U00100000", "\U00100001"},
}

// ErrContentTransformed means the template changes message content in a
// way (slicing, splitting, ...) that keeps it from being told apart from
// template text; the caller falls back to the family renderer.
var ErrContentTransformed = errors.New("the chat template transforms message content beyond trimming")

// Render renders msgs with the model's template, ending where the
// assistant's reply begins. Message content (and tool results) become
// text parts, everything the template writes marker parts.
//
// It renders twice: once with each content wrapped in sentinels, to find
// it, and once as is, to check that the split render is exactly what the
// template writes (align). Templates that trim content (Llama 3's does)
// are followed.
func (t *Template) Render(msgs []wire.Message, opt Options) ([]Part, error) {
	open, close, ok := pickSentinels(msgs, opt.Tools)
	if !ok {
		return nil, errors.New("the messages hold every sentinel character the renderer could use")
	}
	want, err := t.render(msgs, opt, "", "")
	if err != nil {
		return nil, err
	}
	marked, err := t.render(msgs, opt, open, close)
	if err != nil {
		return nil, err
	}
	segs, err := split(marked, open, close)
	if err != nil {
		return nil, err
	}
	ps, ok := align(segs, want)
	if !ok {
		return nil, ErrContentTransformed
	}
	if opt.SkipBOS && opt.BOS != "" && len(ps) > 0 && ps[0].Marker && strings.HasPrefix(ps[0].Text, opt.BOS) {
		ps[0].Text = strings.TrimPrefix(ps[0].Text, opt.BOS)
		if ps[0].Text == "" {
			ps = ps[1:]
		}
	}
	return ps, nil
}

func (t *Template) render(msgs []wire.Message, opt Options, open, close string) (string, error) {
	vars := map[string]jinja.Value{
		"messages":              jinja.FromGoValue(messageValues(msgs, open, close)),
		"add_generation_prompt": jinja.NewBool(true),
		"bos_token":             jinja.NewString(opt.BOS),
		"eos_token":             jinja.NewString(opt.EOS),
		// Python's strftime("%d %b %Y"), as Llama 3.1's template expects.
		"date_string": jinja.NewString(opt.Now.Format("02 Jan 2006")),
		"strftime_now": jinja.NewCallable("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			format := "%Y-%m-%d"
			if len(args) > 0 {
				format = str(args[0])
			}
			return jinja.NewString(strftime(opt.Now, format)), nil
		}),
		"raise_exception": jinja.NewCallable("raise_exception", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
			msg := "raise_exception"
			if len(args) > 0 {
				msg = str(args[0])
			}
			return jinja.Undefined(), &RefusedError{Message: msg}
		}),
	}
	if len(opt.Tools) > 0 {
		vars["tools"] = jinja.FromGoValue(toolValues(opt.Tools))
	}
	out, err := t.t.RenderValues(vars)
	return strings.ReplaceAll(out, tagSeparator, ""), err
}

// str is a template value as Python's str() writes it.
func str(v jinja.Value) string {
	if v.IsString() {
		return v.AsString()
	}
	return v.String()
}

// tagSeparator goes between two adjacent tags of a template and out of
// what it renders. ardanlabs/jinja v1.8.0 (and the newer ones, which need
// Go 1.27) applies a tag's whitespace control ({%- or -%}) to the nearest
// text even across other tags, where Jinja touches only the text right
// beside the tag: in "context.\n\n{% for m in msgs %}{%- if ... -%}" the
// "{%-" ate the "\n\n" before the loop (ChatQA's template rendered
// "context.User:" for "context.\n\nUser: "). A non-space character
// between the tags is the empty text Jinja sees there, and stops the
// trimming.
const tagSeparator = "\U0010FFFD"

var adjacentTags = regexp.MustCompile(`(-?[%}#]\})(\{[%{#])`)

func separateTags(src string) string {
	return adjacentTags.ReplaceAllString(src, "${1}"+tagSeparator+"${2}")
}

// messageValues gives the template the messages as Hugging Face's
// apply_chat_template does: tool calls with their arguments parsed, under
// "function" (as OpenAI nests them) and at the top level (as Qwen's and
// Hermes' templates read them).
func messageValues(msgs []wire.Message, open, close string) []any {
	out := make([]any, len(msgs))
	for i, m := range msgs {
		v := map[string]any{"role": m.Role, "content": open + m.Content + close}
		if m.Role == "assistant" && len(m.ToolCalls) > 0 {
			if m.Content == "" {
				v["content"] = nil
			}
			calls := make([]any, len(m.ToolCalls))
			for j, c := range m.ToolCalls {
				args := decodeJSON(c.Arguments)
				fn := map[string]any{"name": c.Name, "arguments": args}
				calls[j] = map[string]any{"id": c.ID, "type": "function", "function": fn, "name": c.Name, "arguments": args}
			}
			v["tool_calls"] = calls
		}
		if m.ToolCallID != "" {
			v["tool_call_id"] = m.ToolCallID
		}
		out[i] = v
	}
	return out
}

func toolValues(tools []wire.Tool) []any {
	out := make([]any, len(tools))
	for i, tl := range tools {
		fn := map[string]any{"name": tl.Name}
		if tl.Description != "" {
			fn["description"] = tl.Description
		}
		if len(tl.Parameters) > 0 {
			fn["parameters"] = decodeJSON(string(tl.Parameters))
		}
		out[i] = map[string]any{"type": "function", "function": fn}
	}
	return out
}

// decodeJSON parses JSON keeping integers integers (tojson must write 3,
// not 3.0); text that is not JSON stays a string.
func decodeJSON(s string) any {
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return s
	}
	return v
}

// pickSentinels finds a pair of sentinels that occurs nowhere in the
// request.
func pickSentinels(msgs []wire.Message, tools []wire.Tool) (string, string, bool) {
	var all strings.Builder
	for _, m := range msgs {
		all.WriteString(m.Content)
		for _, c := range m.ToolCalls {
			all.WriteString(c.Name + c.Arguments)
		}
	}
	for _, tl := range tools {
		all.WriteString(tl.Name + tl.Description)
		all.Write(tl.Parameters)
	}
	s := all.String()
	if strings.Contains(s, tagSeparator) {
		return "", "", false
	}
	for _, c := range sentinelCandidates {
		if !strings.Contains(s, c[0]) && !strings.Contains(s, c[1]) {
			return c[0], c[1], true
		}
	}
	return "", "", false
}

// split cuts a sentinel-marked render into template text (markers) and
// message content (text), one segment per content.
func split(s, open, close string) ([]Part, error) {
	var segs []Part
	for s != "" {
		i := strings.Index(s, open)
		if i < 0 {
			if strings.Contains(s, close) {
				return nil, ErrContentTransformed
			}
			segs = append(segs, Part{Text: s, Marker: true})
			break
		}
		if i > 0 {
			segs = append(segs, Part{Text: s[:i], Marker: true})
		}
		s = s[i+len(open):]
		j := strings.Index(s, close)
		if j < 0 || strings.Contains(s[:j], open) {
			return nil, ErrContentTransformed
		}
		segs = append(segs, Part{Text: s[:j]})
		s = s[j+len(close):]
	}
	return segs, nil
}

// align matches split segments against the plain render want: template
// text must match exactly; each content is taken as rendered, or trimmed
// as the template trimmed it (Llama 3's trims message content but not a
// tool's result), whichever lets the rest of the render follow.
func align(segs []Part, want string) ([]Part, bool) {
	var b parts
	for i, sg := range segs {
		if sg.Marker {
			if !strings.HasPrefix(want, sg.Text) {
				return nil, false
			}
			b.marker(sg.Text)
			want = want[len(sg.Text):]
			continue
		}
		found := false
		for _, c := range []string{sg.Text, strings.TrimSpace(sg.Text), strings.TrimLeft(sg.Text, " \t\r\n"), strings.TrimRight(sg.Text, " \t\r\n")} {
			if !strings.HasPrefix(want, c) {
				continue
			}
			rest := want[len(c):]
			switch {
			case i+1 == len(segs) && rest != "":
				continue
			case i+1 < len(segs) && segs[i+1].Marker && !strings.HasPrefix(rest, segs[i+1].Text):
				continue
			}
			b.text(c)
			want, found = rest, true
			break
		}
		if !found {
			return nil, false
		}
	}
	return b, want == ""
}

// strftime formats t as Python's strftime does, for the directives chat
// templates use; other text is copied as is.
func strftime(t time.Time, format string) string {
	layouts := map[byte]string{
		'Y': "2006", 'm': "01", 'd': "02", 'H': "15", 'M': "04", 'S': "05",
		'B': "January", 'b': "Jan", 'A': "Monday", 'a': "Mon", 'p': "PM",
		'I': "03", 'y': "06", 'Z': "MST", 'j': "002",
	}
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			b.WriteByte(format[i])
			continue
		}
		i++
		switch l, ok := layouts[format[i]]; {
		case ok:
			b.WriteString(t.Format(l))
		case format[i] == '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}

// RefusedError is a template's raise_exception: the conversation breaks
// the model's rules (say, roles that do not alternate). It is the
// caller's error, not the server's.
type RefusedError struct{ Message string }

func (e *RefusedError) Error() string {
	return "the chat template refused the conversation: " + e.Message
}
