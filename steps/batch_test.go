package steps_test

import (
	"fmt"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// deliverBatch applies msgs with p's batch handler in one transaction, as a
// shared transaction of its inbox does; every message must be taken. It
// runs no prelude: HandleBatch locks and reads on its own.
func (e *env) deliverBatch(p *steps.Participant, msgs ...*message.Message) {
	e.t.Helper()
	e.deliverBatchWith(p, false, msgs...)
}

// deliverBatchWith is deliverBatch; with prelude, the batch handler's
// Prelude runs first in a round trip of its own, as the inbox runs it with
// its claim.
func (e *env) deliverBatchWith(p *steps.Participant, prelude bool, msgs ...*message.Message) {
	e.t.Helper()
	items := make([]any, len(msgs))
	for i, msg := range msgs {
		item, ok := p.Batch().Take(msg)
		if !ok {
			e.t.Fatalf("message %d was not taken", i)
		}
		items[i] = item
	}
	tx, err := e.db.Pool.Begin(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(e.ctx) //nolint:errcheck // a no-op after Commit
	if prelude {
		var b pgx.Batch
		p.Batch().(outbox.BatchPrelude).Prelude(&b, items)
		if err := tx.SendBatch(e.ctx, &b).Close(); err != nil {
			e.t.Fatalf("prelude of %d: %v", len(msgs), err)
		}
	}
	if err := p.Batch().HandleBatch(e.ctx, tx, items); err != nil {
		e.t.Fatalf("batch of %d: %v", len(msgs), err)
	}
	if err := tx.Commit(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

// One batch of inventory actions decides each against the stock the ones
// before it left, and answers the actions it has seen before from their
// rows, as the one-at-a-time handler does: with its prelude (the inbox's
// way: the steps rows and the stock rows locked and read with the claim)
// and without.
func TestActionBatchInventory(t *testing.T) {
	t.Parallel()
	for _, prelude := range []bool{true, false} {
		t.Run(fmt.Sprintf("prelude=%t", prelude), func(t *testing.T) {
			t.Parallel()
			testActionBatchInventory(t, prelude)
		})
	}
}

func testActionBatchInventory(t *testing.T, prelude bool) {
	e := setup(t) // stock A=10, B=5, C=0
	p := e.participant(order.StepInventory, nil)
	items := func(its ...order.Item) order.Data {
		d := newOrder()
		d.Items = its
		return d
	}
	seen, tomb := newSaga(), newSaga()
	e.mustDeliver(p, command(t, p, saga.KindAction, seen, 1, newOrder())) // A=8, B=4
	e.mustDeliver(p, command(t, p, saga.KindCompensation, tomb, 1, newOrder()))

	first, rest, late, empty, unknown := newSaga(), newSaga(), newSaga(), newSaga(), newSaga()
	e.deliverBatchWith(p, prelude,
		command(t, p, saga.KindAction, first, 1, items(order.Item{SKU: "A", Quantity: 2}, order.Item{SKU: "B", Quantity: 1})),
		command(t, p, saga.KindAction, rest, 1, items(order.Item{SKU: "A", Quantity: 6})),
		command(t, p, saga.KindAction, late, 1, items(order.Item{SKU: "A", Quantity: 1}, order.Item{SKU: "B", Quantity: 1})),
		command(t, p, saga.KindAction, empty, 1, items(order.Item{SKU: "C", Quantity: 1})),
		command(t, p, saga.KindAction, unknown, 1, items(order.Item{SKU: "Z", Quantity: 1})),
		command(t, p, saga.KindAction, seen, 2, newOrder()),
		command(t, p, saga.KindAction, tomb, 1, newOrder()),
	)

	e.wantStock(map[string]int{"A": 0, "B": 3, "C": 0})
	for _, c := range []struct {
		saga           uuid.UUID
		status, reason string
		replies        []saga.Reply
	}{
		{first, "done", "", []saga.Reply{reply(first, p.Name(), saga.KindAction, 1, saga.Succeeded, "")}},
		{rest, "done", "", []saga.Reply{reply(rest, p.Name(), saga.KindAction, 1, saga.Succeeded, "")}},
		{late, "refused", "out of stock: SKU A", []saga.Reply{reply(late, p.Name(), saga.KindAction, 1, saga.Refused, "out of stock: SKU A")}},
		{empty, "refused", "out of stock: SKU C", []saga.Reply{reply(empty, p.Name(), saga.KindAction, 1, saga.Refused, "out of stock: SKU C")}},
		{unknown, "refused", "unknown SKU Z", []saga.Reply{reply(unknown, p.Name(), saga.KindAction, 1, saga.Refused, "unknown SKU Z")}},
		{seen, "done", "", []saga.Reply{
			reply(seen, p.Name(), saga.KindAction, 1, saga.Succeeded, ""),
			reply(seen, p.Name(), saga.KindAction, 2, saga.Succeeded, ""),
		}},
		{tomb, "tombstone", "", []saga.Reply{
			reply(tomb, p.Name(), saga.KindCompensation, 1, saga.Succeeded, ""),
			reply(tomb, p.Name(), saga.KindAction, 1, saga.Refused, steps.ReasonCompensatedFirst),
		}},
	} {
		e.wantStatus(p, c.saga, c.status, c.reason)
		e.wantReplies(p, c.saga, c.replies...)
	}
	// The refused and answered-again actions left no reservation.
	for _, s := range []uuid.UUID{late, empty, unknown, tomb} {
		e.wantEffect(p, s, none)
	}
}

// Payment and shipping batches refuse by their rules, action by action.
func TestActionBatchRules(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		refuse func(*order.Data)
		reason string
	}{
		{order.StepPayment, func(d *order.Data) { d.CustomerID = steps.BlockedCustomerPrefix + "x" }, "card declined: customer " + steps.BlockedCustomerPrefix + "x is blocked"},
		{order.StepShipping, func(d *order.Data) { d.ShippingAddress.Country = "" }, "address not deliverable: no country"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(c.name, nil)
			ok, no := newSaga(), newSaga()
			bad := newOrder()
			c.refuse(&bad)
			e.deliverBatch(p,
				command(t, p, saga.KindAction, ok, 1, newOrder()),
				command(t, p, saga.KindAction, no, 1, bad),
			)
			e.wantStatus(p, ok, "done", "")
			e.wantReplies(p, ok, reply(ok, p.Name(), saga.KindAction, 1, saga.Succeeded, ""))
			e.wantEffect(p, ok, applied)
			e.wantStatus(p, no, "refused", c.reason)
			e.wantReplies(p, no, reply(no, p.Name(), saga.KindAction, 1, saga.Refused, c.reason))
			e.wantEffect(p, no, none)
		})
	}
}

// The batch handler leaves to the one-at-a-time handler what it cannot
// apply set-at-a-time.
func TestActionBatchTake(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepPayment, nil)
	s := newSaga()
	garbage := command(t, p, saga.KindAction, s, 1, newOrder())
	garbage.Payload = []byte("{")
	for _, c := range []struct {
		name string
		msg  *message.Message
		take bool
	}{
		{"action", command(t, p, saga.KindAction, s, 1, newOrder()), true},
		{"compensation", command(t, p, saga.KindCompensation, s, 1, newOrder()), false},
		{"injected fault", command(t, p, saga.KindAction, s, 1, injected(p.Name(), saga.KindAction, steps.InjectRefuse)), false},
		{"undecodable", garbage, false},
	} {
		if _, took := p.Batch().Take(c.msg); took != c.take {
			t.Errorf("%s: taken %v, want %v", c.name, took, c.take)
		}
	}
}
