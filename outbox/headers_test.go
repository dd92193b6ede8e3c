package outbox_test

import (
	"context"
	"github.com/google/uuid"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/outbox"
)

// Headers the relay sets itself — the message id by which inboxes dedupe,
// the key — cannot be passed in Message.Headers: a writer could otherwise
// override the dedupe id (before: accepted, and the consumer saw the
// writer's value).
func TestWriteRefusesReservedHeaders(t *testing.T) {
	t.Parallel()
	ob := outbox.New("inventory")
	for _, name := range []string{"_watermill_message_uuid", "kafka_key", "Kafka_Key"} {
		var b pgx.Batch
		err := ob.Queue(&b, outbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`), Headers: map[string]string{name: "x"}})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("header %q: error %v, want a refusal naming it", name, err)
		}
		if b.Len() != 0 {
			t.Errorf("header %q: %d statements queued, want none", name, b.Len())
		}
	}
	var b pgx.Batch
	if err := ob.Queue(&b, outbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`), Headers: map[string]string{"tenant": "acme"}}); err != nil {
		t.Fatalf("an ordinary header: %v", err)
	}
}

// A message Kafka will never accept (2 MB, over the producer's and the
// broker's 1 MB limit) is parked with the error while every other row
// flows; an operator can list it, retry it (it is parked again while the
// limit stands) and discard it. (Before: the relay retried the batch
// forever with a warning, and nothing behind it in the outbox moved.)
func TestOversizedMessageParked(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.consume(ctx, nil)
		if err := e.write(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		tx, err := e.db.Pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		big := outbox.Message{ID: uuid.Must(uuid.NewV7()), Topic: e.topic, Key: "big", Payload: []byte(strings.Repeat("x", 2<<20)), Type: "test.effect", SchemaVersion: 1}
		if err := e.ob.Write(ctx, tx, big); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"a", "b", "b"} {
			if err := e.write(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		r, _ := e.startRelay(ctx, nil, nil)
		e.waitEffects(ctx, 4)
		waitFor(t, "the big row parked", func() bool { return r.Parked() == 1 })
		parked, err := e.ob.ListParked(ctx, e.db.Pool, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(parked) != 1 || parked[0].ID != big.ID || parked[0].Size != 2<<20 || parked[0].Key != "big" ||
			!strings.Contains(strings.ToLower(parked[0].Error), "larger") {
			t.Fatalf("parked rows %+v, want the big row with its size error", parked)
		}
		waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
		// Retried while the limit stands: parked again.
		if n, err := e.ob.RetryParked(ctx, e.db.Pool, nil); err != nil || n != 1 {
			t.Fatalf("retry: %d, %v", n, err)
		}
		waitFor(t, "the big row parked again", func() bool { return r.Parked() == 2 })
		parked, err = e.ob.ListParked(ctx, e.db.Pool, 10)
		if err != nil || len(parked) != 1 {
			t.Fatalf("after the retry: %v, %v", parked, err)
		}
		if n, err := e.ob.DiscardParked(ctx, e.db.Pool, []int64{parked[0].Seq}); err != nil || n != 1 {
			t.Fatalf("discard: %d, %v", n, err)
		}
		if parked, _ := e.ob.ListParked(ctx, e.db.Pool, 10); len(parked) != 0 {
			t.Fatalf("after the discard: %v", parked)
		}
		e.checkExactlyOnce(ctx, 4)
		e.checkOrder(ctx)
	})
}
