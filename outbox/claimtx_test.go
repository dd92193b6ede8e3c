package outbox_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
)

// The inbox sends its transaction's BEGIN with the claim, on a transaction
// of its own making; it must end like pgx's own: a handler that swallowed a
// failed statement gets its COMMIT turned into a rollback, reported as
// pgx.ErrTxCommitRollback, and nothing of the transaction stays, not even
// the claim, so the message is applied when it comes again; the
// connection goes back to the pool outside any transaction.
func TestInboxTransactionEndsLikePgx(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE applied (id uuid PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	in := outbox.NewInbox(db.Pool, "inventory", testenv.Name(t, "group"))
	id := uuid.New()
	swallow := func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO applied (id) VALUES ($1)`, id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT 1/0`)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
			t.Errorf("division by zero: %v", err)
		}
		return nil // swallowed: the transaction has failed all the same
	}
	if _, err := in.Handle(ctx, id, swallow); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Fatalf("commit of a failed transaction: %v, want pgx.ErrTxCommitRollback", err)
	}
	apply := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO applied (id) VALUES ($1)`, id)
		return err
	}
	// Every connection of the pool is outside a transaction: were one left
	// inside the failed one, this would fail on it (25P02) or nest.
	for range db.Pool.Config().MaxConns + 1 {
		if _, err := db.Pool.Exec(ctx, `SELECT 1`); err != nil {
			t.Fatalf("a pooled connection after the rollback: %v", err)
		}
	}
	dup, err := in.Handle(ctx, id, apply)
	if err != nil || dup {
		t.Fatalf("the message again: duplicate %v, %v: the failed transaction's claim stayed", dup, err)
	}
	dup, err = in.Handle(ctx, id, apply)
	if err != nil || !dup {
		t.Fatalf("the message a third time: duplicate %v, %v, want a duplicate", dup, err)
	}
	var n int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("applied %d times (%v), want once", n, err)
	}
}

// Writes a handler leaves for the commit (SendAtCommit) go with the COMMIT:
// a statement sent after them still sees them (they go first, in order),
// they commit once with the claim, and one that fails fails the commit
// with its own error: nothing of the transaction stays, not even the claim,
// and the connection goes back to the pool outside any transaction.
// SendAtCommit leaves a batch with a callback, and a transaction that is
// not an inbox's, to the caller.
func TestWritesHeldForTheCommit(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `CREATE TABLE applied (id uuid, n int NOT NULL CHECK (n > 0))`); err != nil {
		t.Fatal(err)
	}
	in := outbox.NewInbox(db.Pool, "inventory", testenv.Name(t, "held"))
	count := func() int {
		t.Helper()
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// A failing held write: Handle fails with the statement's error.
	id := uuid.New()
	failing := func(ctx context.Context, tx pgx.Tx) error {
		var b pgx.Batch
		b.Queue(`INSERT INTO applied (id, n) VALUES ($1, 1)`, id)
		b.Queue(`INSERT INTO applied (id, n) VALUES ($1, 0)`, id) // breaks the CHECK
		if !outbox.SendAtCommit(tx, &b) {
			t.Error("SendAtCommit did not take the writes of an inbox transaction")
		}
		if b.Len() != 0 {
			t.Errorf("SendAtCommit left %d statements in the batch", b.Len())
		}
		return nil
	}
	_, err := in.Handle(ctx, id, failing)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
		t.Fatalf("a held write breaking a CHECK: %v, want its check violation (23514)", err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d rows committed by the failed transaction", n)
	}
	for range db.Pool.Config().MaxConns + 1 {
		if _, err := db.Pool.Exec(ctx, `SELECT 1`); err != nil {
			t.Fatalf("a pooled connection after the failed commit: %v", err)
		}
	}

	// The same message again, with writes that pass: the claim had not
	// stayed. A statement after the held writes sees them.
	seen := -1
	good := func(ctx context.Context, tx pgx.Tx) error {
		for n := 1; n <= 2; n++ {
			var b pgx.Batch
			b.Queue(`INSERT INTO applied (id, n) VALUES ($1, $2)`, id, n)
			if !outbox.SendAtCommit(tx, &b) {
				t.Error("SendAtCommit did not take the writes of an inbox transaction")
			}
		}
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM applied`).Scan(&seen); err != nil {
			return err
		}
		var b pgx.Batch
		b.Queue(`INSERT INTO applied (id, n) VALUES ($1, 3)`, id)
		outbox.SendAtCommit(tx, &b)
		return nil
	}
	if dup, err := in.Handle(ctx, id, good); err != nil || dup {
		t.Fatalf("the message again: duplicate %v, %v: the failed transaction's claim stayed", dup, err)
	}
	if seen != 2 {
		t.Errorf("a statement after two held writes saw %d rows, want 2", seen)
	}
	if n := count(); n != 3 {
		t.Errorf("%d rows committed, want 3", n)
	}
	if dup, err := in.Handle(ctx, id, good); err != nil || !dup {
		t.Fatalf("the message a third time: duplicate %v, %v, want a duplicate", dup, err)
	}

	// Not taken: a batch with a callback, or a transaction of the pool.
	callback := func(ctx context.Context, tx pgx.Tx) error {
		var b pgx.Batch
		b.Queue(`SELECT 1`).Exec(func(pgconn.CommandTag) error { return nil })
		if outbox.SendAtCommit(tx, &b) || b.Len() != 1 {
			t.Error("SendAtCommit took a batch with a callback")
		}
		return nil
	}
	if _, err := in.Handle(ctx, uuid.New(), callback); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after the test
	var b pgx.Batch
	b.Queue(`SELECT 1`)
	if outbox.SendAtCommit(tx, &b) || b.Len() != 1 {
		t.Error("SendAtCommit took the writes of a transaction of the pool")
	}
}

// BeginWith begins a transaction with its first statement, and the writes
// held for the commit go with the COMMIT: a placement's transaction (an
// insert, then writes) takes two round trips. A first statement that
// fails leaves nothing open; a held write that fails fails the commit with
// its own error and nothing of the transaction stays.
func TestBeginWith(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	ctx := context.Background()
	pool, counter := testenv.CountedPool(t, db.URL)
	if _, err := pool.Exec(ctx, `CREATE TABLE placed (id uuid PRIMARY KEY, n int NOT NULL CHECK (n > 0))`); err != nil {
		t.Fatal(err)
	}
	count := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM placed`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// place inserts id with n and, held for the commit, a second row with
	// m; it reports the round trips it took.
	place := func(id uuid.UUID, n, m int) (inserted bool, trips int64, err error) {
		before := counter.N()
		tx, err := outbox.BeginWith(ctx, pool, func(rows pgx.Rows) error {
			_, err := pgx.ForEachRow(rows, []any{new(uuid.UUID)}, func() error {
				inserted = true
				return nil
			})
			return err
		}, `INSERT INTO placed (id, n) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id`, id, n)
		if err != nil {
			return false, counter.N() - before, err
		}
		defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
		if inserted {
			var b pgx.Batch
			b.Queue(`INSERT INTO placed (id, n) VALUES ($1, $2)`, uuid.New(), m)
			if !outbox.SendAtCommit(tx, &b) {
				t.Error("SendAtCommit did not take the writes of a BeginWith transaction")
			}
		}
		err = tx.Commit(ctx)
		return inserted, counter.N() - before, err
	}

	// Once to prepare the statements, then counted.
	if _, _, err := place(uuid.New(), 1, 1); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	inserted, trips, err := place(id, 1, 1)
	if err != nil || !inserted {
		t.Fatalf("place: inserted %v, %v", inserted, err)
	}
	if trips != 2 {
		t.Errorf("an insert and a held write took %d round trips, want 2", trips)
	}
	if n := count(); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
	// The first statement's rows: none for a conflict.
	if inserted, _, err := place(id, 1, 1); err != nil || inserted {
		t.Fatalf("the same id again: inserted %v, %v, want a conflict", inserted, err)
	}
	// A first statement that fails: its error, and nothing left open.
	_, _, err = place(uuid.New(), 0, 1)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
		t.Fatalf("a first statement breaking a CHECK: %v, want its check violation (23514)", err)
	}
	// A held write that fails: the commit's error, and nothing stays.
	_, _, err = place(uuid.New(), 1, 0)
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
		t.Fatalf("a held write breaking a CHECK: %v, want its check violation (23514)", err)
	}
	// The pool's one connection answers outside any transaction: left
	// inside the failed one, the count would fail (25P02).
	if n := count(); n != 4 {
		t.Errorf("%d rows after the failures, want 4", n)
	}
}
