package registry

import (
	"crypto/sha256"
	"errors"
	"log/slog"
	"strings"
	"testing"
)

func TestValidKeyName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"", true},
		{"ci", true},
		{"team-a / prod key #2", true},
		{"clé de l'équipe", true},
		{"日本語のキー", true},
		{strings.Repeat("a", MaxKeyNameLen), true},
		{strings.Repeat("a", MaxKeyNameLen+1), false},
		{strings.Repeat("é", MaxKeyNameLen/2+1), false}, // bytes, not characters
		{"a\x00b", false},
		{"a\nb", false},
		{"a\rb", false},
		{"a\tb", false},
		{"\x1b[31mred", false},
		{"a\x7fb", false},
		{"a\u0085b", false},          // C1 next line
		{"evil\u202egpj.exe", false}, // right-to-left override
		{"a\u200bb", false},          // zero-width space
		{"a\ufeffb", false},          // byte order mark
		{"\xff\xfe", false},
	}
	for _, tt := range tests {
		err := ValidKeyName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidKeyName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
	}
}

// TestCreateKeyRefusesBadName: a name Postgres would choke on (NUL) or
// that would forge output is refused before it reaches the database.
func TestCreateKeyRefusesBadName(t *testing.T) {
	s, _ := openStore(t)
	ctx := t.Context()
	tenant, err := s.EnsureTenant(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a\x00b", "a\nb", strings.Repeat("k", MaxKeyNameLen+1)} {
		if _, _, err := s.CreateKey(ctx, tenant.ID, name, RoleUser); err == nil || !strings.Contains(err.Error(), "key name") {
			t.Errorf("CreateKey(%q) = %v, want a key name error", name, err)
		}
	}
	if keys, err := s.ListKeys(ctx, tenant.ID); err != nil || len(keys) != 0 {
		t.Errorf("ListKeys = %+v, %v; want none", keys, err)
	}
}

func TestHashMatches(t *testing.T) {
	h := sha256.Sum256([]byte("sk-infer-0123456789abcdef"))
	flipped := h
	flipped[31] ^= 1
	tests := []struct {
		name   string
		stored []byte
		want   bool
	}{
		{"same", h[:], true},
		{"last bit differs", flipped[:], false},
		{"truncated hash", h[:16], false},
		{"no hash", nil, false},
	}
	for _, tt := range tests {
		if got := hashMatches(tt.stored, h); got != tt.want {
			t.Errorf("%s: hashMatches = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestCacheComparesHash: the cache's index on a hash's first bytes only
// narrows the search; a key is accepted by its whole hash. Two keys whose
// hashes share the indexed prefix each authenticate as themselves, and a
// secret whose hash shares it with neither is refused.
func TestCacheComparesHash(t *testing.T) {
	secret := "sk-infer-0123456789abcdef"
	h := sha256.Sum256([]byte(secret))
	c := NewCache(nil, slog.Default())
	c.loaded = true
	c.keys = keyIndex{}
	// A record under another hash with the same first 8 bytes: only a
	// comparison of whole hashes tells the two apart.
	twin := h
	twin[31] ^= 1
	c.keys.add(cachedKey{APIKey{ID: "key_twin"}, twin})
	c.keys.add(cachedKey{APIKey{ID: "key_a"}, h})
	if k, err := c.AuthenticateKey(t.Context(), secret); err != nil || k.ID != "key_a" {
		t.Fatalf("right key: %+v, %v; want key_a", k, err)
	}
	for _, wrong := range []string{"", "sk-infer-0123456789abcdeF", secret + " "} {
		if _, err := c.AuthenticateKey(t.Context(), wrong); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("AuthenticateKey(%q) = %v, want ErrUnauthorized", wrong, err)
		}
	}
	c.keys = keyIndex{}
	c.keys.add(cachedKey{APIKey{ID: "key_twin"}, twin})
	if k, err := c.AuthenticateKey(t.Context(), secret); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("a key whose hash only shares the indexed prefix authenticated as %+v, %v", k, err)
	}
}
