package migrations_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/migrations"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func setup(t *testing.T) (context.Context, string) {
	t.Helper()
	return context.Background(), testenv.EmptyDB(t)
}

// tables lists the tables of the Sagaflow schemas.
func tables(ctx context.Context, t *testing.T, url string) []string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT table_schema || '.' || table_name FROM information_schema.tables
		WHERE table_schema IN ('orders','saga','inventory','payment','shipping') ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestApplyTwiceIsNoop(t *testing.T) {
	t.Parallel()
	ctx, url := setup(t)
	latest, err := migrations.Latest()
	if err != nil {
		t.Fatal(err)
	}
	v, err := migrations.Apply(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if int(v) != latest {
		t.Fatalf("version after first apply = %d, want %d", v, latest)
	}
	before := tables(ctx, t, url)
	for _, schema := range []string{"orders", "saga", "inventory", "payment", "shipping"} {
		for _, table := range []string{"outbox", "inbox"} {
			if !slices.Contains(before, schema+"."+table) {
				t.Errorf("table %s.%s missing after migration; have %v", schema, table, before)
			}
		}
	}
	v2, err := migrations.Apply(ctx, url)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if v2 != v {
		t.Fatalf("version after second apply = %d, want %d", v2, v)
	}
	if after := tables(ctx, t, url); len(after) != len(before) {
		t.Fatalf("second apply changed the tables: %v -> %v", before, after)
	}
}

func TestApplyConcurrently(t *testing.T) {
	t.Parallel()
	ctx, url := setup(t)
	latest, err := migrations.Latest()
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	versions := make([]int32, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			versions[i], errs[i] = migrations.Apply(ctx, url)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrator %d: %v", i, err)
		}
		if int(versions[i]) != latest {
			t.Fatalf("migrator %d ended at version %d, want %d", i, versions[i], latest)
		}
	}
}

func TestApplyUnreachable(t *testing.T) {
	t.Parallel()
	_, err := migrations.Apply(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err == nil {
		t.Fatal("migrating an unreachable database succeeded")
	}
}

// orders.settle (migration 011) settles a pending order, and refuses, with
// SQLSTATE P0002 and the order named, an order that is missing or settled
// already: the check the orchestrator's transaction relies on.
func TestSettleRefusesAnOrderNotPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.DB(t)
	id := uuid.New()
	if _, err := db.Pool.Exec(ctx, `INSERT INTO orders.orders
		(id, saga_id, idempotency_key, request_hash, customer_id, items, amount_cents, currency, shipping_address, status)
		VALUES ($1, $2, 'k', '\x00', 'c', '[]', 100, 'EUR', '{}', 'pending')`, id, uuid.New()); err != nil {
		t.Fatal(err)
	}
	settle := func(id uuid.UUID, status string) error {
		_, err := db.Pool.Exec(ctx, `SELECT orders.settle($1, $2, $3)`, id, status, "why")
		return err
	}
	if err := settle(id, "cancelled"); err != nil {
		t.Fatalf("settle a pending order: %v", err)
	}
	var status, reason string
	if err := db.Pool.QueryRow(ctx, `SELECT status, reason FROM orders.orders WHERE id = $1`, id).Scan(&status, &reason); err != nil || status != "cancelled" || reason != "why" {
		t.Fatalf("settled order: %q %q (%v), want cancelled, why", status, reason, err)
	}
	for _, c := range []struct {
		name string
		id   uuid.UUID
	}{{"settled already", id}, {"missing", uuid.New()}} {
		err := settle(c.id, "confirmed")
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "P0002" || !strings.Contains(pgErr.Message, c.id.String()) {
			t.Errorf("settle an order %s: %v, want P0002 naming %s", c.name, err, c.id)
		}
	}
}
