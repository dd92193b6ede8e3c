package outbox

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// The commit log answers at once for recorded transactions and for
// unknown ones when no COMMIT is under way; it waits for a COMMIT under way
// and believes it only once it ended with the id; a COMMIT that never ends
// costs at most the limit; a full log forgets its oldest id.
func TestCommitLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const forever = time.Hour

	t.Run("recorded", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.end(l.begin(), 100)
		l.end(l.begin(), 101)
		if !l.await(ctx, []uint32{100, 101}, forever) {
			t.Fatal("two recorded transactions not known visible")
		}
		if l.await(ctx, []uint32{100, 102}, forever) {
			t.Fatal("an unrecorded transaction taken for visible")
		}
	})

	t.Run("failed commit", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.end(l.begin(), 0) // failed, or wrote nothing
		if l.await(ctx, []uint32{0}, forever) {
			t.Fatal("a commit without an id recorded one")
		}
	})

	t.Run("waits for a commit under way", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		ticket := l.begin()
		got := make(chan bool)
		go func() { got <- l.await(ctx, []uint32{7}, forever) }()
		// Unrelated commits ending do not answer it.
		l.end(l.begin(), 8)
		select {
		case v := <-got:
			t.Fatalf("await answered %v before the commit under way ended", v)
		default:
		}
		l.end(ticket, 7)
		if !<-got {
			t.Fatal("the transaction whose commit was under way not known visible once it ended")
		}
	})

	t.Run("a commit under way that ends without the id", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		ticket := l.begin()
		got := make(chan bool)
		go func() { got <- l.await(ctx, []uint32{7}, forever) }()
		l.end(ticket, 9)
		if <-got {
			t.Fatal("an unrecorded transaction taken for visible")
		}
	})

	t.Run("a stuck commit costs the limit", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.begin() // never ends: a COMMIT waiting for a synchronous standby
		if l.await(ctx, []uint32{7}, 10*time.Millisecond) {
			t.Fatal("a transaction whose commit never answered taken for visible")
		}
	})

	t.Run("no wait", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.begin() // under way, never ends
		l.end(l.begin(), 5)
		if !l.await(ctx, []uint32{5}, 0) {
			t.Fatal("a recorded transaction not known visible without waiting")
		}
		if l.await(ctx, []uint32{5, 6}, 0) {
			t.Fatal("an unrecorded transaction taken for visible")
		}
	})

	t.Run("full log forgets the oldest", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		for x := uint32(1); x <= commitLogSize+1; x++ {
			l.end(l.begin(), int64(x))
		}
		if l.await(ctx, []uint32{1}, forever) {
			t.Fatal("the oldest id still known after the log filled")
		}
		if !l.await(ctx, []uint32{2, commitLogSize + 1}, forever) {
			t.Fatal("recent ids forgotten")
		}
		if len(l.seen) != commitLogSize {
			t.Fatalf("the log holds %d ids, want %d", len(l.seen), commitLogSize)
		}
	})
}

// Every claimTx records its transaction's id once the COMMIT answered: an
// inbox transaction (single and grouped) from its claim's row, a BeginWith
// transaction from its COMMIT's round trip; one that rolled back records
// nothing.
func TestClaimTxRecordsItsCommit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.DB(t)
	l := commitLogOf(db.Pool.Config().ConnConfig)
	xidOf := func(tx pgx.Tx) uint32 {
		t.Helper()
		var x int64
		if err := tx.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&x); err != nil {
			t.Fatal(err)
		}
		return uint32(x)
	}
	in := NewInbox(db.Pool, "inventory", "commit-log-test")

	var single uint32
	if _, err := in.Handle(ctx, uuid.New(), func(ctx context.Context, tx pgx.Tx) error {
		single = xidOf(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !l.await(ctx, []uint32{single}, 0) {
		t.Errorf("an inbox transaction (%d) not recorded", single)
	}

	var grouped uint32
	if _, err := in.handleGrouped(ctx, uuid.New(), nil, func(ctx context.Context, tx pgx.Tx) error {
		grouped = xidOf(tx)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !l.await(ctx, []uint32{grouped}, 0) {
		t.Errorf("a grouped inbox transaction (%d) not recorded", grouped)
	}

	tx, err := BeginWith(ctx, db.Pool, func(rows pgx.Rows) error { rows.Close(); return rows.Err() },
		"SELECT pg_current_xact_id()")
	if err != nil {
		t.Fatal(err)
	}
	began := xidOf(tx)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.await(ctx, []uint32{began}, 0) {
		t.Errorf("a BeginWith transaction (%d) not recorded", began)
	}

	tx, err = BeginWith(ctx, db.Pool, func(rows pgx.Rows) error { rows.Close(); return rows.Err() },
		"SELECT pg_current_xact_id()")
	if err != nil {
		t.Fatal(err)
	}
	rolled := xidOf(tx)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if l.await(ctx, []uint32{rolled}, 0) {
		t.Errorf("a rolled back transaction (%d) recorded", rolled)
	}
}
