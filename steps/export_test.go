package steps

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
)

// NewHalfwayRefuser returns an inventory participant whose action takes
// every unit of SKU A and then refuses, as an effect that finds a refusal
// halfway would: the tests use it to show the partial effect is undone.
func NewHalfwayRefuser(cfg Config) (*Participant, error) {
	return newParticipant(order.StepInventory, cfg.Topics.InventoryCommands, order.TypeReserve, order.TypeRelease, halfwayRefuser{}, cfg)
}

type halfwayRefuser struct{ inventory }

func (halfwayRefuser) apply(ctx context.Context, tx pgx.Tx, _ uuid.UUID, _ *order.Data) (string, error) {
	if _, err := tx.Exec(ctx, `UPDATE inventory.stock SET available = 0 WHERE sku = 'A'`); err != nil {
		return "", err
	}
	return "refused halfway", nil
}
