package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/overview"
	"github.com/sagaflow/sagaflow/saga"
)

// `sagaflow sagas` takes the console's filters (search by any id, step
// by name …) and `sagaflow overview` prints the console's overview.
func TestSagasFiltersAndOverview(t *testing.T) {
	db := testenv.DB(t)
	ctx := context.Background()
	sagas := make([]uuid.UUID, 3)
	for i := range sagas {
		sagas[i] = uuid.Must(uuid.NewV7())
		state, step := "running", i
		if i == 2 {
			state = "stuck"
		}
		if _, err := db.Pool.Exec(ctx, `INSERT INTO orders.orders (id, saga_id, idempotency_key, request_hash, customer_id, items,
			amount_cents, currency, shipping_address, status) VALUES ($1, $2, $3, '\x00', $4, '[]', 100, 'EUR', '{}', 'pending')`,
			uuid.New(), sagas[i], "cli-key-"+string(rune('a'+i)), "cli-cust-"+string(rune('a'+i%2))); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Pool.Exec(ctx, `INSERT INTO saga.instances (id, type, state, step, attempt, data, reason, deadline)
			VALUES ($1, 'order', $2, $3, 1, '{}', '', now() + interval '1 hour')`, sagas[i], state, step); err != nil {
			t.Fatal(err)
		}
	}
	list := func(args ...string) []uuid.UUID {
		t.Helper()
		var out bytes.Buffer
		if err := runSagas(ctx, append(args, "--json", "--database-url", db.URL), &out); err != nil {
			t.Fatalf("sagas %v: %v", args, err)
		}
		var got []*saga.Instance
		if err := json.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("sagas %v: %v\n%s", args, err, out.String())
		}
		ids := []uuid.UUID{}
		for _, in := range got {
			ids = append(ids, in.ID)
		}
		return ids
	}
	cases := []struct {
		args []string
		want []uuid.UUID
	}{
		{[]string{"--search", "cli-cust-a"}, []uuid.UUID{sagas[0], sagas[2]}},
		{[]string{"--search", "cli-cust-a", "--newest"}, []uuid.UUID{sagas[2], sagas[0]}},
		{[]string{"--search", "cli-key-b"}, []uuid.UUID{sagas[1]}},
		{[]string{"--search", "nobody"}, []uuid.UUID{}},
		{[]string{"--step", "payment"}, []uuid.UUID{sagas[1]}},
		{[]string{"--state", "stuck", "--step", "shipping"}, []uuid.UUID{sagas[2]}},
	}
	for _, tc := range cases {
		got := list(tc.args...)
		if len(got) != len(tc.want) {
			t.Errorf("sagas %v: %v, want %v", tc.args, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("sagas %v: %v, want %v", tc.args, got, tc.want)
				break
			}
		}
	}
	var out bytes.Buffer
	if err := runSagas(ctx, []string{"--step", "refund", "--database-url", db.URL}, &out); err == nil || !strings.Contains(err.Error(), `--step no saga type has a step "refund"`) {
		t.Errorf("an unknown step: %v", err)
	}
	out.Reset()
	if err := runSagas(ctx, []string{"--search", "cli-key-c", "--database-url", db.URL}, &out); err != nil || !strings.Contains(out.String(), "shipping") {
		t.Errorf("the table names the step: %v\n%s", err, out.String())
	}

	out.Reset()
	if err := runOverview(ctx, []string{"--database-url", db.URL, "--kafka-brokers", ""}, &out); err == nil {
		t.Error("overview with an explicitly empty broker list succeeded")
	}
	t.Setenv("KAFKA_BROKERS", "") // restored at the end; unset meanwhile
	os.Unsetenv("KAFKA_BROKERS")
	out.Reset()
	if err := runOverview(ctx, []string{"--database-url", db.URL, "--json"}, &out); err != nil {
		t.Fatal(err)
	}
	var o overview.Overview
	if err := json.Unmarshal(out.Bytes(), &o); err != nil {
		t.Fatal(err)
	}
	if o.States[0].State != saga.Running || o.States[0].Count != 2 || o.States[2].State != saga.Stuck || o.States[2].Count != 1 {
		t.Errorf("overview states %+v", o.States)
	}
	out.Reset()
	if err := runOverview(ctx, []string{"--database-url", db.URL}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sagas: running=2 compensating=0 stuck=1", "OUTBOX", "consumer lag: not known without Kafka", "DEAD LETTERS  0"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("overview lacks %q:\n%s", want, out.String())
		}
	}
}

// `sagaflow schemas` lists, shows and checks the wire contract.
func TestSchemasCommand(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"list"}, "order-command  1"},
		{[]string{"show", "saga-reply"}, `"outcome"`},
		{[]string{"show", "order-event", "v1"}, `"OrderCancelled"`},
		{[]string{"check"}, "each compatible with every earlier version"},
	} {
		out.Reset()
		if err := runSchemas(context.Background(), c.args, &out); err != nil || !strings.Contains(out.String(), c.want) {
			t.Errorf("schemas %v: %v\n%s", c.args, err, out.String())
		}
	}
	for _, bad := range [][]string{{"show"}, {"show", "nope"}, {"show", "saga-reply", "9"}, {"explode"}} {
		if err := runSchemas(context.Background(), bad, &out); err == nil {
			t.Errorf("schemas %v succeeded", bad)
		}
	}
}
