package roles_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// effects is a digest of every effect Sagaflow has: sagas and their
// history, stock, reservations, charges, shipments, orders and the
// messages waiting in the outboxes.
func (e *env) effects() string {
	e.t.Helper()
	var digest string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT concat_ws(' ',
		(SELECT string_agg(state || ':' || n, ',' ORDER BY state) FROM (SELECT state, count(*) n FROM saga.instances GROUP BY state) s),
		(SELECT count(*) FROM saga.history),
		(SELECT sum(available) || '/' || sum(initial) FROM inventory.stock),
		(SELECT count(*) || '/' || count(released_at) FROM inventory.reservations),
		(SELECT count(*) || '/' || sum(amount_cents) FROM payment.charges),
		(SELECT count(*) FROM shipping.shipments),
		(SELECT string_agg(status || ':' || n, ',' ORDER BY status) FROM (SELECT status, count(*) n FROM orders.orders GROUP BY status) o),
		(SELECT count(*) FROM saga.outbox) + (SELECT count(*) FROM inventory.outbox) + (SELECT count(*) FROM payment.outbox)
			+ (SELECT count(*) FROM shipping.outbox) + (SELECT count(*) FROM orders.outbox))`).Scan(&digest); err != nil {
		e.t.Fatal(err)
	}
	return digest
}

// Every consumer group replayed from the earliest offset (`sagaflow
// replay --to-earliest`, with the roles stopped) reads every command and
// reply again, and changes no effect: the inboxes absorb every message.
func TestReplayEveryGroupChangesNothing(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	bodies := [][]byte{
		orderBody(oneItem("sku-1", 2), nil, "DE"),
		orderBody(oneItem("sku-1", 1), map[string]string{"payment": "refuse"}, "DE"),
		orderBody(oneItem("sku-1", 1), nil, "XX"),
		orderBody(oneItem("sku-2", 5000), nil, "DE"),
	}
	for i := range 12 {
		if _, code := e.place(uuid.NewString(), bodies[i%len(bodies)]); code != http.StatusAccepted {
			t.Fatalf("POST /orders answered %d", code)
		}
	}
	e.verify(0)
	before := e.effects()
	dupsBefore := e.duplicates()

	// Stop every role (their consumers leave their groups), replay.
	e.stop()
	ctx := context.Background()
	var toRead int64
	for _, consumer := range kafkax.Consumers {
		parts, err := e.kafka.ResetGroup(ctx, e.topics.Group(consumer), []string{e.topics.ConsumedBy(consumer)}, kafkax.ResetTarget{Earliest: true}, false)
		if err != nil {
			t.Fatalf("reset %s: %v", consumer, err)
		}
		for _, p := range parts {
			toRead += p.Lag
		}
	}
	if toRead == 0 {
		t.Fatal("the reset left nothing to read again")
	}
	e.start()
	deadline := time.Now().Add(2 * time.Minute)
	for _, consumer := range kafkax.Consumers {
		for {
			parts, err := e.kafka.GroupLag(ctx, e.topics.Group(consumer), e.topics.ConsumedBy(consumer))
			if err != nil {
				t.Fatal(err)
			}
			var lag int64
			for _, p := range parts {
				lag += p.Lag
			}
			if lag == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %s still has %d messages to read again", consumer, lag)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	e.verify(0)
	if after := e.effects(); after != before {
		t.Fatalf("the replay changed effects:\nbefore %s\nafter  %s", before, after)
	}
	if absorbed := e.duplicates() - dupsBefore; absorbed < toRead {
		t.Fatalf("%d duplicates absorbed by the inboxes, want the %d messages read again", absorbed, toRead)
	}
}

// duplicates sums the messages every inbox absorbed as duplicates.
func (e *env) duplicates() int64 {
	e.t.Helper()
	var n int64
	for _, schema := range []string{"saga", "inventory", "payment", "shipping"} {
		d, err := outbox.DuplicatesAbsorbed(context.Background(), e.db.Pool, schema)
		if err != nil {
			e.t.Fatal(err)
		}
		n += d
	}
	return n
}
