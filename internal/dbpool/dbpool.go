// Package dbpool configures Sagaflow's PostgreSQL connection pools the same
// way wherever one is opened (serve, dev, bench, tests): uuids sent in
// binary, a connect timeout, and per-session limits on how long a statement
// may run and a transaction may sit idle, so that nothing — a hung query, a
// client that vanished inside a transaction — holds locks or connections
// without bound.
package dbpool

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/uuidcodec"
)

// Defaults of the session limits, used unless the database URL sets them.
const (
	// StatementTimeout ends a statement that runs longer (SQLSTATE 57014):
	// Sagaflow's statements take milliseconds; one that takes 30 s is
	// stuck on a lock or a bug.
	StatementTimeout = "30s"
	// IdleInTransactionTimeout ends a session whose transaction has been
	// idle that long (its client hung or vanished mid-transaction).
	IdleInTransactionTimeout = "1min"
	// ConnectTimeout bounds opening a connection.
	ConnectTimeout = 5 * time.Second
)

// Configure applies Sagaflow's pool settings to cfg, keeping any session
// setting the URL already gives.
func Configure(cfg *pgxpool.Config) {
	uuidcodec.Register(cfg)
	p := cfg.ConnConfig.RuntimeParams
	if _, ok := p["statement_timeout"]; !ok {
		p["statement_timeout"] = StatementTimeout
	}
	if _, ok := p["idle_in_transaction_session_timeout"]; !ok {
		p["idle_in_transaction_session_timeout"] = IdleInTransactionTimeout
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = ConnectTimeout
	}
}
