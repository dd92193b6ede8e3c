package steps

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
)

// DefaultBlockedCountries are the countries not shipped to unless Config
// says otherwise: "XX", the demo's undeliverable country.
var DefaultBlockedCountries = []string{"XX"}

// NewShipping returns the shipping participant: its action
// (order.TypeShip) records a shipment to the order's address, refusing with
// "address not deliverable: …" when the address has no country or its
// country is blocked; its compensation (order.TypeCancel) cancels the
// shipment.
func NewShipping(cfg Config) (*Participant, error) {
	list := cfg.BlockedCountries
	if list == nil {
		list = DefaultBlockedCountries
	}
	blocked := make(map[string]bool, len(list))
	for _, c := range list {
		blocked[normCountry(c)] = true
	}
	return newParticipant(order.StepShipping, cfg.Topics.ShippingCommands, order.TypeShip, order.TypeCancel, shipping{blocked: blocked}, cfg)
}

type shipping struct {
	blocked map[string]bool
}

func normCountry(c string) string { return strings.ToUpper(strings.TrimSpace(c)) }

// validate accepts any address: one that cannot be delivered to is a
// business refusal, not a bad message.
func (shipping) validate(*order.Data) error { return nil }

func (s shipping) apply(ctx context.Context, tx pgx.Tx, sagaID uuid.UUID, d *order.Data) (string, error) {
	country := normCountry(d.ShippingAddress.Country)
	if country == "" {
		return "address not deliverable: no country", nil
	}
	if s.blocked[country] {
		return fmt.Sprintf("address not deliverable: country %s is not served", country), nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO shipping.shipments (saga_id, address) VALUES ($1, $2)`, sagaID, d.ShippingAddress); err != nil {
		return "", fmt.Errorf("record shipment: %w", err)
	}
	return "", nil
}

func (shipping) undo(ctx context.Context, tx pgx.Tx, sagaID uuid.UUID) error {
	if _, err := tx.Exec(ctx, `UPDATE shipping.shipments SET cancelled_at = now() WHERE saga_id = $1 AND cancelled_at IS NULL`, sagaID); err != nil {
		return fmt.Errorf("cancel shipment: %w", err)
	}
	return nil
}
