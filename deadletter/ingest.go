package deadletter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagaflow/sagaflow/kafkax"
)

// DefaultRetention is how long dead letters are kept by default.
const DefaultRetention = 30 * 24 * time.Hour

// IngesterConfig says what to ingest and where from.
type IngesterConfig struct {
	Kafka kafkax.Config
	// Topics are the dead-letter topics (kafkax.Topics.DeadLetterTopics).
	Topics []string
	// Group is the ingester's consumer group.
	Group string
	Store *Store
	// Retention: dead letters older than this are purged hourly (default
	// DefaultRetention; negative keeps them for ever).
	Retention time.Duration
	Logger    *slog.Logger
}

// Ingester records every message of the dead-letter topics in the store.
type Ingester struct {
	cfg     IngesterConfig
	running chan struct{}
}

// NewIngester returns an ingester; Run runs it.
func NewIngester(cfg IngesterConfig) *Ingester {
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Ingester{cfg: cfg, running: make(chan struct{})}
}

// Running is closed once the ingester consumes.
func (in *Ingester) Running() <-chan struct{} { return in.running }

// Run consumes the dead-letter topics until ctx ends. A dead letter that
// cannot be recorded (the database is down) is not acknowledged: Kafka
// gives it again.
func (in *Ingester) Run(ctx context.Context) error {
	log := in.cfg.Logger.With("component", "dead letters")
	wlog := kafkax.Logger(log)
	sub, err := in.cfg.Kafka.NewSubscriber(in.cfg.Group, wlog)
	if err != nil {
		return err
	}
	defer sub.Close() //nolint:errcheck // closing after the router stopped
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return fmt.Errorf("create dead-letter router: %w", err)
	}
	for _, topic := range in.cfg.Topics {
		router.AddConsumerHandler("dead letters "+topic, topic, sub, func(msg *message.Message) error {
			partition, _ := kafka.MessagePartitionFromCtx(msg.Context())
			offset, _ := kafka.MessagePartitionOffsetFromCtx(msg.Context())
			d := FromMessage(topic, partition, offset, msg)
			recorded, err := in.cfg.Store.Record(msg.Context(), d)
			if err != nil {
				log.Warn("record dead letter; Kafka gives it again", "err", err)
				return err
			}
			if recorded {
				log.Info("dead letter recorded", "consumer_group", d.ConsumerGroup, "type", d.Type,
					"origin", d.OriginTopic, "error", d.Error)
			}
			return nil
		})
	}
	go func() {
		select {
		case <-router.Running():
			close(in.running)
		case <-ctx.Done():
		}
	}()
	if in.cfg.Retention > 0 {
		go in.purge(ctx, log)
	}
	if err := router.Run(ctx); err != nil {
		return fmt.Errorf("dead-letter ingester: %w", err)
	}
	return nil
}

// purge applies the retention window hourly until ctx ends.
func (in *Ingester) purge(ctx context.Context, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := in.cfg.Store.PurgeOlder(ctx, in.cfg.Retention); err != nil {
			if ctx.Err() == nil {
				log.Warn("purge old dead letters", "err", err)
			}
		} else if n > 0 {
			log.Info("old dead letters purged", "rows", n, "retention", in.cfg.Retention)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
