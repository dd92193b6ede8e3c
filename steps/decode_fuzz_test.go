package steps

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// FuzzParticipantDecode hands every message to the decoding of each of the
// three participants, as built by NewInventory, NewPayment and NewShipping:
// decode, which Handle runs first, and the batch handler's Take. It proves
// that no message makes them panic; that each error of decode is permanent
// (the message is dead-lettered at once); that Take takes exactly the
// action commands that decode (fault injection being off); and that a
// command decode accepts has a saga id, an attempt of at least 1, the
// participant's step, a message type of the participant's that matches its
// kind, and, for an action, order data the participant can apply: the
// participant's own validation holds, and no text field a participant
// stores (SKUs, customer id, currency, shipping address) holds a NUL
// character, which PostgreSQL cannot store in text or jsonb, so that such
// an action could only fail on every delivery.
func FuzzParticipantDecode(f *testing.F) {
	for _, s := range participantSeeds(f) {
		f.Add(s.payload, s.typ, s.version)
	}
	ps := fuzzParticipants(f)
	f.Fuzz(func(t *testing.T, payload []byte, typ, version string) {
		for _, p := range ps {
			msg := message.NewMessage("0190a3c4-0000-7000-8000-000000000001", payload)
			msg.Metadata.Set(outbox.HeaderType, typ)
			msg.Metadata.Set(outbox.HeaderSchemaVersion, version)
			cmd, d, err := p.decode(msg)
			_, taken := actionBatch{p}.Take(msg)
			if err != nil {
				if !outbox.IsPermanent(err) {
					t.Fatalf("%s: decode error is not permanent: %v", p.name, err)
				}
				if taken {
					t.Fatalf("%s: Take took a command that decode refuses (%v)", p.name, err)
				}
				continue
			}
			checkAccepted(t, p, typ, version, cmd, &d)
			if taken != (cmd.Kind == saga.KindAction) {
				t.Fatalf("%s: Take took=%v a decoded command of kind %s", p.name, taken, cmd.Kind)
			}
		}
	})
}

// Each seed is accepted by the participant it was made for, or by none.
func TestParticipantDecodeSeeds(t *testing.T) {
	t.Parallel()
	ps := fuzzParticipants(t)
	for _, s := range participantSeeds(t) {
		t.Run(s.name, func(t *testing.T) {
			for _, p := range ps {
				msg := message.NewMessage("0190a3c4-0000-7000-8000-000000000001", s.payload)
				msg.Metadata.Set(outbox.HeaderType, s.typ)
				msg.Metadata.Set(outbox.HeaderSchemaVersion, s.version)
				_, _, err := p.decode(msg)
				if accepted := err == nil; accepted != (p.name == s.accepted) {
					t.Errorf("%s: accepted %v (error %v), want accepted only by %q", p.name, accepted, err, s.accepted)
				}
			}
		})
	}
}

// fuzzParticipants builds the three participants. Decoding never uses the
// database: the pool connects to nothing (a pool connects when first used).
func fuzzParticipants(tb testing.TB) []*Participant {
	pool, err := pgxpool.New(context.Background(), "postgres://fuzz@127.0.0.1:1/fuzz")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	cfg := Config{Pool: pool, Topics: kafkax.DefaultTopics(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	var ps []*Participant
	for _, build := range []func(Config) (*Participant, error){NewInventory, NewPayment, NewShipping} {
		p, err := build(cfg)
		if err != nil {
			tb.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// checkAccepted asserts what a command that p's decode accepted holds.
func checkAccepted(t *testing.T, p *Participant, typ, version string, cmd saga.Command, d *order.Data) {
	t.Helper()
	if n, err := strconv.Atoi(version); err != nil || n < 1 || n > saga.SchemaVersion {
		t.Fatalf("%s: accepted schema version %q", p.name, version)
	}
	want := map[string]saga.Kind{p.actionType: saga.KindAction, p.compensationType: saga.KindCompensation}[typ]
	if want == "" || cmd.Kind != want {
		t.Fatalf("%s: accepted a command of kind %q with message type %q", p.name, cmd.Kind, typ)
	}
	if cmd.SagaID == uuid.Nil || cmd.Attempt < 1 || cmd.Step != p.name {
		t.Fatalf("%s: accepted a command without saga id or attempt, or for another step: %+v", p.name, cmd)
	}
	if cmd.Kind != saga.KindAction {
		return // a compensation needs only the saga id
	}
	stored := map[string]string{"customer_id": d.CustomerID, "currency": d.Currency,
		"shipping_address.name": d.ShippingAddress.Name, "shipping_address.line1": d.ShippingAddress.Line1,
		"shipping_address.line2": d.ShippingAddress.Line2, "shipping_address.city": d.ShippingAddress.City,
		"shipping_address.postal_code": d.ShippingAddress.PostalCode, "shipping_address.country": d.ShippingAddress.Country}
	for i, it := range d.Items {
		stored[fmt.Sprintf("items[%d].sku", i)] = it.SKU
	}
	for field, v := range stored {
		if strings.ContainsRune(v, 0) {
			t.Fatalf("%s: accepted an action whose %s %q holds a NUL character, which PostgreSQL cannot store", p.name, field, v)
		}
	}
	switch p.name {
	case order.StepInventory:
		if len(d.Items) == 0 {
			t.Fatalf("inventory: accepted an action without items")
		}
		sum := map[string]int64{}
		for i, it := range d.Items {
			sum[it.SKU] += int64(it.Quantity)
			if strings.TrimSpace(it.SKU) == "" || it.Quantity < 1 || sum[it.SKU] > math.MaxInt32 {
				t.Fatalf("inventory: accepted items[%d] %+v (SKU total %d)", i, it, sum[it.SKU])
			}
		}
	case order.StepPayment:
		if strings.TrimSpace(d.CustomerID) == "" || d.AmountCents < 1 || strings.TrimSpace(d.Currency) == "" {
			t.Fatalf("payment: accepted customer %q, amount %d, currency %q", d.CustomerID, d.AmountCents, d.Currency)
		}
	}
}

// participantSeed is a message of the fuzz target's seed corpus.
type participantSeed struct {
	name         string
	payload      []byte
	typ, version string
	// accepted names the participant whose decode accepts it, if any.
	accepted string
}

// participantSeeds are valid commands of each participant and typical bad
// ones: NUL characters, a future schema version, malformed JSON, wrong
// headers, data of the wrong shape.
func participantSeeds(tb testing.TB) []participantSeed {
	sagaID := uuid.MustParse("0190a3c4-1111-7000-8000-00000000000a")
	command := func(step string, kind saga.Kind, attempt int, edit func(*order.Data)) []byte {
		d := order.Data{
			OrderID:     uuid.MustParse("0190a3c4-2222-7000-8000-00000000000b"),
			CustomerID:  "c-1",
			Items:       []order.Item{{SKU: "A", Quantity: 2}, {SKU: "B", Quantity: 1}},
			AmountCents: 12345,
			Currency:    "EUR",
			ShippingAddress: order.Address{
				Name: "Ada", Line1: "1 Main St", City: "Berlin", PostalCode: "10115", Country: "DE",
			},
		}
		if edit != nil {
			edit(&d)
		}
		raw, err := json.Marshal(d)
		if err != nil {
			tb.Fatal(err)
		}
		b, err := json.Marshal(saga.Command{SagaID: sagaID, SagaType: order.SagaType, Step: step, Kind: kind, Attempt: attempt, Data: raw})
		if err != nil {
			tb.Fatal(err)
		}
		return b
	}
	act, comp := saga.KindAction, saga.KindCompensation
	inv, pay, ship := order.StepInventory, order.StepPayment, order.StepShipping
	return []participantSeed{
		{"inventory reserve", command(inv, act, 1, nil), order.TypeReserve, "1", inv},
		{"payment charge", command(pay, act, 2, nil), order.TypeCharge, "1", pay},
		{"shipping ship", command(ship, act, 1, nil), order.TypeShip, "1", ship},
		{"inventory release with empty data", []byte(`{"saga_id":"` + sagaID.String() + `","step":"inventory","kind":"compensation","attempt":1,"data":{}}`), order.TypeRelease, "1", inv},
		{"NUL in a SKU", command(inv, act, 1, func(d *order.Data) { d.Items[0].SKU = "A\x00" }), order.TypeReserve, "1", ""},
		{"NUL in the customer id", command(pay, act, 1, func(d *order.Data) { d.CustomerID = "c\x00" }), order.TypeCharge, "1", ""},
		{"NUL in the address", command(ship, act, 1, func(d *order.Data) { d.ShippingAddress.Name = "\x00" }), order.TypeShip, "1", ""},
		{"NUL in a compensation's data", command(ship, comp, 1, func(d *order.Data) { d.ShippingAddress.Name = "\x00" }), order.TypeCancel, "1", ship},
		{"raw NUL bytes", []byte("\x00\x00"), order.TypeReserve, "1", ""},
		{"future schema version", command(inv, act, 1, nil), order.TypeReserve, strconv.Itoa(saga.SchemaVersion + 1), ""},
		{"no schema version", command(inv, act, 1, nil), order.TypeReserve, "", ""},
		{"malformed JSON", []byte(`{"saga_id":"` + sagaID.String() + `","step":"inventory","kind":"action","data":{"items":[`), order.TypeReserve, "1", ""},
		{"data null", []byte(`{"saga_id":"` + sagaID.String() + `","step":"inventory","kind":"action","attempt":1,"data":null}`), order.TypeReserve, "1", ""},
		{"quantity of the wrong type", []byte(`{"saga_id":"` + sagaID.String() + `","step":"inventory","kind":"action","attempt":1,"data":{"items":[{"sku":"A","quantity":"2"}]}}`), order.TypeReserve, "1", ""},
		{"huge quantity", command(inv, act, 1, func(d *order.Data) { d.Items = append(d.Items, order.Item{SKU: "A", Quantity: math.MaxInt32}) }), order.TypeReserve, "1", ""},
		{"type and kind disagree", command(ship, act, 1, nil), order.TypeCancel, "1", ""},
		{"another participant's type", command(inv, act, 1, nil), order.TypeCharge, "1", ""},
		{"payment without amount", command(pay, act, 1, func(d *order.Data) { d.AmountCents = 0 }), order.TypeCharge, "1", ""},
	}
}
