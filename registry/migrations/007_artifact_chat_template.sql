-- The chat template an artifact's weights bring (chat.Resolve of its
-- GGUF's tokenizer.chat_template: "jinja" for the model's own, a family
-- name, or "plain" for a base model), recorded at upload so that listing a
-- deployment says which template serves it without reading the weights.
-- Empty for artifacts uploaded before: the runner still decides from the
-- weights, and the listing says "from the weights".
ALTER TABLE artifacts ADD COLUMN chat_template text NOT NULL DEFAULT '';
