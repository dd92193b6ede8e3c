package order

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/saga"
)

// SagaType names the order saga.
const SagaType = "order"

// SagaConfig tunes the order saga's timing.
type SagaConfig struct {
	Topics kafkax.Topics
	// StepTimeout is how long a step's first attempt waits for its reply
	// (default 5 s); later attempts wait longer (×2, at most 30 s).
	StepTimeout time.Duration
	// Attempts per action before the step fails (default 3), and per
	// compensation before the saga is stuck (default 10).
	Attempts             int
	CompensationAttempts int
	// Deadline of a whole saga (default 5 minutes).
	Deadline time.Duration
}

// NewDefinition returns the order saga: reserve stock, charge the payment,
// ship; on failure release, refund and cancel the shipment, newest first.
// Shipping has a compensation too, so a shipment that was requested but not
// answered in time is cancelled (or refused when it arrives late).
func (s *Service) NewDefinition(cfg SagaConfig) *saga.Definition {
	retry := saga.RetryPolicy{MaxAttempts: cfg.Attempts, Timeout: cfg.StepTimeout, Multiplier: 2, MaxTimeout: 30 * time.Second, Jitter: 0.2}
	comp := saga.RetryPolicy{MaxAttempts: cfg.CompensationAttempts, Timeout: cfg.StepTimeout, Multiplier: 2, MaxTimeout: 30 * time.Second, Jitter: 0.2}
	return &saga.Definition{
		Type:    SagaType,
		ReplyTo: cfg.Topics.SagaReplies,
		Steps: []saga.Step{
			{Name: StepInventory, Topic: cfg.Topics.InventoryCommands, ActionType: TypeReserve, CompensationType: TypeRelease, Retry: retry, CompensationRetry: comp},
			{Name: StepPayment, Topic: cfg.Topics.PaymentCommands, ActionType: TypeCharge, CompensationType: TypeRefund, Retry: retry, CompensationRetry: comp},
			{Name: StepShipping, Topic: cfg.Topics.ShippingCommands, ActionType: TypeShip, CompensationType: TypeCancel, Retry: retry, CompensationRetry: comp},
		},
		Deadline:    cfg.Deadline,
		OnCompleted: s.onCompleted,
		OnCancelled: s.onCancelled,
	}
}

func (s *Service) onCompleted(b *pgx.Batch, in *saga.Instance) error {
	return s.settle(b, in, Confirmed, EventConfirmed, "")
}

func (s *Service) onCancelled(b *pgx.Batch, in *saga.Instance) error {
	return s.settle(b, in, Cancelled, EventCancelled, in.Reason)
}

// settle queues the saga's outcome on its order and the order event.
func (s *Service) settle(b *pgx.Batch, in *saga.Instance, status Status, event, reason string) error {
	var d Data
	if err := json.Unmarshal(in.Data, &d); err != nil {
		return fmt.Errorf("decode order of saga %s: %w", in.ID, err)
	}
	b.Queue(sqlSettleOrder, d.OrderID, string(status), reason)
	return s.queueEvent(b, event, d, in.ID, reason)
}
