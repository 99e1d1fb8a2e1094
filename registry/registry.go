// Package registry keeps infer's records in Postgres — tenants, API keys,
// uploaded weights (artifacts), deployments and per-request usage — and
// validates GGUF uploads on their way into the object store.
//
// Every activator and the control plane share one database. Changes to
// deployments and API keys raise a Postgres notification on ChangesChannel
// so that processes caching them can refresh at once.
package registry

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotFound: the record does not exist (or is not visible to the
	// tenant asking).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the write collides with a record someone else owns,
	// such as a deployment name taken by another tenant.
	ErrConflict = errors.New("conflict")
	// ErrUnauthorized: an API key is unknown or revoked.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrRevoked: EnsureAdminKey was given a secret whose key was revoked.
	ErrRevoked = errors.New("the key was revoked")
)

// ChangesChannel is the Postgres notification channel raised by every change
// to deployments or api_keys; the payload is the table name.
const ChangesChannel = "infer_changes"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// migrationLock is the key of the session advisory lock held while
// migrating, so processes starting together migrate one after the other.
// tern takes a lock of its own too; ours covers the whole sequence and does
// not depend on tern's internals.
const migrationLock int64 = 0x696e666572_0001 // "infer", 1

// versionTable records the applied migration version. It is not schema
// qualified so that it follows the connection's search_path like the
// registry's own tables.
const versionTable = "infer_schema_version"

// Store is the registry database. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// Open connects to the database named by dsn, creating the database if it
// does not exist yet, and applies any pending migrations.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	log := slog.Default().With("component", "registry")
	pool, err := connect(ctx, cfg)
	if isMissingDatabase(err) {
		log.Info("creating database", "database", cfg.ConnConfig.Database)
		if err := createDatabase(ctx, cfg.ConnConfig); err != nil {
			return nil, err
		}
		pool, err = connect(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("connecting to database %q: %w", cfg.ConnConfig.Database, err)
	}
	if err := migrateDB(ctx, cfg.ConnConfig); err != nil {
		pool.Close()
		return nil, err
	}
	return &Store{pool: pool, log: log}, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Pool is the underlying connection pool, for callers that need a raw
// connection (to LISTEN on ChangesChannel, say).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// connect builds a pool and checks that one connection works; pgxpool
// itself connects lazily and would report a bad DSN only on first use.
func connect(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// Postgres error codes the registry reacts to.
const (
	codeInvalidCatalogName = "3D000" // database does not exist
	codeDuplicateDatabase  = "42P04"
	codeUniqueViolation    = "23505"
	codeForeignKey         = "23503"
	codeObjectInUse        = "55006"
)

func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

func isMissingDatabase(err error) bool { return pgCode(err) == codeInvalidCatalogName }

// createDatabase creates cfg's database through the "postgres" maintenance
// database with the same credentials. Another process may be doing the same
// at the same moment; losing that race is success.
func createDatabase(ctx context.Context, cfg *pgx.ConnConfig) error {
	name := cfg.Database
	if name == "" {
		return errors.New("the database URL names no database to create")
	}
	mcfg := cfg.Copy()
	mcfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, mcfg)
	if err != nil {
		return fmt.Errorf("connecting to the maintenance database to create %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	stmt := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	for attempt := 1; ; attempt++ {
		_, err = conn.Exec(ctx, stmt)
		switch pgCode(err) {
		case "":
			if err != nil {
				return fmt.Errorf("creating database %q: %w", name, err)
			}
			return nil
		case codeDuplicateDatabase, codeUniqueViolation:
			// A concurrent CREATE DATABASE won; the unique violation is how
			// the race shows when both pass the existence check.
			return nil
		case codeObjectInUse:
			// The template database is briefly busy while another
			// database is being created from it.
			if attempt < 10 {
				select {
				case <-ctx.Done():
					return fmt.Errorf("creating database %q: %w", name, ctx.Err())
				case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
				}
				continue
			}
		}
		return fmt.Errorf("creating database %q: %w", name, err)
	}
}

// migrateDB applies pending migrations on a dedicated connection (session
// advisory locks and tern's "reset all" should not touch pooled
// connections).
func migrateDB(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return fmt.Errorf("connecting to migrate: %w", err)
	}
	// Closing the session also releases the advisory lock if anything
	// below fails or ctx is canceled.
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("waiting for the migration lock: %w", err)
	}
	m, err := migrate.NewMigrator(ctx, conn, versionTable)
	if err != nil {
		return fmt.Errorf("preparing migrations: %w", err)
	}
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("loading migrations: %w", err)
	}
	if err := m.LoadMigrations(sub); err != nil {
		return fmt.Errorf("loading migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrating the registry schema: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock($1)", migrationLock); err != nil {
		return fmt.Errorf("releasing the migration lock: %w", err)
	}
	return nil
}

// notFound maps "no rows" to ErrNotFound, saying what was looked up.
func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return fmt.Errorf("looking up %s: %w", what, err)
}

// InvalidInput reports whether Postgres refused err's statement for a value
// it cannot hold (SQLSTATE class 22, data exception: a NUL byte or invalid
// UTF-8 in text, a number past its column's range). Such values are the
// request's fault, not an outage; callers validate before querying, and
// this tells them when a value slipped through.
func InvalidInput(err error) bool {
	return strings.HasPrefix(pgCode(err), "22")
}
