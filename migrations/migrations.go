// Package migrations holds Sagaflow's versioned SQL migrations, embedded in
// the binary, and applies them with tern (jackc/tern/v2), the migration
// library of pgx's author: it runs on a pgx v5 connection, takes a PostgreSQL
// advisory lock so that concurrent migrators wait for each other, and records
// the version in a table so that applying twice is a no-op.
package migrations

import (
	"context"
	"embed"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"
)

//go:embed *.sql
var files embed.FS

// VersionTable records the applied migration version.
const VersionTable = "public.sagaflow_schema_version"

// Apply migrates the database at url to the newest version and returns it.
func Apply(ctx context.Context, url string) (int32, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, fmt.Errorf("connect to PostgreSQL for migrations: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return ApplyConn(ctx, conn)
}

// ApplyConn migrates the database behind conn to the newest version.
func ApplyConn(ctx context.Context, conn *pgx.Conn) (int32, error) {
	// tern creates its version table before it takes its advisory lock; a
	// lock of our own around the whole run keeps two first-time migrators
	// from racing on that CREATE TABLE.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return 0, fmt.Errorf("take the migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lockKey) //nolint:errcheck // the session ends soon after

	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return 0, fmt.Errorf("create migrator: %w", err)
	}
	if err := m.LoadMigrations(files); err != nil {
		return 0, fmt.Errorf("load migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return 0, fmt.Errorf("apply migrations: %w", err)
	}
	v, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("read migration version: %w", err)
	}
	return v, nil
}

// Latest is the version of the newest embedded migration.
func Latest() (int, error) {
	names, err := migrate.FindMigrations(files)
	if err != nil {
		return 0, fmt.Errorf("find migrations: %w", err)
	}
	return len(names), nil
}

// lockKey is an arbitrary constant naming Sagaflow's migration lock.
const lockKey int64 = 0x5a6a_f10e_0001
