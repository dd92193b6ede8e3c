package bench

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PGStats is what the database did during the measured window, from
// pg_stat_database and pg_stat_wal (so for every client of the database,
// not the bench's sagas alone).
type PGStats struct {
	Commits   int64 `json:"commits"`
	Rollbacks int64 `json:"rollbacks"`
	// WALSyncs is how many times the WAL was flushed to disk: fewer than
	// commits when commits are grouped.
	WALSyncs int64 `json:"wal_syncs"`
	WALBytes int64 `json:"wal_bytes"`
	// PerSaga divides by the sagas that ended in the window.
	CommitsPerSaga  float64 `json:"commits_per_saga"`
	WALSyncsPerSaga float64 `json:"wal_syncs_per_saga"`
	WALBytesPerSaga float64 `json:"wal_bytes_per_saga"`
	// Statements are the costliest statements (Config.PGStatements).
	Statements []Statement `json:"statements,omitempty"`
	// ExecMSPerSaga and PlanMSPerSaga are the time every statement of the
	// window took to execute and to plan, per saga (Config.PGStatements):
	// planning is where a statement's custom plan costs, and
	// pg_stat_statements' execution times leave it out.
	ExecMSPerSaga float64 `json:"exec_ms_per_saga,omitempty"`
	PlanMSPerSaga float64 `json:"plan_ms_per_saga,omitempty"`
}

// Statement is one statement's share of the window, from
// pg_stat_statements.
type Statement struct {
	Query   string  `json:"query"`
	Calls   int64   `json:"calls"`
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	// PlanMS is the time spent planning it (pg_stat_statements.track_planning).
	PlanMS       float64 `json:"plan_ms"`
	CallsPerSaga float64 `json:"calls_per_saga"`
}

type pgSnapshot struct {
	commits, rollbacks, walSyncs, walBytes int64
}

func takePGSnapshot(ctx context.Context, pool *pgxpool.Pool) (pgSnapshot, error) {
	var s pgSnapshot
	err := pool.QueryRow(ctx, `SELECT d.xact_commit, d.xact_rollback, w.wal_sync, w.wal_bytes::bigint
		FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()`).
		Scan(&s.commits, &s.rollbacks, &s.walSyncs, &s.walBytes)
	if err != nil {
		return s, fmt.Errorf("read PostgreSQL statistics: %w", err)
	}
	return s, nil
}

func (s pgSnapshot) since(start pgSnapshot, sagas int64) *PGStats {
	st := &PGStats{Commits: s.commits - start.commits, Rollbacks: s.rollbacks - start.rollbacks,
		WALSyncs: s.walSyncs - start.walSyncs, WALBytes: s.walBytes - start.walBytes}
	if sagas > 0 {
		n := float64(sagas)
		st.CommitsPerSaga = round(float64(st.Commits)/n, 2)
		st.WALSyncsPerSaga = round(float64(st.WALSyncs)/n, 2)
		st.WALBytesPerSaga = round(float64(st.WALBytes)/n, 0)
	}
	return st
}

// resetStatements clears pg_stat_statements at the window's start.
func resetStatements(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		return fmt.Errorf("reset pg_stat_statements: %w", err)
	}
	return nil
}

// statementTotals reads the time every statement took to execute and to
// plan, per saga, into st.
func statementTotals(ctx context.Context, pool *pgxpool.Pool, st *PGStats, sagas int64) error {
	var exec, plan float64
	err := pool.QueryRow(ctx, `SELECT COALESCE(sum(total_exec_time), 0), COALESCE(sum(total_plan_time), 0)
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&exec, &plan)
	if err != nil {
		return fmt.Errorf("read pg_stat_statements: %w", err)
	}
	if sagas > 0 {
		st.ExecMSPerSaga, st.PlanMSPerSaga = round(exec/float64(sagas), 3), round(plan/float64(sagas), 3)
	}
	return nil
}

// topStatements reads the n statements that took the most time, planning
// included.
func topStatements(ctx context.Context, pool *pgxpool.Pool, n int, sagas int64) ([]Statement, error) {
	rows, err := pool.Query(ctx, `SELECT query, calls, total_exec_time, mean_exec_time, total_plan_time
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time + total_plan_time DESC LIMIT $1`, n)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Statement, error) {
		var s Statement
		err := r.Scan(&s.Query, &s.Calls, &s.TotalMS, &s.MeanMS, &s.PlanMS)
		s.Query = strings.Join(strings.Fields(s.Query), " ")
		if len(s.Query) > 160 {
			s.Query = s.Query[:160] + "…"
		}
		s.TotalMS, s.MeanMS, s.PlanMS = round(s.TotalMS, 1), round(s.MeanMS, 3), round(s.PlanMS, 1)
		if sagas > 0 {
			s.CallsPerSaga = round(float64(s.Calls)/float64(sagas), 2)
		}
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_statements: %w", err)
	}
	return out, nil
}
