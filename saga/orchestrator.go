package saga

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagaflow/sagaflow/outbox"
)

type engineMetrics struct {
	started, completed, cancelled, compensating, stale, timeouts, stuck, compensationRefused atomic.Int64
}

// Metrics is a snapshot of an engine's counters since the process started.
type Metrics struct {
	Started, Completed, Cancelled, Compensating, StaleReplies, Timeouts, Stuck int64
}

// Metrics returns the engine's counters.
func (e *Engine) Metrics() Metrics {
	m := &e.metrics
	return Metrics{
		Started: m.started.Load(), Completed: m.completed.Load(), Cancelled: m.cancelled.Load(),
		Compensating: m.compensating.Load(), StaleReplies: m.stale.Load(), Timeouts: m.timeouts.Load(), Stuck: m.stuck.Load(),
	}
}

// OrchestratorConfig wires an engine to Kafka.
type OrchestratorConfig struct {
	// Group is the consumer group of the replies topic, and the inbox's
	// consumer name.
	Group string
	// RepliesTopic is where participants reply.
	RepliesTopic string
	Subscriber   message.Subscriber
	// DeadLetter receives replies that cannot be handled (DeadLetterTopic,
	// default Group + ".dlq").
	DeadLetter      message.Publisher
	DeadLetterTopic string
	// SweepInterval is how often overdue sagas are looked for (default
	// 250 ms); SweepBatch the most handled per transaction (default 100).
	SweepInterval time.Duration
	SweepBatch    int
	Logger        *slog.Logger
}

// Register adds the reply consumer to router: the inbox (saga schema) dedupes
// replies and owns the transaction in which HandleReply moves the saga.
func (e *Engine) Register(router *message.Router, cfg OrchestratorConfig) error {
	return outbox.AddConsumer(router, outbox.ConsumerConfig{
		Name:            cfg.Group,
		Topic:           cfg.RepliesTopic,
		Subscriber:      cfg.Subscriber,
		Inbox:           outbox.NewInbox(e.pool, "saga", cfg.Group),
		Handler:         e.HandleReply,
		DeadLetter:      cfg.DeadLetter,
		DeadLetterTopic: cfg.DeadLetterTopic,
		Logger:          cfg.Logger,
	})
}

// RunSweeper resends overdue commands and fails overdue steps until ctx
// ends. Any number of sweepers may run against one database.
func (e *Engine) RunSweeper(ctx context.Context, interval time.Duration, batch int) error {
	if interval <= 0 {
		interval = 250 * time.Millisecond
	}
	if batch <= 0 {
		batch = 100
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for {
			n, err := e.SweepOnce(ctx, batch)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				e.log.Warn("deadline sweep failed; will retry", "err", err)
				break
			}
			if n < batch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
