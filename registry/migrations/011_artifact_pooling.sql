-- How an artifact's model pools token vectors into one embedding (its
-- GGUF's <arch>.pooling_type: "mean", "cls", "last", "rank", "none"),
-- recorded at upload so that the activator can tell an embedding model
-- from a generative one without a runner: chat on an embedding model is
-- refused before a runner starts for it. Empty when the file does not
-- say, and for artifacts uploaded before (the runner still refuses them).
ALTER TABLE artifacts ADD COLUMN pooling text NOT NULL DEFAULT '';
