package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// `sagaflow parked` lists the parked rows with their error, retry moves the
// named ones back into their outbox in order, discard deletes them, and a
// row number that is not parked is an error.
func TestParkedCommand(t *testing.T) {
	db := testenv.DB(t)
	ctx := context.Background()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO saga.outbox_parked (id, topic, key, payload, headers, created_at, error)
SELECT gen_random_uuid(), 'inventory.commands', 'k' || n, repeat('x', n)::bytea, '{"type":"inventory.reserve"}', now(), 'message too large'
FROM generate_series(1, 3) AS n`); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runParked(ctx, append(args, "--database-url", db.URL), &out)
		return out.String(), err
	}
	out, err := run()
	if err != nil || !strings.Contains(out, "message too large") || !strings.Contains(out, "3 parked row(s)") || !strings.Contains(out, "inventory.reserve") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := run("retry", "--schema", "saga", "--seq", "1,2"); err != nil || !strings.Contains(out, "2 parked row(s) of outbox saga moved back") {
		t.Fatalf("retry: %v\n%s", err, out)
	}
	var keys string
	if err := db.Pool.QueryRow(ctx, `SELECT string_agg(key, ',' ORDER BY seq) FROM saga.outbox`).Scan(&keys); err != nil || keys != "k1,k2" {
		t.Fatalf("outbox after the retry: %q (%v), want k1,k2", keys, err)
	}
	if _, err := run("discard", "--schema", "saga", "--seq", "1"); err == nil {
		t.Fatal("discarding a row that is no longer parked succeeded")
	}
	if out, err := run("discard", "--schema", "saga", "--all"); err != nil || !strings.Contains(out, "1 parked row(s) of outbox saga discarded") {
		t.Fatalf("discard: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"retry", "--seq", "1"}, {"retry", "--schema", "saga"}, {"retry", "--schema", "nope", "--all"}, {"explode"}} {
		if _, err := run(bad...); err == nil {
			t.Errorf("parked %v succeeded", bad)
		}
	}
}
