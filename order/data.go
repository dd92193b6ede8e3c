// Package order is Sagaflow's reference workflow: the order saga's data,
// its definition (inventory → payment → shipping), order placement and
// status, and the order events published when a saga ends.
package order

import (
	"github.com/google/uuid"
)

// Item is one line of an order.
type Item struct {
	SKU      string `json:"sku"`
	Quantity int    `json:"quantity"`
}

// Address is where an order ships.
type Address struct {
	Name       string `json:"name"`
	Line1      string `json:"line1"`
	Line2      string `json:"line2,omitempty"`
	City       string `json:"city"`
	PostalCode string `json:"postal_code"`
	Country    string `json:"country"`
}

// Data is the order saga's data, carried in every command of the saga.
type Data struct {
	OrderID    uuid.UUID `json:"order_id"`
	CustomerID string    `json:"customer_id"`
	Items      []Item    `json:"items"`
	// AmountCents is the amount in minor units of Currency: cents of EUR,
	// yen of JPY, fils of KWD (see Amount). The name, here, in the saga's
	// JSON and in the database, is older than currencies of other scales.
	AmountCents     int64   `json:"amount_cents"`
	Currency        string  `json:"currency"`
	ShippingAddress Address `json:"shipping_address"`
	// Inject asks participants to misbehave, by participant name
	// ("inventory", "payment", "shipping"), with a mode such as "refuse",
	// "error", "delay=2s", "drop", "crash-before-commit" or
	// "crash-after-commit". Participants honour it only when fault
	// injection was switched on explicitly (tests, `sagaflow dev`,
	// `serve --allow-fault-injection`).
	Inject map[string]string `json:"inject,omitempty"`
}

// Step names of the order saga, which are also the participants' names.
const (
	StepInventory = "inventory"
	StepPayment   = "payment"
	StepShipping  = "shipping"
)

// Message types of the order saga's commands.
const (
	TypeReserve = "inventory.reserve"
	TypeRelease = "inventory.release"
	TypeCharge  = "payment.charge"
	TypeRefund  = "payment.refund"
	TypeShip    = "shipping.ship"
	TypeCancel  = "shipping.cancel"
)
