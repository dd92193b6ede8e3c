package main

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/saga"
)

// `sagaflow saga` retries, resolves and aborts sagas, one or by filter
// (with a dry run), keeping the operator and the note in the history.
func TestSagaCommand(t *testing.T) {
	db := testenv.DB(t)
	ctx := context.Background()
	stuck := []uuid.UUID{uuid.New(), uuid.New()}
	running := uuid.New()
	// Sagas of orders, as placement leaves them, then stuck or running.
	for _, id := range append(slices.Clone(stuck), running) {
		state, attempt := "stuck", 10
		if id == running {
			state, attempt = "running", 1
		}
		oid := uuid.New()
		if _, err := db.Pool.Exec(ctx, `INSERT INTO orders.orders (id, saga_id, idempotency_key, request_hash, customer_id, items,
			amount_cents, currency, shipping_address, status) VALUES ($1, $2, $3, '\x00', 'c-1', '[]', 100, 'EUR', '{}', 'pending')`,
			oid, id, id.String()); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Pool.Exec(ctx, `INSERT INTO saga.instances (id, type, state, step, attempt, data, reason, deadline)
			VALUES ($1, 'order', $2, 1, $3, jsonb_build_object('order_id', $4::uuid), 'compensation of payment unanswered', now() + interval '1 hour')`,
			id, state, attempt, oid); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runSaga(ctx, append(args, "--database-url", db.URL), &out)
		return out.String(), err
	}
	if out, err := run("retry", "--state", "stuck", "--step", "payment", "--dry-run"); err != nil || !strings.Contains(out, "2 saga(s) match") {
		t.Fatalf("dry run: %v\n%s", err, out)
	}
	if out, err := run("retry", stuck[0].String(), "--note", "payment is back", "--operator", "alice"); err != nil || !strings.Contains(out, "now compensating") {
		t.Fatalf("retry: %v\n%s", err, out)
	}
	if out, err := run("abort", running.String(), "--note", "customer cancelled", "--operator", "bob"); err != nil || !strings.Contains(out, "now compensating") {
		t.Fatalf("abort: %v\n%s", err, out)
	}
	if _, err := run("abort", running.String(), "--note", "again"); err == nil {
		t.Fatal("aborting a compensating saga succeeded")
	}
	if out, err := run("resolve", "--state", "stuck", "--note", "refunded by hand", "--operator", "carol"); err != nil || !strings.Contains(out, "resolve done on 1 of 1") {
		t.Fatalf("batch resolve: %v\n%s", err, out)
	}
	for id, want := range map[uuid.UUID]string{stuck[0]: "operator alice: payment is back", running: "operator bob: customer cancelled", stuck[1]: "operator carol: refunded by hand"} {
		h, err := saga.History(ctx, db.Pool, id)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, x := range h {
			found = found || x.Reason == want
		}
		if !found {
			t.Errorf("saga %s: history %+v lacks %q", id, h, want)
		}
	}
	for _, bad := range [][]string{{"retry", stuck[1].String()}, {"retry", "--note", "x"}, {"explode"}, {"retry", "nope", "--note", "x"}, {"retry", "--step", "nowhere", "--note", "x"}} {
		if _, err := run(bad...); err == nil {
			t.Errorf("saga %v succeeded", bad)
		}
	}
}
