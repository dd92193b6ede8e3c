package saga

import (
	"context"
	"errors"
	"fmt"
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
	At        time.Time  `json:"at"`
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

// History returns saga id's history, oldest first.
func History(ctx context.Context, q Querier, id uuid.UUID) ([]HistoryEntry, error) {
	rows, err := q.Query(ctx, sqlHistory, id)
	if err != nil {
		return nil, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	h, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (HistoryEntry, error) {
		var e HistoryEntry
		err := r.Scan(&e.Seq, &e.Step, &e.Kind, &e.Attempt, &e.Event, &e.Reason, &e.MessageID, &e.At)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read history of saga %s: %w", id, err)
	}
	return h, nil
}

// List returns up to limit sagas in state (every state when empty) with ids
// after the cursor after (none when nil), oldest first.
func List(ctx context.Context, q Querier, state State, limit int, after *uuid.UUID) ([]*Instance, error) {
	rows, err := q.Query(ctx, sqlList, string(state), after, limit)
	if err != nil {
		return nil, fmt.Errorf("list sagas: %w", err)
	}
	defer rows.Close()
	var out []*Instance
	for rows.Next() {
		in, err := scanInstance(rows)
		if err != nil {
			return nil, fmt.Errorf("list sagas: %w", err)
		}
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list sagas: %w", err)
	}
	return out, nil
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
