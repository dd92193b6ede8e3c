package outbox_test

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
)

// BenchmarkInboxHandle is one consumer applying messages one after another,
// each in the inbox transaction that claims it: begin, claim, the handler's
// statement, commit. Its time per message is round trips to the server (the
// test cluster does not flush its WAL to disk), so it shows what a round
// trip less per transaction is worth. It asserts nothing.
//
//	go test -run '^$' -bench InboxHandle -benchtime 5000x ./outbox/
func BenchmarkInboxHandle(b *testing.B) {
	db := testenv.DB(b)
	in := outbox.NewInbox(db.Pool, "inventory", "bench-inbox")
	ctx := context.Background()
	fn := func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `SELECT 1`)
		return err
	}
	for b.Loop() {
		if dup, err := in.Handle(ctx, uuid.New(), fn); err != nil || dup {
			b.Fatalf("handle: duplicate %v, %v", dup, err)
		}
	}
}
