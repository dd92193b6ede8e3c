package steps_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// An action applies its effect, records 'done' and replies Succeeded with
// the command's attempt.
func TestActionSucceeds(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 2, newOrder()))
			e.wantEffect(p, s, applied)
			e.wantStatus(p, s, "done", "")
			e.wantReplies(p, s, reply(s, name, saga.KindAction, 2, saga.Succeeded, ""))
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 8, "B": 4})
			}
		})
	}
}

// The same message redelivered is skipped by the inbox; the orchestrator's
// resend (a new message, the next attempt) gets the same answer again
// without a second effect.
func TestRepeatedActionSameReply(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			first := command(t, p, saga.KindAction, s, 1, newOrder())
			e.mustDeliver(p, first)
			if dup, err := e.deliver(p, first); err != nil || !dup {
				t.Fatalf("redelivery: duplicate %v, err %v; want a skipped duplicate", dup, err)
			}
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 2, newOrder()))
			e.wantEffect(p, s, applied)
			e.wantStatus(p, s, "done", "")
			e.wantReplies(p, s,
				reply(s, name, saga.KindAction, 1, saga.Succeeded, ""),
				reply(s, name, saga.KindAction, 2, saga.Succeeded, ""))
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 8, "B": 4})
			}
		})
	}
}

// Business rules: each refusal has no effect, records its reason, and is
// given again to a resend; the edges of each rule are accepted.
func TestBusinessRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		participant string
		cfg         func(*steps.Config)
		data        func(*order.Data)
		refusal     string // "" when the action succeeds
	}{
		{"inventory out of stock", order.StepInventory, nil,
			func(d *order.Data) { d.Items = []order.Item{{SKU: "B", Quantity: 6}} }, "out of stock: SKU B"},
		{"inventory nothing left", order.StepInventory, nil,
			func(d *order.Data) { d.Items = []order.Item{{SKU: "C", Quantity: 1}} }, "out of stock: SKU C"},
		{"inventory unknown SKU", order.StepInventory, nil,
			func(d *order.Data) { d.Items = []order.Item{{SKU: "A", Quantity: 1}, {SKU: "NOPE", Quantity: 1}} }, "unknown SKU NOPE"},
		{"inventory takes the last units", order.StepInventory, nil,
			func(d *order.Data) { d.Items = []order.Item{{SKU: "B", Quantity: 5}} }, ""},
		{"payment over the default limit", order.StepPayment, nil,
			func(d *order.Data) { d.AmountCents = 500001 }, "card declined: 5000.01 EUR exceeds the limit of 5000.00 EUR"},
		{"payment at the default limit", order.StepPayment, nil,
			func(d *order.Data) { d.AmountCents = 500000 }, ""},
		{"payment over a configured limit", order.StepPayment, func(c *steps.Config) { c.ChargeLimitCents = 10000 },
			func(d *order.Data) { d.AmountCents = 10001 }, "card declined: 100.01 EUR exceeds the limit of 100.00 EUR"},
		{"payment over a customer's limit", order.StepPayment, func(c *steps.Config) { c.CustomerLimits = map[string]int64{"c-1": 99} },
			func(d *order.Data) { d.AmountCents = 100 }, "card declined: 1.00 EUR exceeds the limit of 0.99 EUR"},
		{"payment within a customer's higher limit", order.StepPayment, func(c *steps.Config) { c.CustomerLimits = map[string]int64{"c-1": 900000} },
			func(d *order.Data) { d.AmountCents = 800000 }, ""},
		{"payment over the default limit in yen", order.StepPayment, nil,
			func(d *order.Data) { d.AmountCents, d.Currency = 500001, "JPY" }, "card declined: 500001 JPY exceeds the limit of 500000 JPY"},
		{"payment over the default limit in dinars", order.StepPayment, nil,
			func(d *order.Data) { d.AmountCents, d.Currency = 500001, "KWD" }, "card declined: 500.001 KWD exceeds the limit of 500.000 KWD"},
		{"payment blocked customer", order.StepPayment, nil,
			func(d *order.Data) { d.CustomerID = "blocked-7" }, "card declined: customer blocked-7 is blocked"},
		{"shipping blocked country", order.StepShipping, nil,
			func(d *order.Data) { d.ShippingAddress.Country = "XX" }, "address not deliverable: country XX is not served"},
		{"shipping blocked country in lower case", order.StepShipping, nil,
			func(d *order.Data) { d.ShippingAddress.Country = " xx" }, "address not deliverable: country XX is not served"},
		{"shipping no country", order.StepShipping, nil,
			func(d *order.Data) { d.ShippingAddress.Country = "" }, "address not deliverable: no country"},
		{"shipping configured blocked country", order.StepShipping, func(c *steps.Config) { c.BlockedCountries = []string{"fr"} },
			func(d *order.Data) { d.ShippingAddress.Country = "FR" }, "address not deliverable: country FR is not served"},
		{"shipping with no country blocked", order.StepShipping, func(c *steps.Config) { c.BlockedCountries = []string{} },
			func(d *order.Data) { d.ShippingAddress.Country = "XX" }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(tt.participant, tt.cfg)
			s := newSaga()
			d := newOrder()
			tt.data(&d)
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, d))
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 2, d))
			if tt.refusal == "" {
				e.wantEffect(p, s, applied)
				e.wantStatus(p, s, "done", "")
				e.wantReplies(p, s,
					reply(s, p.Name(), saga.KindAction, 1, saga.Succeeded, ""),
					reply(s, p.Name(), saga.KindAction, 2, saga.Succeeded, ""))
				return
			}
			e.wantEffect(p, s, none)
			e.wantStatus(p, s, "refused", tt.refusal)
			e.wantReplies(p, s,
				reply(s, p.Name(), saga.KindAction, 1, saga.Refused, tt.refusal),
				reply(s, p.Name(), saga.KindAction, 2, saga.Refused, tt.refusal))
			if tt.participant == order.StepInventory {
				e.wantStock(map[string]int{"A": 10, "B": 5, "C": 0})
			}
		})
	}
}

// A compensation after the action undoes its effect and replies Succeeded;
// a repeated compensation changes nothing; a late resend of the action is
// refused without effect.
func TestCompensationAfterAction(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, newOrder()))
			e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 1, newOrder()))
			e.wantEffect(p, s, undone)
			e.wantStatus(p, s, "compensated", "")
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 10, "B": 5})
			}

			e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 2, newOrder()))
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 2, newOrder()))
			e.wantEffect(p, s, undone)
			e.wantStatus(p, s, "compensated", "")
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 10, "B": 5})
			}
			e.wantReplies(p, s,
				reply(s, name, saga.KindAction, 1, saga.Succeeded, ""),
				reply(s, name, saga.KindCompensation, 1, saga.Succeeded, ""),
				reply(s, name, saga.KindCompensation, 2, saga.Succeeded, ""),
				reply(s, name, saga.KindAction, 2, saga.Refused, steps.ReasonAlreadyCompensated))
		})
	}
}

// A compensation that arrives before its action records a tombstone and
// succeeds; repeating it changes nothing; the late action is refused
// without effect.
func TestCompensationBeforeAction(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 1, newOrder()))
			e.wantStatus(p, s, "tombstone", "")
			e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 2, newOrder()))
			e.wantStatus(p, s, "tombstone", "")
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, newOrder()))
			e.wantStatus(p, s, "tombstone", "")
			e.wantEffect(p, s, none)
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 10, "B": 5})
			}
			e.wantReplies(p, s,
				reply(s, name, saga.KindCompensation, 1, saga.Succeeded, ""),
				reply(s, name, saga.KindCompensation, 2, saga.Succeeded, ""),
				reply(s, name, saga.KindAction, 1, saga.Refused, steps.ReasonCompensatedFirst))
		})
	}
}

// Compensating a refused action has nothing to undo: it succeeds and keeps
// the refusal's record.
func TestCompensationOfRefusedAction(t *testing.T) {
	t.Parallel()
	refuse := map[string]func(*order.Data){
		order.StepInventory: func(d *order.Data) { d.Items = []order.Item{{SKU: "A", Quantity: 11}} },
		order.StepPayment:   func(d *order.Data) { d.CustomerID = "blocked-1" },
		order.StepShipping:  func(d *order.Data) { d.ShippingAddress.Country = "XX" },
	}
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			d := newOrder()
			refuse[name](&d)
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, d))
			_, reason := e.status(p, s)
			e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 1, d))
			e.wantStatus(p, s, "refused", reason)
			e.wantEffect(p, s, none)
			e.wantStock(map[string]int{"A": 10, "B": 5})
			e.wantReplies(p, s,
				reply(s, name, saga.KindAction, 1, saga.Refused, reason),
				reply(s, name, saga.KindCompensation, 1, saga.Succeeded, ""))
		})
	}
}

// A reservation takes every item or none, whatever the position of the
// item that cannot be served; lines of one SKU add up.
func TestInventoryAllOrNothing(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepInventory, nil)
	if err := steps.SeedStock(e.ctx, e.db.Pool, map[string]int{"D": 3}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		items   []order.Item
		refusal string
	}{
		// The short SKU last, first and in the middle of the lock order.
		{[]order.Item{{SKU: "A", Quantity: 3}, {SKU: "B", Quantity: 5}, {SKU: "D", Quantity: 4}}, "out of stock: SKU D"},
		{[]order.Item{{SKU: "D", Quantity: 1}, {SKU: "B", Quantity: 1}, {SKU: "A", Quantity: 11}}, "out of stock: SKU A"},
		{[]order.Item{{SKU: "A", Quantity: 1}, {SKU: "C", Quantity: 1}, {SKU: "D", Quantity: 1}}, "out of stock: SKU C"},
		{[]order.Item{{SKU: "A", Quantity: 1}, {SKU: "B", Quantity: 1}, {SKU: "BB", Quantity: 1}}, "unknown SKU BB"},
		// Two lines of B that fit apart but not together.
		{[]order.Item{{SKU: "A", Quantity: 1}, {SKU: "B", Quantity: 3}, {SKU: "B", Quantity: 3}}, "out of stock: SKU B"},
	}
	for i, tt := range tests {
		s := newSaga()
		d := newOrder()
		d.Items = tt.items
		e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, d))
		e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Refused, tt.refusal))
		e.wantEffect(p, s, none)
		e.wantStock(map[string]int{"A": 10, "B": 5, "C": 0, "D": 3})
		if t.Failed() {
			t.Fatalf("case %d", i)
		}
	}

	s := newSaga()
	d := newOrder()
	d.Items = []order.Item{{SKU: "D", Quantity: 3}, {SKU: "A", Quantity: 4}, {SKU: "B", Quantity: 2}, {SKU: "A", Quantity: 6}}
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, d))
	e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Succeeded, ""))
	e.wantStock(map[string]int{"A": 0, "B": 3, "C": 0, "D": 0})
	var lines, units int
	if err := e.db.Pool.QueryRow(e.ctx, `SELECT count(*), sum(quantity) FROM inventory.reservations WHERE saga_id = $1`, s).Scan(&lines, &units); err != nil {
		t.Fatal(err)
	}
	if lines != 3 || units != 15 {
		t.Fatalf("reservation has %d lines of %d units, want 3 lines (A merged) of 15", lines, units)
	}
	// Released, every unit comes back.
	e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 1, d))
	e.wantStock(map[string]int{"A": 10, "B": 5, "C": 0, "D": 3})
}

// A hot SKU: 50 concurrent reservations of one unit against 20 in stock:
// exactly 20 succeed, 30 are refused, and stock ends at 0, never below.
func TestHotSKU(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepInventory, nil)
	if err := steps.SeedStock(e.ctx, e.db.Pool, map[string]int{"HOT": 20}); err != nil {
		t.Fatal(err)
	}
	const orders = 50
	var wg sync.WaitGroup
	errs := make(chan error, orders)
	for range orders {
		wg.Go(func() {
			d := newOrder()
			d.Items = []order.Item{{SKU: "HOT", Quantity: 1}}
			msg := command(t, p, saga.KindAction, newSaga(), 1, d)
			if _, err := e.deliver(p, msg); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var done, refused, refusedOutOfStock int
	if err := e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'refused'),
		count(*) FILTER (WHERE reason = 'out of stock: SKU HOT') FROM inventory.steps`).Scan(&done, &refused, &refusedOutOfStock); err != nil {
		t.Fatal(err)
	}
	if done != 20 || refused != 30 || refusedOutOfStock != 30 {
		t.Fatalf("%d done, %d refused (%d out of stock), want 20, 30 (30)", done, refused, refusedOutOfStock)
	}
	var succeededReplies, refusedReplies, available, initial, held int
	if err := e.db.Pool.QueryRow(e.ctx, `SELECT
		(SELECT count(*) FROM inventory.outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'outcome' = 'succeeded'),
		(SELECT count(*) FROM inventory.outbox WHERE convert_from(payload, 'UTF8')::jsonb->>'outcome' = 'refused'),
		available, initial,
		(SELECT COALESCE(sum(quantity), 0) FROM inventory.reservations WHERE sku = 'HOT' AND released_at IS NULL)
		FROM inventory.stock WHERE sku = 'HOT'`).Scan(&succeededReplies, &refusedReplies, &available, &initial, &held); err != nil {
		t.Fatal(err)
	}
	if succeededReplies != 20 || refusedReplies != 30 {
		t.Fatalf("%d Succeeded and %d Refused replies, want 20 and 30", succeededReplies, refusedReplies)
	}
	if available != 0 || initial != 20 || held != 20 {
		t.Fatalf("HOT: available %d, initial %d, held %d; want 0, 20, 20", available, initial, held)
	}
}

// An action, its resend and its compensation delivered at the same moment
// serialise on the steps row: whichever order they take, the saga ends with
// nothing held and the replies agree with the row.
func TestConcurrentCommandsOfOneSaga(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepInventory, nil)
	if err := steps.SeedStock(e.ctx, e.db.Pool, map[string]int{"A": 1000}); err != nil {
		t.Fatal(err)
	}
	const sagas = 20
	ids := make([]uuid.UUID, sagas)
	var wg sync.WaitGroup
	errs := make(chan error, 3*sagas)
	for i := range sagas {
		s := newSaga()
		ids[i] = s
		d := newOrder()
		d.Items = []order.Item{{SKU: "A", Quantity: 1}}
		for _, msg := range []*message.Message{
			command(t, p, saga.KindAction, s, 1, d),
			command(t, p, saga.KindAction, s, 2, d),
			command(t, p, saga.KindCompensation, s, 1, d),
		} {
			wg.Go(func() {
				if _, err := e.deliver(p, msg); err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.wantStock(map[string]int{"A": 1000})
	for _, s := range ids {
		status, _ := e.status(p, s)
		var succeeded, refused int
		for _, r := range e.replies(p, s) {
			if r.Kind != saga.KindAction {
				if r.Outcome != saga.Succeeded {
					t.Fatalf("saga %s: compensation replied %+v", s, r)
				}
				continue
			}
			if r.Outcome == saga.Succeeded {
				succeeded++
			} else {
				refused++
			}
		}
		switch status {
		case "compensated": // the action ran first: the effect is undone
			e.wantEffect(p, s, undone)
		case "tombstone": // the compensation ran first: no effect, both actions refused
			e.wantEffect(p, s, none)
			if succeeded != 0 || refused != 2 {
				t.Fatalf("saga %s: tombstone but %d actions succeeded, %d refused", s, succeeded, refused)
			}
		default:
			t.Fatalf("saga %s ended %q", s, status)
		}
		if succeeded+refused != 2 {
			t.Fatalf("saga %s: %d action replies, want 2", s, succeeded+refused)
		}
	}
}

// SeedStock sets available and initial units, counting live reservations
// in initial, and rejects bad input.
func TestSeedStock(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepInventory, nil)
	s := newSaga()
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, newOrder())) // holds A:2, B:1
	if err := steps.SeedStock(e.ctx, e.db.Pool, map[string]int{"A": 100, "E": 7}); err != nil {
		t.Fatal(err)
	}
	var got []string
	rows, err := e.db.Pool.Query(e.ctx, `SELECT sku || '=' || available || '/' || initial FROM inventory.stock ORDER BY sku`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := "[A=100/102 B=4/5 C=0/0 E=7/7]"; fmt.Sprint(got) != want {
		t.Fatalf("stock %v, want %s", got, want)
	}
	for _, bad := range []map[string]int{{"": 1}, {"X": -1}} {
		if err := steps.SeedStock(e.ctx, e.db.Pool, bad); err == nil {
			t.Fatalf("SeedStock(%v) succeeded", bad)
		}
	}
}

// A refusal found after the effect began undoes what it did so far (the
// action runs in a savepoint).
func TestRefusalUndoesPartialEffect(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p, err := steps.NewHalfwayRefuser(e.config())
	if err != nil {
		t.Fatal(err)
	}
	s := newSaga()
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, newOrder()))
	e.wantStock(map[string]int{"A": 10, "B": 5})
	e.wantStatus(p, s, "refused", "refused halfway")
	e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Refused, "refused halfway"))
}

// A command of schema version 2 names the topic to answer on (reply_to):
// the reply goes there, in version 2, naming the participant. A version 1
// command names none (one that does is not trusted): the reply goes to the
// configured replies topic, in version 1, which an orchestrator that reads
// only version 1 understands.
func TestReplyGoesWhereTheCommandSays(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, version, replyTo, want string
	}{
		{"version 2 with reply_to", "2", "elsewhere.replies", "elsewhere.replies"},
		{"version 2 without", "2", "", ""},
		{"version 1", "1", "", ""},
		{"version 1 naming one", "1", "elsewhere.replies", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(order.StepPayment, nil)
			s := newSaga()
			msg := command(t, p, saga.KindAction, s, 1, newOrder())
			var c map[string]any
			if err := json.Unmarshal(msg.Payload, &c); err != nil {
				t.Fatal(err)
			}
			if tc.replyTo != "" {
				c["reply_to"] = tc.replyTo
			}
			msg.Payload, _ = json.Marshal(c)
			msg.Metadata.Set(outbox.HeaderSchemaVersion, tc.version)
			e.mustDeliver(p, msg)
			want := tc.want
			if want == "" {
				want = e.topics.SagaReplies
			}
			var topic, version string
			var payload []byte
			err := e.db.Pool.QueryRow(e.ctx, `SELECT topic, headers->>'schema_version', payload FROM `+
				pgx.Identifier{p.Schema(), "outbox"}.Sanitize()+` WHERE key = $1`, s.String()).Scan(&topic, &version, &payload)
			if err != nil {
				t.Fatal(err)
			}
			if topic != want || version != tc.version {
				t.Errorf("reply on %s in version %s, want %s in %s", topic, version, want, tc.version)
			}
			v, _ := strconv.Atoi(tc.version)
			if err := contract.Validate(saga.ReplyType, v, payload); err != nil || strings.Contains(string(payload), `"participant":"payment"`) != (v == 2) {
				t.Errorf("reply %s: %v", payload, err)
			}
		})
	}
}
