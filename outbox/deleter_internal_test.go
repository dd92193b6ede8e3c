package outbox

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/IBM/sarama"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// Logical decoding streams a transaction once its commit is in the WAL,
// which can be a moment before other sessions see it: the relay may publish
// a row, and the deleter run, while the row is still invisible to the
// DELETE. The deleter must keep such a row and delete it on a later round,
// or it stays in the outbox for good.
func TestDeleterKeepsRowsNotYetVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.DB(t)
	ob := New("inventory")
	r, err := NewRelay(RelayConfig{Pool: db.Pool, Outboxes: []*Outbox{ob}, Producer: nopProducer{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const seq = 1_000_000
	d := newDeleter(r)
	// Published, as far as the deleter knows, before the row is visible.
	d.add([]row{{schema: "inventory", seq: seq}})
	if err := d.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO inventory.outbox (seq, id, topic, key, payload) OVERRIDING SYSTEM VALUE
		VALUES ($1, gen_random_uuid(), 't', 'k', '\x00')`, seq); err != nil {
		t.Fatal(err)
	}
	if err := d.flush(ctx); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM inventory.outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("the outbox still holds %d published row(s) that became visible after the first delete", left)
	}
	// A row that is never found (published twice, deleted the first time)
	// is given up after maxDeleteRounds rounds.
	d.add([]row{{schema: "inventory", seq: 2 * seq}})
	for range maxDeleteRounds {
		if err := d.flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(d.pending["inventory"]); n != 0 {
		t.Fatalf("after %d rounds the deleter still retries %d row(s) that never appeared", maxDeleteRounds, n)
	}
}

type nopProducer struct{}

func (nopProducer) SendMessages([]*sarama.ProducerMessage) error { return nil }
