package outbox

import (
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/telemetry"
)

// Headers a dead letter carries besides the original message's own and
// watermill's (middleware.ReasonForPoisonedKey, PoisonedTopicKey, …): where
// the message came from and how it failed, so that it can be found,
// inspected and replayed to its origin (package deadletter records them).
const (
	HeaderDeadPartition = "dlq_origin_partition"
	HeaderDeadOffset    = "dlq_origin_offset"
	HeaderDeadGroup     = "dlq_consumer_group"
	HeaderDeadAttempts  = "dlq_attempts"
	HeaderDeadAt        = "dlq_at"
	// HeaderReplayedFrom names the dead letter a replayed message came
	// from (set by package deadletter).
	HeaderReplayedFrom = "replayed_from_dead_letter"
)

// countAttempts is the innermost middleware: it counts the handler's runs
// for a message in this delivery (the retries included).
func countAttempts(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		n, _ := strconv.Atoi(msg.Metadata.Get(HeaderDeadAttempts))
		msg.Metadata.Set(HeaderDeadAttempts, strconv.Itoa(n+1))
		return h(msg)
	}
}

// stampOrigin runs just inside the dead-letter middleware: when the handler
// gave up on a message, it records in the message's metadata (which the
// dead-letter middleware publishes as headers) its origin partition, offset
// and key, the consumer group and the time, so that the dead letter keeps
// them.
//
// With tracing on it records the dead-lettering as a producer span to the
// dead-letter topic, the child of the message's last consumer span, whose
// context the dead letter carries: a replay continues the saga's trace.
func stampOrigin(group, dlqTopic string) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil || IsTransient(err) {
				return out, err
			}
			ctx := msg.Context()
			if p, ok := kafka.MessagePartitionFromCtx(ctx); ok {
				msg.Metadata.Set(HeaderDeadPartition, strconv.Itoa(int(p)))
			}
			if o, ok := kafka.MessagePartitionOffsetFromCtx(ctx); ok {
				msg.Metadata.Set(HeaderDeadOffset, strconv.FormatInt(o, 10))
			}
			if msg.Metadata.Get(kafkax.KeyMetadata) == "" {
				// A message from another producer: keep its Kafka key,
				// which also keys the dead letter like the original.
				if k, ok := kafka.MessageKeyFromCtx(ctx); ok {
					msg.Metadata.Set(kafkax.KeyMetadata, string(k))
				}
			}
			msg.Metadata.Set(HeaderDeadGroup, group)
			msg.Metadata.Set(HeaderDeadAt, time.Now().UTC().Format(time.RFC3339Nano))
			if telemetry.Enabled() {
				telemetry.DeadLettered(msg.Context(), msg.Metadata, telemetry.Message{Topic: dlqTopic, Key: msg.Metadata.Get(kafkax.KeyMetadata),
					ID: msg.UUID, SagaID: msg.Metadata.Get(HeaderCorrelationID), Group: group, Partition: -1, Offset: -1},
					err, deadLetterReason(err))
			}
			return out, err
		}
	}
}
