package order

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// PlaceRequest is an order to place, the body of POST /orders. Its
// amount is in minor units of its currency; the API reads it as the client
// wrote it (a DecimalAmount, whose scale depends on the currency) and
// converts it with ValidateWithAmount.
type PlaceRequest struct {
	CustomerID      string            `json:"customer_id"`
	Items           []Item            `json:"items"`
	Amount          Amount            `json:"amount"`
	ShippingAddress Address           `json:"shipping_address"`
	Inject          map[string]string `json:"inject,omitempty"`
}

// FieldError says which field of a request is wrong and why.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// Limits of a valid order (and MaxAmount).
const (
	MaxItems      = 100
	MaxQuantity   = 10000
	MaxTextLength = 200
)

var (
	countryPattern = regexp.MustCompile(`^[A-Z]{2}$`)
	skuPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
)

// injectable are the participants and compensations Inject may name.
var injectable = map[string]bool{
	StepInventory: true, StepPayment: true, StepShipping: true,
	StepInventory + ".compensation": true, StepPayment + ".compensation": true, StepShipping + ".compensation": true,
}

// Validate checks every field and returns what is wrong, in field order.
// The currency must be an ISO 4217 code of a currency in use; the value,
// in its minor units, must be positive and at most MaxAmount in the
// currency's major unit.
func (r *PlaceRequest) Validate() []FieldError { return r.validate(r.Amount.check()) }

// ValidateWithAmount sets r.Amount to a, the amount as the client wrote it,
// converted to minor units of its currency (DecimalAmount.Parse), and
// checks every field as Validate does. When a cannot be converted, r.Amount
// is zero and what is wrong with a is in the amount's place among the
// errors.
func (r *PlaceRequest) ValidateWithAmount(a DecimalAmount) []FieldError {
	amount, amountErrs := a.Parse()
	r.Amount = amount
	return r.validate(amountErrs)
}

// validate checks every field but the amount, whose errors are given, and
// returns what is wrong, in field order.
func (r *PlaceRequest) validate(amountErrs []FieldError) []FieldError {
	var errs []FieldError
	add := func(field, reason string) { errs = append(errs, FieldError{field, reason}) }
	text := func(field, v string, required bool) {
		switch {
		case required && strings.TrimSpace(v) == "":
			add(field, "is required")
		case len(v) > MaxTextLength:
			add(field, fmt.Sprintf("is longer than %d bytes", MaxTextLength))
		default:
			if i := strings.IndexFunc(v, unicode.IsControl); i >= 0 {
				add(field, fmt.Sprintf("contains a control character (%U at byte %d); send printable text", []rune(v[i:])[0], i))
			}
		}
	}
	text("customer_id", r.CustomerID, true)
	switch {
	case len(r.Items) == 0:
		add("items", "needs at least one item")
	case len(r.Items) > MaxItems:
		add("items", fmt.Sprintf("has more than %d items", MaxItems))
	}
	seen := map[string]bool{}
	for i, it := range r.Items {
		f := fmt.Sprintf("items[%d]", i)
		if !skuPattern.MatchString(it.SKU) {
			add(f+".sku", "must be 1-64 letters, digits, '.', '_' or '-'")
		} else if seen[it.SKU] {
			add(f+".sku", "appears twice; put the quantities in one item")
		}
		seen[it.SKU] = true
		if it.Quantity <= 0 {
			add(f+".quantity", "must be a positive whole number")
		} else if it.Quantity > MaxQuantity {
			add(f+".quantity", fmt.Sprintf("must be at most %d", MaxQuantity))
		}
	}
	errs = append(errs, amountErrs...)
	a := r.ShippingAddress
	text("shipping_address.name", a.Name, true)
	text("shipping_address.line1", a.Line1, true)
	text("shipping_address.line2", a.Line2, false)
	text("shipping_address.city", a.City, true)
	text("shipping_address.postal_code", a.PostalCode, true)
	if !countryPattern.MatchString(a.Country) {
		add("shipping_address.country", "must be a two-letter ISO 3166-1 code in capitals, such as DE")
	}
	for _, k := range slices.Sorted(maps.Keys(r.Inject)) {
		v := r.Inject[k]
		if !injectable[k] {
			add("inject."+k, "names no participant (inventory, payment, shipping, or one of them + \".compensation\")")
		}
		text("inject."+k, v, true)
	}
	return errs
}

// hash identifies a request's content, to tell a replay from a different
// request under a used idempotency key.
func (r *PlaceRequest) hash() []byte {
	b, _ := json.Marshal(r) // map keys are sorted by encoding/json
	h := sha256.Sum256(b)
	return h[:]
}

// Placed is the answer to a placement.
type Placed struct {
	OrderID uuid.UUID `json:"order_id"`
	SagaID  uuid.UUID `json:"saga_id"`
	Status  Status    `json:"status"`
	// Replayed is true when the idempotency key was used before with the
	// same request: this is that placement's answer.
	Replayed bool `json:"-"`
}

// ErrIdempotencyConflict is returned when an idempotency key was used with a
// different request.
var ErrIdempotencyConflict = errors.New("idempotency key already used with a different request")

// Service places orders and reads them.
type Service struct {
	pool   *pgxpool.Pool
	engine *saga.Engine
	outbox *outbox.Outbox
	topics eventTopics
}

type eventTopics struct{ orderEvents string }

// NewService returns an order service that starts sagas on engine and
// publishes order events to orderEventsTopic.
func NewService(pool *pgxpool.Pool, engine *saga.Engine, orderEventsTopic string) *Service {
	return &Service{pool: pool, engine: engine, outbox: outbox.New("orders"), topics: eventTopics{orderEventsTopic}}
}

// Place validates nothing (call Validate first) and, in one transaction,
// stores the order (pending), starts its saga (which writes the first
// command to the outbox) and writes an OrderPlaced event. The same key with
// the same request answers the first placement; with another request,
// ErrIdempotencyConflict.
func (s *Service) Place(ctx context.Context, key string, req *PlaceRequest) (Placed, error) {
	hash := req.hash()
	orderID, err := uuid.NewV7()
	if err != nil {
		return Placed{}, fmt.Errorf("new order id: %w", err)
	}
	sagaID, err := uuid.NewV7()
	if err != nil {
		return Placed{}, fmt.Errorf("new saga id: %w", err)
	}
	items, _ := json.Marshal(req.Items)
	addr, _ := json.Marshal(req.ShippingAddress)
	// BEGIN and the order's insert go in one round trip; the saga's rows,
	// its first command and the OrderPlaced event go with the COMMIT
	// (saga.SendBatch holds them): two round trips in all.
	inserted := false
	tx, err := outbox.BeginWith(ctx, s.pool, func(rows pgx.Rows) error {
		var id uuid.UUID
		_, err := pgx.ForEachRow(rows, []any{&id}, func() error {
			inserted = true
			return nil
		})
		return err
	}, sqlInsertOrder, orderID, sagaID, key, hash, req.CustomerID, items, int64(req.Amount.Value), req.Amount.Currency, addr)
	if err != nil {
		return Placed{}, fmt.Errorf("insert order %s: %w", orderID, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit

	if !inserted {
		// The key was used: by this request (a retry) or another one.
		var p Placed
		var prevHash []byte
		var status string
		if err := tx.QueryRow(ctx, sqlOrderByKey, key).Scan(&p.OrderID, &p.SagaID, &status, &prevHash); err != nil {
			return Placed{}, fmt.Errorf("read order of idempotency key: %w", err)
		}
		if !bytes.Equal(prevHash, hash) {
			return Placed{}, ErrIdempotencyConflict
		}
		p.Status, p.Replayed = Status(status), true
		return p, nil
	}
	d := Data{OrderID: orderID, CustomerID: req.CustomerID, Items: req.Items,
		AmountCents: int64(req.Amount.Value), Currency: req.Amount.Currency, ShippingAddress: req.ShippingAddress, Inject: req.Inject}
	data, err := json.Marshal(d)
	if err != nil {
		return Placed{}, fmt.Errorf("encode saga data of order %s: %w", orderID, err)
	}
	// The saga's rows, its first command and the OrderPlaced event reach
	// PostgreSQL in one round trip.
	var b pgx.Batch
	if _, err := s.engine.StartBatch(ctx, &b, SagaType, sagaID, data); err != nil {
		return Placed{}, fmt.Errorf("start saga of order %s: %w", orderID, err)
	}
	if err := s.queueEvent(&b, EventPlaced, d, sagaID, ""); err != nil {
		return Placed{}, err
	}
	if err := saga.SendBatch(ctx, tx, &b); err != nil {
		return Placed{}, fmt.Errorf("start saga of order %s: %w", orderID, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Placed{}, fmt.Errorf("commit order %s: %w", orderID, err)
	}
	return Placed{OrderID: orderID, SagaID: sagaID, Status: Pending}, nil
}

// Event types published to the order events topic.
const (
	EventPlaced    = "OrderPlaced"
	EventConfirmed = "OrderConfirmed"
	EventCancelled = "OrderCancelled"
)

// EventVersion is the schema version of the order events this build
// writes; DecodeEvent reads it and the one before it.
const EventVersion = 2

// Event is the payload of an order event.
type Event struct {
	Type    string    `json:"type"`
	OrderID uuid.UUID `json:"order_id"`
	SagaID  uuid.UUID `json:"saga_id"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
	// The customer and the amount (version 2), so that a consumer needs no
	// lookup; empty in an event upcast from version 1, where they are
	// unknown.
	CustomerID  string `json:"customer_id,omitempty"`
	AmountCents *int64 `json:"amount_cents,omitempty"`
	Currency    string `json:"currency,omitempty"`
}

// DecodeEvent decodes the payload of an order event of schema version v
// (EventVersion or the one before it, which it upcasts). Its errors say
// why the event cannot be read: a consumer dead-letters it.
func DecodeEvent(v int, payload []byte) (Event, error) {
	var ev Event
	if v < EventVersion-1 || v > EventVersion {
		return ev, fmt.Errorf("order event of schema version %d: this build reads versions %d and %d", v, EventVersion-1, EventVersion)
	}
	if err := json.Unmarshal(payload, &ev); err != nil {
		return ev, fmt.Errorf("decode order event: %w", err)
	}
	if ev.Type == "" || ev.OrderID == uuid.Nil || ev.SagaID == uuid.Nil {
		return ev, fmt.Errorf("order event lacks type, order_id or saga_id")
	}
	upcastEvent(v, &ev)
	return ev, nil
}

// upcastEvent lifts an event of version v to EventVersion. Version 1 has
// no customer or amount: they stay unknown (a field of a newer version in
// an older event is not trusted).
func upcastEvent(v int, ev *Event) {
	if v < 2 {
		ev.CustomerID, ev.AmountCents, ev.Currency = "", nil, ""
	}
}

func (s *Service) eventMessage(typ string, d Data, sagaID uuid.UUID, reason string) (outbox.Message, error) {
	amount := d.AmountCents
	payload, err := json.Marshal(Event{Type: typ, OrderID: d.OrderID, SagaID: sagaID, Reason: reason, At: time.Now().UTC(),
		CustomerID: d.CustomerID, AmountCents: &amount, Currency: d.Currency})
	if err != nil {
		return outbox.Message{}, fmt.Errorf("encode %s of order %s: %w", typ, d.OrderID, err)
	}
	return outbox.Message{Topic: s.topics.orderEvents, Key: sagaID.String(), Payload: payload,
		Type: typ, SchemaVersion: EventVersion, CorrelationID: sagaID.String()}, nil
}

// queueEvent queues an order event on b.
func (s *Service) queueEvent(b *pgx.Batch, typ string, d Data, sagaID uuid.UUID, reason string) error {
	m, err := s.eventMessage(typ, d, sagaID, reason)
	if err != nil {
		return err
	}
	return s.outbox.Queue(b, m)
}
