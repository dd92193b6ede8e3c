package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Filter selects dead letters; a zero field matches everything.
type Filter struct {
	IDs []int64
	// ConsumerGroup, Type and Fingerprint match exactly.
	ConsumerGroup string
	Type          string
	Fingerprint   string
	SagaID        uuid.UUID
	// Before and Since select dead letters dead-lettered before Before
	// and at or after Since.
	Before, Since time.Time
	// MessageID is the id of the message that was dead-lettered.
	MessageID string
	// Cursor pages a list: ids below it (the last id of the page before).
	Cursor int64
}

func (f Filter) args() []any {
	var ids []int64
	if len(f.IDs) > 0 {
		ids = f.IDs
	}
	var saga *uuid.UUID
	if f.SagaID != uuid.Nil {
		saga = &f.SagaID
	}
	var before *time.Time
	if !f.Before.IsZero() {
		before = &f.Before
	}
	var since *time.Time
	if !f.Since.IsZero() {
		since = &f.Since
	}
	return []any{ids, f.ConsumerGroup, f.Type, f.Fingerprint, saga, before, f.Cursor, since, f.MessageID}
}

// Store reads and writes ops.dead_letters.
type Store struct {
	pool *pgxpool.Pool
}

// NewStore returns a store on pool.
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Record stores d; recorded is false when its place in the dead-letter
// topic was already recorded (a redelivery).
func (s *Store) Record(ctx context.Context, d DeadLetter) (recorded bool, err error) {
	headers, err := json.Marshal(d.Headers)
	if err != nil {
		return false, fmt.Errorf("encode headers of dead letter %s/%d/%d: %w", d.DLQTopic, d.DLQPartition, d.DLQOffset, err)
	}
	var step *string
	if d.Step != "" {
		step = &d.Step
	}
	tag, err := s.pool.Exec(ctx, sqlRecord, d.DLQTopic, d.DLQPartition, d.DLQOffset, d.MessageID,
		d.ConsumerGroup, d.OriginTopic, d.OriginPartition, d.OriginOffset, d.Key, d.Type, headers,
		d.Payload, d.Error, d.ErrorPattern, d.Fingerprint, d.Attempts, d.SagaID, step, d.DeadLetteredAt)
	if err != nil {
		return false, fmt.Errorf("record dead letter %s/%d/%d: %w", d.DLQTopic, d.DLQPartition, d.DLQOffset, err)
	}
	return tag.RowsAffected() == 1, nil
}

// List returns up to limit dead letters matching f, newest first.
func (s *Store) List(ctx context.Context, f Filter, limit int) ([]DeadLetter, error) {
	return s.query(ctx, s.pool, sqlList, f, limit)
}

// ErrNotFound is returned for a dead letter id that is not recorded.
var ErrNotFound = errors.New("no such dead letter")

// Get returns dead letter id.
func (s *Store) Get(ctx context.Context, id int64) (DeadLetter, error) {
	ds, err := s.List(ctx, Filter{IDs: []int64{id}}, 1)
	if err != nil {
		return DeadLetter{}, err
	}
	if len(ds) == 0 {
		return DeadLetter{}, fmt.Errorf("dead letter %d: %w", id, ErrNotFound)
	}
	return ds[0], nil
}

// Count counts the dead letters matching f (a dry run of Replay or Purge).
func (s *Store) Count(ctx context.Context, f Filter) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, sqlCount, f.args()...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return n, nil
}

// ConsumerCount is the number of dead letters of one consumer group.
type ConsumerCount struct {
	ConsumerGroup string `json:"consumer_group"`
	Count         int64  `json:"count"`
}

// CountByConsumer counts the dead letters of each consumer group that has
// any, by group name.
func (s *Store) CountByConsumer(ctx context.Context) ([]ConsumerCount, error) {
	rows, err := s.pool.Query(ctx, sqlCountByConsumer)
	if err != nil {
		return nil, fmt.Errorf("count dead letters by consumer: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ConsumerCount])
	if err != nil {
		return nil, fmt.Errorf("count dead letters by consumer: %w", err)
	}
	return out, nil
}

// Groups returns the dead letters matching f grouped by fingerprint, most
// recently seen first, at most limit groups.
func (s *Store) Groups(ctx context.Context, f Filter, limit int) ([]Group, error) {
	rows, err := s.pool.Query(ctx, sqlGroups, append(f.args(), limit)...)
	if err != nil {
		return nil, fmt.Errorf("group dead letters: %w", err)
	}
	groups, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Group, error) {
		var g Group
		err := r.Scan(&g.Fingerprint, &g.ConsumerGroup, &g.Type, &g.ErrorPattern, &g.Count, &g.Replayed,
			&g.FirstSeen, &g.LastSeen, &g.LatestID)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("group dead letters: %w", err)
	}
	return groups, nil
}

// Purge deletes the dead letters matching f and returns how many. An empty
// filter is refused: purging everything must be asked for with a filter
// that says so (Before: now).
func (s *Store) Purge(ctx context.Context, f Filter) (int64, error) {
	if f.IsZero() {
		return 0, errors.New("purge needs a filter (ids, consumer group, type, fingerprint, saga or a time)")
	}
	tag, err := s.pool.Exec(ctx, sqlPurge, f.args()...)
	if err != nil {
		return 0, fmt.Errorf("purge dead letters: %w", err)
	}
	return tag.RowsAffected(), nil
}

// PurgeOlder deletes the dead letters dead-lettered longer ago than age
// (the retention window).
func (s *Store) PurgeOlder(ctx context.Context, age time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, sqlPurgeOlder, age.Seconds())
	if err != nil {
		return 0, fmt.Errorf("purge dead letters older than %s: %w", age, err)
	}
	return tag.RowsAffected(), nil
}

// IsZero reports whether f matches every dead letter.
func (f Filter) IsZero() bool {
	return len(f.IDs) == 0 && f.ConsumerGroup == "" && f.Type == "" && f.Fingerprint == "" &&
		f.SagaID == uuid.Nil && f.Before.IsZero() && f.Since.IsZero() && f.MessageID == "" && f.Cursor == 0
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func (s *Store) query(ctx context.Context, q querier, sql string, f Filter, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	rows, err := q.Query(ctx, sql, append(f.args(), limit)...)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	ds, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	return ds, nil
}

func scan(r pgx.CollectableRow) (DeadLetter, error) {
	var (
		d       DeadLetter
		headers []byte
		step    *string
	)
	err := r.Scan(&d.ID, &d.DLQTopic, &d.DLQPartition, &d.DLQOffset, &d.MessageID, &d.ConsumerGroup,
		&d.OriginTopic, &d.OriginPartition, &d.OriginOffset, &d.Key, &d.Type, &headers, &d.Payload,
		&d.Error, &d.ErrorPattern, &d.Fingerprint, &d.Attempts, &d.SagaID, &step, &d.DeadLetteredAt,
		&d.RecordedAt, &d.Replays, &d.LastReplayedAt)
	if err != nil {
		return d, err
	}
	if step != nil {
		d.Step = *step
	}
	if err := json.Unmarshal(headers, &d.Headers); err != nil {
		return d, fmt.Errorf("decode headers of dead letter %d: %w", d.ID, err)
	}
	return d, nil
}
