package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Artifact is one uploaded set of weights, named by its SHA-256. Artifacts
// are immutable: the same digest always means the same bytes at ObjectKey.
type Artifact struct {
	SHA256         string `json:"sha256"`
	Size           int64  `json:"size"`
	ObjectKey      string `json:"object_key"`
	Architecture   string `json:"architecture"`
	ParameterCount int64  `json:"parameter_count"`
	Quantization   string `json:"quantization"`
	ContextLength  int    `json:"context_length"`
	// ChatTemplate is the template the weights bring (chat.Resolve):
	// "jinja", a family, or "plain"; empty if uploaded before it was
	// recorded.
	ChatTemplate string `json:"chat_template"`
	// Pooling is how the model pools an embedding (gguf.ModelInfo's);
	// empty when the file does not say or it was uploaded before it was
	// recorded.
	Pooling   string    `json:"pooling,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

const artifactColumns = `sha256, size, object_key, architecture, parameter_count, quantization, context_length, chat_template, pooling, created_at`

func scanArtifact(row pgx.Row) (Artifact, error) {
	var a Artifact
	err := row.Scan(&a.SHA256, &a.Size, &a.ObjectKey, &a.Architecture, &a.ParameterCount, &a.Quantization, &a.ContextLength, &a.ChatTemplate, &a.Pooling, &a.CreatedAt)
	return a, err
}

// validSHA256 checks for 64 lowercase hex digits, the form every artifact
// is named by.
func validSHA256(s string) error {
	if len(s) != 64 {
		return fmt.Errorf("artifact digest %q: want 64 hex digits", s)
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("artifact digest %q: want lowercase hex digits", s)
		}
	}
	return nil
}

// PutArtifact records a, unless an artifact with its digest exists already.
// It returns the stored record — the existing one if there was one — and
// whether this call created it.
func (s *Store) PutArtifact(ctx context.Context, a Artifact) (Artifact, bool, error) {
	if err := validSHA256(a.SHA256); err != nil {
		return Artifact{}, false, err
	}
	if a.Size <= 0 || a.ObjectKey == "" {
		return Artifact{}, false, fmt.Errorf("artifact %s: size and object key are required", a.SHA256)
	}
	stored, err := scanArtifact(s.pool.QueryRow(ctx, `
		INSERT INTO artifacts (sha256, size, object_key, architecture, parameter_count, quantization, context_length, chat_template, pooling)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (sha256) DO NOTHING
		RETURNING `+artifactColumns,
		a.SHA256, a.Size, a.ObjectKey, a.Architecture, a.ParameterCount, a.Quantization, a.ContextLength, a.ChatTemplate, a.Pooling))
	if err == nil {
		return stored, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Artifact{}, false, fmt.Errorf("recording artifact %s: %w", a.SHA256, err)
	}
	// Someone stored the same bytes first.
	stored, err = s.GetArtifact(ctx, a.SHA256)
	if err != nil {
		return Artifact{}, false, err
	}
	return stored, false, nil
}

// GetArtifact returns the artifact with this digest.
func (s *Store) GetArtifact(ctx context.Context, sha string) (Artifact, error) {
	a, err := scanArtifact(s.pool.QueryRow(ctx, `SELECT `+artifactColumns+` FROM artifacts WHERE sha256 = $1`, sha))
	if err != nil {
		return Artifact{}, notFound(err, "artifact "+sha)
	}
	return a, nil
}

// SetArtifactObject points an artifact at a new object holding the same
// bytes, if it still points at old (so two repairs at once do not fight).
func (s *Store) SetArtifactObject(ctx context.Context, sha, old, key string) (Artifact, error) {
	a, err := scanArtifact(s.pool.QueryRow(ctx, `
		UPDATE artifacts SET object_key = $3 WHERE sha256 = $1 AND object_key = $2
		RETURNING `+artifactColumns, sha, old, key))
	if errors.Is(err, pgx.ErrNoRows) {
		return Artifact{}, fmt.Errorf("artifact %s changed while being repaired: %w", sha, ErrConflict)
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("repairing artifact %s: %w", sha, err)
	}
	return a, nil
}

// AddArtifactOwner records that the tenant uploaded the artifact's bytes,
// which entitles it to deploy them. Adding an owner twice is a no-op.
func (s *Store) AddArtifactOwner(ctx context.Context, tenantID, sha string) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO artifact_owners (tenant_id, sha256) VALUES ($1, $2)
		ON CONFLICT DO NOTHING`, tenantID, sha)
	if pgCode(err) == codeForeignKey {
		return fmt.Errorf("recording owner %s of artifact %s: %w", tenantID, sha, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("recording owner %s of artifact %s: %w", tenantID, sha, err)
	}
	return nil
}

// GetTenantArtifact returns the artifact with this digest if the tenant
// uploaded it; another tenant's artifact is ErrNotFound, like a missing one,
// so that digests do not reveal what others uploaded.
func (s *Store) GetTenantArtifact(ctx context.Context, tenantID, sha string) (Artifact, error) {
	a, err := scanArtifact(s.pool.QueryRow(ctx, `
		SELECT `+prefixed("a.", artifactColumns)+` FROM artifacts a
		JOIN artifact_owners o ON o.sha256 = a.sha256 AND o.tenant_id = $1
		WHERE a.sha256 = $2`, tenantID, sha))
	if err != nil {
		return Artifact{}, notFound(err, "artifact "+sha)
	}
	return a, nil
}

// prefixed qualifies each column of a comma-separated list.
func prefixed(prefix, columns string) string {
	cols := strings.Split(columns, ",")
	for i, c := range cols {
		cols[i] = prefix + strings.TrimSpace(c)
	}
	return strings.Join(cols, ", ")
}
