package runner

import (
	"errors"
	"log/slog"
	"time"

	"github.com/infer-run/infer/internal/chat"
	"github.com/infer-run/infer/internal/gguf"
	"github.com/infer-run/infer/internal/wire"
)

// prompter turns chats into prompts for one loaded model, with the
// template the deployment chose or the model's own.
type prompter struct {
	// name is the template in use (chat.Resolve).
	name string
	// jinja is the model's template when name is chat.Jinja, compiled
	// from source (the GGUF's tokenizer.chat_template).
	jinja  *chat.Template
	source string
	// family renders when the model's template cannot keep content apart
	// from its own text (chat.ErrContentTransformed): the family its
	// markers show, else ChatML.
	family string
	opt    chat.Options
	stops  []string
	now    func() time.Time
	log    *slog.Logger
}

// newPrompter picks the template for a model. bos and eos are the
// vocabulary's BOS and EOS texts; addsBOS says whether the tokenizer adds
// BOS itself (then one the template writes first is dropped).
func newPrompter(override string, info gguf.ModelInfo, bos, eos string, addsBOS bool, now func() time.Time, log *slog.Logger) *prompter {
	p := &prompter{
		name:   chat.Resolve(override, info.ChatTemplate),
		family: chat.Detect(info.ChatTemplate),
		source: info.ChatTemplate,
		opt:    chat.Options{BOS: bos, EOS: eos, SkipBOS: addsBOS},
		now:    now,
		log:    log,
	}
	if p.family == "" || p.family == chat.Plain {
		p.family = chat.ChatML
	}
	if p.name == chat.Jinja {
		t, err := chat.Compile(info.ChatTemplate)
		if err != nil {
			// A deployment that names "jinja" for weights whose template
			// the engine cannot compile.
			log.Warn("the model's chat template does not compile; using its family", "family", p.family, "err", err)
			p.name = p.family
		} else {
			p.jinja = t
		}
	}
	p.stops = chat.Stops(p.name, info.ChatTemplate)
	return p
}

// render renders a chat. A template's raise_exception is the caller's
// error (*chat.RefusedError); a template that transforms content beyond
// what the renderer can follow falls back to the family renderer.
func (p *prompter) render(msgs []wire.Message, tools []wire.Tool) ([]chat.Part, error) {
	if p.jinja == nil {
		return chat.RenderFamily(p.name, msgs), nil
	}
	opt := p.opt
	opt.Tools = tools
	opt.Now = p.now()
	parts, err := p.jinja.Render(msgs, opt)
	var refused *chat.RefusedError
	switch {
	case err == nil:
		return parts, nil
	case errors.As(err, &refused):
		return nil, err
	}
	p.log.Warn("rendering with the model's chat template failed; using its family", "family", p.family, "err", err)
	return chat.RenderFamily(p.family, msgs), nil
}

// newPrompter picks the template for the loaded model.
func (e *Engine) newPrompter(override string, now func() time.Time, log *slog.Logger) *prompter {
	bos, eos := specialTokens(e.model)
	return newPrompter(override, e.info, bos, eos, e.model.AddBOSToken(), now, log)
}
