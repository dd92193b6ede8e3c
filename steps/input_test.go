package steps_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// Bad input is a permanent error (dead-lettered at once) and commits
// nothing: no steps row, no reply, no inbox record.
func TestBadInputIsPermanent(t *testing.T) {
	t.Parallel()
	// change spoils a good command: payload replaces the whole payload,
	// data the command's data, orderData edits the order before encoding;
	// "-" removes a header.
	type change struct {
		participant string
		typ         string // message type header, "" keeps the right one
		version     string // schema version header, "" keeps "1"
		kind        saga.Kind
		step        string
		payload     string
		data        string
		orderData   func(*order.Data)
	}
	tests := []struct {
		name string
		c    change
		want string // in the error
	}{
		{"malformed JSON", change{payload: `{"saga_id":`}, "decode command"},
		{"not JSON at all", change{payload: "\xff\x00x"}, "decode command"},
		{"no saga id", change{payload: `{"step":"inventory","kind":"action","attempt":1,"data":{}}`}, "lacks saga_id"},
		{"unknown message type", change{typ: "inventory.explode"}, `type "inventory.explode"`},
		{"another participant's type", change{typ: order.TypeCharge}, `type "payment.charge"`},
		{"no message type", change{typ: "-"}, `type ""`},
		{"type and kind disagree", change{typ: order.TypeRelease}, "carries a command of kind action"},
		{"another step", change{step: "payment"}, `for step "payment"`},
		{"future schema version", change{version: future}, "schema version " + future},
		{"no schema version", change{version: "-"}, "no schema_version header"},
		{"data not an object", change{data: `"x"`}, "not a JSON object"},
		{"data null", change{data: `null`}, "not a JSON object"},
		{"data of the wrong shape", change{data: `{"items":[{"sku":"A","quantity":"two"}]}`}, "decode order data"},
		{"negative quantity", change{orderData: func(d *order.Data) { d.Items[0].Quantity = -1 }}, "quantity -1"},
		{"zero quantity", change{orderData: func(d *order.Data) { d.Items[1].Quantity = 0 }}, "quantity 0"},
		{"no items", change{orderData: func(d *order.Data) { d.Items = nil }}, "no items"},
		{"empty SKU", change{orderData: func(d *order.Data) { d.Items[0].SKU = " " }}, "empty sku"},
		{"huge quantity", change{orderData: func(d *order.Data) { d.Items[0].Quantity = 1 << 31 }}, "too large"},
		{"payment without amount", change{participant: order.StepPayment, orderData: func(d *order.Data) { d.AmountCents = 0 }}, "amount_cents 0"},
		{"payment negative amount", change{participant: order.StepPayment, orderData: func(d *order.Data) { d.AmountCents = -5 }}, "amount_cents -5"},
		{"payment without customer", change{participant: order.StepPayment, orderData: func(d *order.Data) { d.CustomerID = "" }}, "empty customer_id"},
		{"payment without currency", change{participant: order.StepPayment, orderData: func(d *order.Data) { d.Currency = "" }}, "empty currency"},
		{"shipping compensation of another type", change{participant: order.StepShipping, kind: saga.KindCompensation, typ: order.TypeShip}, "carries a command of kind compensation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			c := tt.c
			if c.participant == "" {
				c.participant = order.StepInventory
			}
			if c.kind == "" {
				c.kind = saga.KindAction
			}
			p := e.participant(c.participant, nil)
			s := newSaga()
			d := newOrder()
			if c.orderData != nil {
				c.orderData(&d)
			}
			msg := command(t, p, c.kind, s, 1, d)
			var cmd saga.Command
			if err := json.Unmarshal(msg.Payload, &cmd); err != nil {
				t.Fatal(err)
			}
			if c.step != "" {
				cmd.Step = c.step
			}
			if c.data != "" {
				cmd.Data = json.RawMessage(c.data)
			}
			msg.Payload, _ = json.Marshal(cmd)
			if c.payload != "" {
				msg.Payload = []byte(c.payload)
			}
			switch c.typ {
			case "":
			case "-":
				delete(msg.Metadata, outbox.HeaderType)
			default:
				msg.Metadata.Set(outbox.HeaderType, c.typ)
			}
			switch c.version {
			case "":
			case "-":
				delete(msg.Metadata, outbox.HeaderSchemaVersion)
			default:
				msg.Metadata.Set(outbox.HeaderSchemaVersion, c.version)
			}

			_, err := e.deliver(p, msg)
			if !outbox.IsPermanent(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v (permanent %v), want a permanent error mentioning %q", err, outbox.IsPermanent(err), tt.want)
			}
			e.wantStatus(p, s, "", "")
			e.wantReplies(p, s)
			e.wantEffect(p, s, none)
			if n := e.inboxRows(p); n != 0 {
				t.Fatalf("inbox recorded %d messages, want 0", n)
			}
		})
	}
}

// A compensation needs only the saga id, so data an action would reject
// does not stop it: a saga whose action was dead-lettered can still finish.
func TestCompensationToleratesInvalidOrderData(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepInventory, nil)
	s := newSaga()
	d := newOrder()
	d.Items[0].Quantity = -1
	if _, err := e.deliver(p, command(t, p, saga.KindAction, s, 1, d)); !outbox.IsPermanent(err) {
		t.Fatalf("action with a negative quantity: %v, want a permanent error", err)
	}
	e.mustDeliver(p, command(t, p, saga.KindCompensation, s, 1, d))
	e.wantStatus(p, s, "tombstone", "")
	e.wantReplies(p, s, reply(s, p.Name(), saga.KindCompensation, 1, saga.Succeeded, ""))
}

// Constructors reject a configuration they cannot run with.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	e := setup(t)
	tests := []struct {
		name  string
		tweak func(*steps.Config)
		want  string
	}{
		{"no pool", func(c *steps.Config) { c.Pool = nil }, "no database pool"},
		{"no topics", func(c *steps.Config) { c.Topics.SagaReplies = "" }, "replies topic"},
		{"bad injection", func(c *steps.Config) { c.Inject = "delay=forever" }, "delay=DURATION"},
		{"negative limit", func(c *steps.Config) { c.ChargeLimitCents = -1 }, "negative charge limit"},
		{"negative customer limit", func(c *steps.Config) { c.CustomerLimits = map[string]int64{"x": -1} }, "negative charge limit -1 for customer x"},
	}
	for _, tt := range tests {
		cfg := e.config()
		tt.tweak(&cfg)
		_, err := steps.NewPayment(cfg)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
	p := e.participant(order.StepShipping, nil)
	if err := p.Register(nil, nil, nil); err == nil {
		t.Error("Register without a router succeeded")
	}
	if p.Topic() != e.topics.ShippingCommands || p.Group() != e.topics.Group("shipping") ||
		p.DeadLetterTopic() != e.topics.DeadLetter("shipping") || p.Schema() != "shipping" {
		t.Errorf("shipping: topic %s, group %s, dead letters %s, schema %s", p.Topic(), p.Group(), p.DeadLetterTopic(), p.Schema())
	}
}

// future is a schema version above what this build reads.
var future = strconv.Itoa(saga.SchemaVersion + 1)
