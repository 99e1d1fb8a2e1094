package registry

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Roles an API key can have.
const (
	// RoleAdmin may manage its tenant: upload weights, create, change and
	// delete deployments, as well as call models.
	RoleAdmin = "admin"
	// RoleUser may only call its tenant's models (those its Limits allow)
	// and read what concerns it: those deployments, its own usage and
	// async jobs.
	RoleUser = "user"
)

// keyPrefix starts every key infer generates, so leaked keys are easy to
// recognise (and to scan for).
const keyPrefix = "sk-infer-"

// displayPrefixLen is how much of a key is kept in clear for display.
const displayPrefixLen = 12

// minAdminKeyLen is the shortest secret EnsureAdminKey accepts: the key is
// chosen by an operator, and a short one would be guessable.
const minAdminKeyLen = 16

// Tenant owns keys and deployments.
type Tenant struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// SuspendedAt is set while an operator has suspended the tenant.
	SuspendedAt *time.Time `json:"suspended_at"`
	// Operator marks the platform operator's tenant (see OperatorTenant).
	Operator bool   `json:"operator"`
	Quotas   Quotas `json:"quotas"`
	// MonthSpentUSD is what the tenant's usage has cost this calendar
	// month (UTC) so far, as a decimal string: the figure its monthly
	// budget is checked against, and the current month's invoice total.
	MonthSpentUSD string `json:"month_spent_usd"`
}

// APIKey is a key's record. The secret itself is never stored.
type APIKey struct {
	ID        string     `json:"id"`
	TenantID  string     `json:"tenant_id"`
	Name      string     `json:"name"`
	Role      string     `json:"role"`
	Prefix    string     `json:"prefix"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	Limits
	// Tenant is the state of the key's tenant when the key was loaded
	// (see tenants.go); a change to the tenant reloads cached keys.
	Tenant TenantState `json:"-"`
}

// Limits restrict what a key may do. Zero values do not restrict.
type Limits struct {
	// Deployments the key may call, by name; empty allows all of its
	// tenant's.
	Deployments []string `json:"deployments"`
	// RequestsPerMinute and TokensPerMinute bound the key's rate (prompt
	// plus completion tokens); 0 is unlimited.
	RequestsPerMinute int `json:"requests_per_minute"`
	TokensPerMinute   int `json:"tokens_per_minute"`
	// BudgetUSD caps what the key's requests may cost in total; nil is
	// unlimited.
	BudgetUSD *float64 `json:"budget_usd,omitempty"`
	// Share is the key's weight in fair sharing: while a deployment is
	// saturated, each key gets places in proportion to its share
	// (activator/fair.go). 0 on create means 1.
	Share int `json:"share"`
}

// Allows reports whether the key may call the named deployment (tenancy is
// checked separately).
func (l Limits) Allows(deployment string) bool {
	return len(l.Deployments) == 0 || slices.Contains(l.Deployments, deployment)
}

// MaxRatePerMinute bounds a key's requests and tokens per minute: the
// columns are 32-bit. (No real limit comes near it; larger means none.)
const MaxRatePerMinute = math.MaxInt32

// MaxShare bounds a key's fair-sharing weight (the column's CHECK): a
// thousand to one is more skew than any sharing policy needs.
const MaxShare = 1000

// MaxBudgetUSD bounds a key's budget, well inside its column
// (numeric(20, 9): below 10^11) and above any real one.
const MaxBudgetUSD = 1e9

// Validate checks the limits can be stored; the error is a *FieldError
// naming the field as the API spells it.
func (l Limits) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"requests_per_minute", l.RequestsPerMinute}, {"tokens_per_minute", l.TokensPerMinute}} {
		if f.v < 0 || f.v > MaxRatePerMinute {
			return fieldError(f.name, "%s is %d; it must be between 0 (unlimited) and %d", f.name, f.v, MaxRatePerMinute)
		}
	}
	if l.Share < 0 || l.Share > MaxShare {
		return fieldError("share", "share is %d; it must be between 1 and %d (0 or unset: 1)", l.Share, MaxShare)
	}
	// The negated comparison also refuses NaN.
	if l.BudgetUSD != nil && !(*l.BudgetUSD >= 0 && *l.BudgetUSD <= MaxBudgetUSD) {
		return fieldError("budget_usd", "budget_usd is %v; it must be between 0 and %.0f US dollars", *l.BudgetUSD, float64(MaxBudgetUSD))
	}
	for _, d := range l.Deployments {
		if err := ValidName(d); err != nil {
			return &FieldError{Field: "deployments", Err: err}
		}
	}
	return nil
}

// newID returns a random identifier such as "key_3ypq…" (130 random bits).
func newID(kind string) string {
	return kind + "_" + strings.ToLower(rand.Text())
}

func hashKey(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// hashMatches reports, in constant time, whether stored is the hash h.
//
// Keys are found by their hash (an index lookup in Postgres, a lookup on
// the hash's first bytes in the Cache, which then compares the whole hash
// here), and finding them so is not a timing oracle: what is compared, and
// what its timing could reveal, is SHA-256 of the presented secret, not
// the secret. Learning that a stored hash shares a prefix with the hash of
// a guess does not help forge a key — that would take a preimage of
// SHA-256 — and generated keys hold 256 random bits (admin keys set by
// operators at least minAdminKeyLen characters), so guessing is no option
// either.
func hashMatches(stored []byte, h [sha256.Size]byte) bool {
	return subtle.ConstantTimeCompare(stored, h[:]) == 1
}

// MaxKeyNameLen bounds an API key's name, in bytes.
const MaxKeyNameLen = 128

// ValidKeyName checks an API key's name: at most MaxKeyNameLen bytes of
// UTF-8 without control or formatting characters. The name is shown in
// `infer keys ls` and logs, where a newline, an escape sequence or a
// right-to-left override would forge or hide output, and Postgres refuses
// a NUL outright. Empty is allowed.
func ValidKeyName(name string) error {
	if len(name) > MaxKeyNameLen {
		return fmt.Errorf("key name is %d bytes long; at most %d are allowed", len(name), MaxKeyNameLen)
	}
	if !utf8.ValidString(name) {
		return errors.New("key name is not valid UTF-8")
	}
	for i, r := range name {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Errorf("key name has the control or formatting character %U at byte %d", r, i)
		}
	}
	return nil
}

func displayPrefix(secret string) string {
	if len(secret) > displayPrefixLen {
		return secret[:displayPrefixLen]
	}
	return secret
}

// EnsureTenant returns the tenant called name, creating it if needed.
func (s *Store) EnsureTenant(ctx context.Context, name string) (Tenant, error) {
	if name == "" {
		return Tenant{}, errors.New("tenant name is empty")
	}
	var t Tenant
	err := s.pool.QueryRow(ctx, `
		INSERT INTO tenants (id, name) VALUES ($1, $2)
		ON CONFLICT (name) DO NOTHING
		RETURNING id, name, created_at`, newID("tnt"), name).Scan(&t.ID, &t.Name, &t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		err = s.pool.QueryRow(ctx, `SELECT id, name, created_at FROM tenants WHERE name = $1`, name).
			Scan(&t.ID, &t.Name, &t.CreatedAt)
	}
	if err != nil {
		return Tenant{}, fmt.Errorf("ensuring tenant %q: %w", name, err)
	}
	return t, nil
}

func validRole(role string) error {
	if role != RoleAdmin && role != RoleUser {
		return fmt.Errorf("role %q: must be %q or %q", role, RoleAdmin, RoleUser)
	}
	return nil
}

const keyColumns = `id, tenant_id, name, role, prefix, created_at, revoked_at,
	deployments, requests_per_min, tokens_per_min, budget_usd::float8, share, ` + keyTenantColumns

func scanKey(row pgx.Row, extra ...any) (APIKey, error) {
	var k APIKey
	dst := append(extra, &k.ID, &k.TenantID, &k.Name, &k.Role, &k.Prefix, &k.CreatedAt, &k.RevokedAt,
		&k.Deployments, &k.RequestsPerMinute, &k.TokensPerMinute, &k.BudgetUSD, &k.Share,
		&k.Tenant.Suspended, &k.Tenant.Operator, &k.Tenant.RequestsPerMinute, &k.Tenant.TokensPerMinute, &k.Tenant.MaxRunners,
		&k.Tenant.MonthlyBudgetUSD)
	err := row.Scan(dst...)
	if k.Deployments == nil {
		k.Deployments = []string{}
	}
	return k, err
}

// CreateKey makes a new unrestricted key for the tenant and returns its
// record and the secret, which cannot be recovered later.
func (s *Store) CreateKey(ctx context.Context, tenantID, name, role string) (APIKey, string, error) {
	return s.CreateLimitedKey(ctx, tenantID, name, role, Limits{})
}

// CreateLimitedKey is CreateKey with restrictions.
func (s *Store) CreateLimitedKey(ctx context.Context, tenantID, name, role string, l Limits) (APIKey, string, error) {
	if err := validRole(role); err != nil {
		return APIKey{}, "", err
	}
	if err := ValidKeyName(name); err != nil {
		return APIKey{}, "", fmt.Errorf("creating key: %w", err)
	}
	if err := l.Validate(); err != nil {
		return APIKey{}, "", fmt.Errorf("creating key: %w", err)
	}
	deps := l.Deployments
	if deps == nil {
		deps = []string{}
	}
	var raw [32]byte
	rand.Read(raw[:]) // never fails, per crypto/rand
	secret := keyPrefix + hex.EncodeToString(raw[:])
	k, err := scanKey(s.pool.QueryRow(ctx, `
		INSERT INTO api_keys (id, tenant_id, name, role, prefix, hash, deployments, requests_per_min, tokens_per_min, budget_usd, share)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, greatest($11::int, 1))
		RETURNING `+keyColumns,
		newID("key"), tenantID, name, role, displayPrefix(secret), hashKey(secret),
		deps, l.RequestsPerMinute, l.TokensPerMinute, l.BudgetUSD, l.Share))
	if pgCode(err) == codeForeignKey {
		return APIKey{}, "", fmt.Errorf("creating key: tenant %q: %w", tenantID, ErrNotFound)
	}
	if err != nil {
		return APIKey{}, "", fmt.Errorf("creating key: %w", err)
	}
	return k, secret, nil
}

// EnsureAdminKey makes secret an admin key of the named tenant (creating
// the tenant if needed). It is how INFER_ADMIN_KEY (and `infer dev`'s
// saved key) is installed at every start, so it is idempotent, and a key
// with this secret that was demoted or moved is made the tenant's admin
// key again. A revoked one is not reinstated: revoking is how an operator
// retires a leaked key, and a restart must not undo it. It returns an
// error wrapping ErrRevoked instead; choose a new secret.
//
// The secret must pass CheckAdminSecret.
func (s *Store) EnsureAdminKey(ctx context.Context, tenantName, secret string) (APIKey, error) {
	if err := CheckAdminSecret(secret); err != nil {
		return APIKey{}, err
	}
	t, err := s.EnsureTenant(ctx, tenantName)
	if err != nil {
		return APIKey{}, err
	}
	k, err := scanKey(s.pool.QueryRow(ctx, `
		INSERT INTO api_keys (id, tenant_id, name, role, prefix, hash)
		VALUES ($1, $2, 'INFER_ADMIN_KEY', 'admin', $3, $4)
		ON CONFLICT (hash) DO UPDATE
		SET tenant_id = excluded.tenant_id, role = 'admin'
		WHERE api_keys.revoked_at IS NULL
		RETURNING `+keyColumns,
		newID("key"), t.ID, displayPrefix(secret), hashKey(secret)))
	if errors.Is(err, pgx.ErrNoRows) {
		// The conflicting key exists and is revoked (the only case the
		// WHERE skips).
		var id string
		var at time.Time
		if err := s.pool.QueryRow(ctx, `SELECT id, revoked_at FROM api_keys WHERE hash = $1`, hashKey(secret)).Scan(&id, &at); err != nil {
			return APIKey{}, fmt.Errorf("installing admin key: %w", err)
		}
		return APIKey{}, fmt.Errorf("admin key %s (%s…) was revoked at %s and stays revoked: %w",
			id, displayPrefix(secret), at.UTC().Format(time.RFC3339), ErrRevoked)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("installing admin key: %w", err)
	}
	return k, nil
}

// placeholderAdminKeys are spellings of "put your key here" that shipped
// in examples and templates; an operator who forgot to replace one would
// otherwise run with a key anyone can read.
var placeholderAdminKeys = []string{"change-me", "changeme", "change_me", "replace-me", "replaceme", "placeholder", "your-admin-key", "example-key"}

// minAdminKeyDistinct is how many distinct characters an admin key needs:
// "aaaaaaaaaaaaaaaa" is long enough and guessable all the same.
const minAdminKeyDistinct = 6

// CheckAdminSecret refuses an operator-chosen admin key that anyone could
// guess: shorter than minAdminKeyLen characters, made of fewer than
// minAdminKeyDistinct distinct characters, or holding a known placeholder
// such as the one docker-compose.yml used to default to
// ("change-me-infer-admin-key").
func CheckAdminSecret(secret string) error {
	if len(secret) < minAdminKeyLen {
		return fmt.Errorf("admin key is %d characters; use at least %d (e.g. openssl rand -hex 24)", len(secret), minAdminKeyLen)
	}
	lower := strings.ToLower(secret)
	for _, p := range placeholderAdminKeys {
		if strings.Contains(lower, p) {
			return fmt.Errorf("admin key contains the placeholder %q: set a random one (e.g. openssl rand -hex 24)", p)
		}
	}
	distinct := map[rune]bool{}
	for _, r := range secret {
		distinct[r] = true
	}
	if len(distinct) < minAdminKeyDistinct {
		return fmt.Errorf("admin key has only %d distinct characters: set a random one (e.g. openssl rand -hex 24)", len(distinct))
	}
	return nil
}

// AuthenticateKey returns the live key whose secret this is, or an error
// wrapping ErrUnauthorized.
func (s *Store) AuthenticateKey(ctx context.Context, secret string) (APIKey, error) {
	if secret == "" {
		return APIKey{}, fmt.Errorf("empty API key: %w", ErrUnauthorized)
	}
	// Postgres finds the key by its hash (see hashMatches); the activator
	// asks the Cache, which asks here only until it has loaded.
	k, err := scanKey(s.pool.QueryRow(ctx,
		`SELECT `+keyColumns+` FROM api_keys WHERE hash = $1 AND revoked_at IS NULL`, hashKey(secret)))
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, fmt.Errorf("unknown or revoked API key: %w", ErrUnauthorized)
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("authenticating API key: %w", err)
	}
	return k, nil
}

// ListKeys returns the tenant's keys, revoked ones included, oldest first.
func (s *Store) ListKeys(ctx context.Context, tenantID string) ([]APIKey, error) {
	rows, err := s.pool.Query(ctx,
		`SELECT `+keyColumns+` FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id`, tenantID)
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (APIKey, error) { return scanKey(r) })
	if err != nil {
		return nil, fmt.Errorf("listing keys: %w", err)
	}
	return keys, nil
}

// RevokeKey stops the tenant's key from authenticating. Revoking a revoked
// key is a no-op; another tenant's key is ErrNotFound.
func (s *Store) RevokeKey(ctx context.Context, tenantID, keyID string) error {
	var revoked bool
	err := s.pool.QueryRow(ctx, `
		UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
		WHERE id = $1 AND tenant_id = $2
		RETURNING true`, keyID, tenantID).Scan(&revoked)
	if err != nil {
		return notFound(err, "key "+keyID)
	}
	return nil
}

// SetKeyShare sets the tenant's key's fair-sharing weight (1 to MaxShare).
// The change notifies every activator's cache like any key change, so the
// gates weigh the key anew within a notification.
func (s *Store) SetKeyShare(ctx context.Context, tenantID, keyID string, share int) (APIKey, error) {
	if share < 1 || share > MaxShare {
		return APIKey{}, fieldError("share", "share is %d; it must be between 1 and %d", share, MaxShare)
	}
	k, err := scanKey(s.pool.QueryRow(ctx, `
		UPDATE api_keys SET share = $3 WHERE id = $1 AND tenant_id = $2
		RETURNING `+keyColumns, keyID, tenantID, share))
	if err != nil {
		return APIKey{}, notFound(err, "key "+keyID)
	}
	return k, nil
}

// HasAnyKey reports whether any key can still authenticate.
func (s *Store) HasAnyKey(ctx context.Context) (bool, error) {
	var has bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)`).Scan(&has); err != nil {
		return false, fmt.Errorf("checking for API keys: %w", err)
	}
	return has, nil
}
