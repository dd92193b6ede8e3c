package steps

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
)

// DefaultChargeLimitCents is the amount above which a charge is declined
// unless Config says otherwise, in minor units of the order's currency:
// 5000.00 EUR, 500000 JPY, 500.000 KWD.
const DefaultChargeLimitCents = 500000

// BlockedCustomerPrefix starts the ids of customers whose card is always
// declined (for demos and tests).
const BlockedCustomerPrefix = "blocked-"

// NewPayment returns the payment participant: its action (order.TypeCharge)
// charges the order's amount once per saga, declining it with "card
// declined: …" when the amount exceeds the customer's limit or the customer
// is blocked; its compensation (order.TypeRefund) refunds the charge.
func NewPayment(cfg Config) (*Participant, error) {
	if cfg.ChargeLimitCents < 0 {
		return nil, fmt.Errorf("payment participant: negative charge limit %d", cfg.ChargeLimitCents)
	}
	limit := cfg.ChargeLimitCents
	if limit == 0 {
		limit = DefaultChargeLimitCents
	}
	limits := make(map[string]int64, len(cfg.CustomerLimits))
	for c, l := range cfg.CustomerLimits {
		if l < 0 {
			return nil, fmt.Errorf("payment participant: negative charge limit %d for customer %s", l, c)
		}
		limits[c] = l
	}
	return newParticipant(order.StepPayment, cfg.Topics.PaymentCommands, order.TypeCharge, order.TypeRefund, payment{limit: limit, limits: limits}, cfg)
}

type payment struct {
	limit  int64
	limits map[string]int64
}

func (payment) validate(d *order.Data) error {
	if strings.TrimSpace(d.CustomerID) == "" {
		return errors.New("empty customer_id")
	}
	if d.AmountCents <= 0 {
		return fmt.Errorf("amount_cents %d, want more than 0", d.AmountCents)
	}
	if strings.TrimSpace(d.Currency) == "" {
		return errors.New("empty currency")
	}
	return nil
}

// money writes minor units of a currency with its scale: "19.99 EUR",
// "1000 JPY", "1.234 KWD".
func money(minor int64, currency string) string {
	return order.Amount{Value: order.Money(minor), Currency: currency}.String()
}

func (p payment) apply(_ context.Context, _ pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data) ([]string, error) {
	refusals := make([]string, len(ds))
	for i, d := range ds {
		refusals[i] = p.one(b, ids[i], d)
	}
	return refusals, nil
}

// one decides one action and queues its write.
func (p payment) one(b *pgx.Batch, sagaID uuid.UUID, d *order.Data) string {
	if strings.HasPrefix(d.CustomerID, BlockedCustomerPrefix) {
		return fmt.Sprintf("card declined: customer %s is blocked", d.CustomerID)
	}
	limit, ok := p.limits[d.CustomerID]
	if !ok {
		limit = p.limit
	}
	if d.AmountCents > limit {
		return fmt.Sprintf("card declined: %s exceeds the limit of %s", money(d.AmountCents, d.Currency), money(limit, d.Currency))
	}
	b.Queue(`INSERT INTO payment.charges (saga_id, customer_id, amount_cents, currency) VALUES ($1, $2, $3, $4)`,
		sagaID, d.CustomerID, d.AmountCents, d.Currency)
	return ""
}

func (payment) undo(_ context.Context, _ pgx.Tx, b *pgx.Batch, sagaID uuid.UUID) error {
	b.Queue(`UPDATE payment.charges SET refunded_at = now() WHERE saga_id = $1 AND refunded_at IS NULL`, sagaID)
	return nil
}
