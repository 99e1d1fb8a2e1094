package activator

// CompatRow is a row of compatTable for the external tests.
type CompatRow struct {
	Name                            string
	Chat, Completion, AsyncOnly     bool
	Embedding                       bool
	Supported, Partial, Unsupported bool
	// Tools marks the rows of tool calling, which the tools work tests.
	Tools bool
}

// CompatRows lists compatTable.
func CompatRows() []CompatRow {
	out := make([]CompatRow, len(compatTable))
	for i, r := range compatTable {
		out[i] = CompatRow{
			Name: r.name, Chat: r.on&forChat != 0, Completion: r.on&forCompletion != 0, AsyncOnly: r.on&forAsync != 0, Embedding: r.on&forEmbedding != 0,
			Supported: r.support == supYes, Partial: r.support == supPartial, Unsupported: r.support == supNo,
			Tools: r.name == "tools" || r.name == "tool_choice" || r.name == "parallel_tool_calls",
		}
	}
	return out
}
