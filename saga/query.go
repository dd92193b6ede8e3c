package saga

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Querier is what the status queries need: a pool, a connection or a tx.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// HistoryEntry is one line of a saga's history.
type HistoryEntry struct {
	Seq       int64      `json:"seq"`
	Step      string     `json:"step"`
	Kind      string     `json:"kind,omitempty"`
	Attempt   int        `json:"attempt,omitempty"`
	Event     string     `json:"event"`
	Reason    string     `json:"reason,omitempty"`
	MessageID *uuid.UUID `json:"message_id,omitempty"`
	// Participant names who sent the reply a line records (replies of
	// schema version 2 name it; version 1 ones are upcast).
	Participant string    `json:"participant,omitempty"`
	At          time.Time `json:"at"`
}

// Get returns saga id, or an error wrapping ErrNotFound.
func Get(ctx context.Context, q Querier, id uuid.UUID) (*Instance, error) {
	in, err := scanInstance(q.QueryRow(ctx, sqlGetInstance, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("saga %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read saga %s: %w", id, err)
	}
	return in, nil
}

// TraceID returns the trace id of saga id's trace ("" when it was started
// with tracing off).
func TraceID(ctx context.Context, q Querier, id uuid.UUID) (string, error) {
	var tp *string
	if err := q.QueryRow(ctx, sqlTraceParent, id).Scan(&tp); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "", fmt.Errorf("saga %s: %w", id, ErrNotFound)
		}
		return "", fmt.Errorf("read trace of saga %s: %w", id, err)
	}
	if tp == nil {
		return "", nil
	}
	// traceparent: version-traceid-spanid-flags
	if parts := strings.Split(*tp, "-"); len(parts) == 4 {
		return parts[1], nil
	}
	return "", nil
}

// History returns saga id's history, oldest first.
func History(ctx context.Context, q Querier, id uuid.UUID) ([]HistoryEntry, error) {
	rows, err := q.Query(ctx, sqlHistory, id)
	if err != nil {
		return nil, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	h, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (HistoryEntry, error) {
		var e HistoryEntry
		err := r.Scan(&e.Seq, &e.Step, &e.Kind, &e.Attempt, &e.Event, &e.Reason, &e.MessageID, &e.Participant, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	return h, nil
}

// CountInFlight counts the sagas running or compensating (an index scan of
// the sweeper's partial index, cheap enough to ask several times a second).
func CountInFlight(ctx context.Context, q Querier) (int64, error) {
	var n int64
	if err := q.QueryRow(ctx, sqlCountInFlight).Scan(&n); err != nil {
		return 0, fmt.Errorf("count sagas in flight: %w", err)
	}
	return n, nil
}

// CountByState counts sagas per state.
func CountByState(ctx context.Context, q Querier) (map[State]int64, error) {
	rows, err := q.Query(ctx, sqlCountByState)
	if err != nil {
		return nil, fmt.Errorf("count sagas: %w", err)
	}
	defer rows.Close()
	out := map[State]int64{}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("count sagas: %w", err)
		}
		out[State(s)] = n
	}
	return out, rows.Err()
}

// Filter selects sagas for Search; a zero field matches everything.
type Filter struct {
	State State
	Type  string
	// Step is the index of the step the saga is on (nil: any).
	Step *int
	// CreatedBefore selects sagas older than a time.
	CreatedBefore time.Time
	// ReasonContains matches the reason, case-insensitively.
	ReasonContains string
	// IDs selects these sagas only.
	IDs []uuid.UUID
	// Oldest lists the oldest first; by default the newest come first.
	Oldest bool
	// Cursor pages: the last saga of the page before (sagas after it in
	// the listing's order follow).
	Cursor *uuid.UUID
}

// Search returns up to limit sagas matching f, newest first (oldest first
// with f.Oldest). Ids are UUIDv7, so id order is creation order.
func Search(ctx context.Context, q Querier, f Filter, limit int) ([]*Instance, error) {
	var before *time.Time
	if !f.CreatedBefore.IsZero() {
		before = &f.CreatedBefore
	}
	var ids []uuid.UUID
	if len(f.IDs) > 0 {
		ids = f.IDs
	}
	query := sqlSearch
	if f.Oldest {
		query = sqlSearchOldest
	}
	rows, err := q.Query(ctx, query, string(f.State), f.Type, f.Step, before, f.ReasonContains, ids, f.Cursor, limit)
	if err != nil {
		return nil, fmt.Errorf("search sagas: %w", err)
	}
	out, err := scanInstances(rows)
	if err != nil {
		return nil, fmt.Errorf("search sagas: %w", err)
	}
	return out, nil
}

// HistoryPage returns up to limit history entries of saga id after seq
// afterSeq, and the saga's whole history length.
func HistoryPage(ctx context.Context, q Querier, id uuid.UUID, afterSeq int64, limit int) ([]HistoryEntry, int64, error) {
	var total int64
	if err := q.QueryRow(ctx, sqlHistoryCount, id).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count history of saga %s: %w", id, err)
	}
	rows, err := q.Query(ctx, sqlHistoryPage, id, afterSeq, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	h, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (HistoryEntry, error) {
		var e HistoryEntry
		err := r.Scan(&e.Seq, &e.Step, &e.Kind, &e.Attempt, &e.Event, &e.Reason, &e.MessageID, &e.Participant, &e.At)
		return e, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	return h, total, nil
}

// Minute is the sagas that ended in one minute.
type Minute struct {
	At        time.Time
	Ended     int64
	Completed int64
	// P50 and P99 are the durations (placement to end) in milliseconds.
	P50, P99 float64
}

// Throughput returns the sagas ended per minute since since, oldest first
// (minutes without any are absent).
func Throughput(ctx context.Context, q Querier, since time.Time) ([]Minute, error) {
	rows, err := q.Query(ctx, sqlThroughput, since)
	if err != nil {
		return nil, fmt.Errorf("sagas per minute: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Minute, error) {
		var m Minute
		err := r.Scan(&m.At, &m.Ended, &m.Completed, &m.P50, &m.P99)
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("sagas per minute: %w", err)
	}
	return out, nil
}
