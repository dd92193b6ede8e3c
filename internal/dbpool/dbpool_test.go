package dbpool_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// show reads a setting of a session of pool.
func show(t *testing.T, pool *pgxpool.Pool, name string) string {
	t.Helper()
	var v string
	if err := pool.QueryRow(context.Background(), "SELECT current_setting($1)", name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// Every pool's sessions end a statement that runs too long and a
// transaction left idle too long, so that a hung statement or a client
// that forgot its transaction cannot hold locks, a leader's followers or a
// connection without bound. (Before: neither was set anywhere; both were
// 0, no limit.) Values the URL gives win.
func TestPoolsHaveTimeouts(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	for _, tc := range []struct {
		name, query, statement, idleInTx string
	}{
		{"defaults", "", "30s", "1min"}, // testenv URLs carry a query (sslmode)
		{"the URL's values", "&statement_timeout=5s&idle_in_transaction_session_timeout=7s", "5s", "7s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := pgxpool.ParseConfig(db.URL + tc.query)
			if err != nil {
				t.Fatal(err)
			}
			dbpool.Configure(cfg)
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			if got := show(t, pool, "statement_timeout"); got != tc.statement {
				t.Errorf("statement_timeout %q, want %q", got, tc.statement)
			}
			if got := show(t, pool, "idle_in_transaction_session_timeout"); got != tc.idleInTx {
				t.Errorf("idle_in_transaction_session_timeout %q, want %q", got, tc.idleInTx)
			}
		})
	}
	// The test environment's pools are configured the same way.
	if got := show(t, db.Pool, "statement_timeout"); got != "30s" {
		t.Errorf("testenv pool: statement_timeout %q, want 30s", got)
	}
}
