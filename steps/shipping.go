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

func (s shipping) apply(_ context.Context, _ pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data) ([]string, error) {
	refusals := make([]string, len(ds))
	for i, d := range ds {
		refusals[i] = s.one(b, ids[i], d)
	}
	return refusals, nil
}

// one decides one action and queues its write.
func (s shipping) one(b *pgx.Batch, sagaID uuid.UUID, d *order.Data) string {
	country := normCountry(d.ShippingAddress.Country)
	if country == "" {
		return "address not deliverable: no country"
	}
	if s.blocked[country] {
		return fmt.Sprintf("address not deliverable: country %s is not served", country)
	}
	b.Queue(`INSERT INTO shipping.shipments (saga_id, address) VALUES ($1, $2)`, sagaID, d.ShippingAddress)
	return ""
}

func (shipping) undo(_ context.Context, _ pgx.Tx, b *pgx.Batch, sagaID uuid.UUID) error {
	b.Queue(`UPDATE shipping.shipments SET cancelled_at = now() WHERE saga_id = $1 AND cancelled_at IS NULL`, sagaID)
	return nil
}
