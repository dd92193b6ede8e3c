package order

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/saga"
)

// Status is an order's status, which follows its saga.
type Status string

// The statuses of an order.
const (
	// Pending: the saga is running.
	Pending Status = "pending"
	// Confirmed: the saga completed (stock reserved, paid, shipped).
	Confirmed Status = "confirmed"
	// Cancelled: the saga compensated or failed; Reason says why.
	Cancelled Status = "cancelled"
)

const (
	sqlInsertOrder = `INSERT INTO orders.orders (id, saga_id, idempotency_key, request_hash, customer_id, items, amount_cents, currency, shipping_address, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending')
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id`

	sqlOrderByKey = `SELECT id, saga_id, status, request_hash FROM orders.orders WHERE idempotency_key = $1`

	// sqlSettleOrder fails (SQLSTATE P0002) unless the order was pending
	// (migration 011): no callback reads its result.
	sqlSettleOrder = `SELECT orders.settle($1, $2, $3)`

	sqlGetOrder = `SELECT id, saga_id, customer_id, items, amount_cents, currency, shipping_address, status, COALESCE(reason, ''), created_at, updated_at
FROM orders.orders WHERE id = $1`

	sqlOrderIDBySaga = `SELECT id FROM orders.orders WHERE saga_id = $1`

	// sqlFindSagas finds orders by any of their ids: order id, saga id
	// ($1, when a UUID), idempotency key or customer id ($2).
	sqlFindSagas = `SELECT saga_id FROM orders.orders
WHERE id = $1 OR saga_id = $1 OR idempotency_key = $2 OR customer_id = $2
ORDER BY created_at DESC LIMIT $3`
)

// Order is a placed order.
type Order struct {
	ID              uuid.UUID `json:"order_id"`
	SagaID          uuid.UUID `json:"saga_id"`
	CustomerID      string    `json:"customer_id"`
	Items           []Item    `json:"items"`
	Amount          Amount    `json:"amount"`
	ShippingAddress Address   `json:"shipping_address"`
	Status          Status    `json:"status"`
	Reason          string    `json:"reason,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// ErrNotFound is returned for an unknown order.
var ErrNotFound = errors.New("order not found")

// Get reads order id.
func Get(ctx context.Context, q saga.Querier, id uuid.UUID) (*Order, error) {
	var o Order
	var items, addr []byte
	var minor int64 // amount_cents: in minor units of the currency
	var status string
	err := q.QueryRow(ctx, sqlGetOrder, id).Scan(&o.ID, &o.SagaID, &o.CustomerID, &items, &minor, &o.Amount.Currency,
		&addr, &status, &o.Reason, &o.CreatedAt, &o.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("order %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read order %s: %w", id, err)
	}
	o.Amount.Value, o.Status = Money(minor), Status(status)
	if err := json.Unmarshal(items, &o.Items); err != nil {
		return nil, fmt.Errorf("decode items of order %s: %w", id, err)
	}
	if err := json.Unmarshal(addr, &o.ShippingAddress); err != nil {
		return nil, fmt.Errorf("decode address of order %s: %w", id, err)
	}
	return &o, nil
}

// OrderIDOfSaga returns the order a saga belongs to.
func OrderIDOfSaga(ctx context.Context, q saga.Querier, sagaID uuid.UUID) (uuid.UUID, error) {
	var id uuid.UUID
	err := q.QueryRow(ctx, sqlOrderIDBySaga, sagaID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, fmt.Errorf("order of saga %s: %w", sagaID, ErrNotFound)
	}
	if err != nil {
		return uuid.Nil, fmt.Errorf("read order of saga %s: %w", sagaID, err)
	}
	return id, nil
}

// FindSagas returns the sagas of up to limit orders, newest first, that
// text names: an order id, a saga id, an idempotency key or a customer id;
// and the saga whose id text is when it is a saga of another type. It is
// the operators' search by a bare id (console, GET /sagas?q=, the CLI).
func FindSagas(ctx context.Context, q saga.Querier, text string, limit int) ([]uuid.UUID, error) {
	var id *uuid.UUID
	if u, err := uuid.Parse(text); err == nil {
		id = &u
	}
	rows, err := q.Query(ctx, sqlFindSagas, id, text, limit)
	if err != nil {
		return nil, fmt.Errorf("find orders by %q: %w", text, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("find orders by %q: %w", text, err)
	}
	if id != nil && !slices.Contains(ids, *id) && len(ids) < limit {
		switch _, err := saga.Get(ctx, q, *id); {
		case err == nil:
			ids = append(ids, *id)
		case !errors.Is(err, saga.ErrNotFound):
			return nil, fmt.Errorf("find saga %s: %w", *id, err)
		}
	}
	return ids, nil
}
