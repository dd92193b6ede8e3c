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
