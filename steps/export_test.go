package steps

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
)

// NewHalfwayRefuser returns an inventory participant whose action takes
// every unit of SKU A (queues the write) and then refuses, as an effect
// that finds a refusal halfway would: the tests use it to show the partial
// effect is dropped.
func NewHalfwayRefuser(cfg Config) (*Participant, error) {
	return newParticipant(order.StepInventory, cfg.Topics.InventoryCommands, order.TypeReserve, order.TypeRelease, halfwayRefuser{}, cfg)
}

type halfwayRefuser struct{ inventory }

func (halfwayRefuser) apply(_ context.Context, _ pgx.Tx, b *pgx.Batch, ids []uuid.UUID, _ []*order.Data) ([]string, error) {
	b.Queue(`UPDATE inventory.stock SET available = 0 WHERE sku = 'A'`)
	refusals := make([]string, len(ids))
	for i := range refusals {
		refusals[i] = "refused halfway"
	}
	return refusals, nil
}

// applyPre is the halfway refuser's apply on the batch path too.
func (h halfwayRefuser) applyPre(ctx context.Context, tx pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data, _ any) ([]string, error) {
	return h.apply(ctx, tx, b, ids, ds)
}
