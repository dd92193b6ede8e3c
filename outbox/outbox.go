// Package outbox gives Sagaflow exactly-once effects over at-least-once
// Kafka delivery.
//
// A service writes the messages its business change causes into its own
// outbox table inside the same PostgreSQL transaction (Outbox.Write), so a
// message exists exactly when the change commits. The Relay publishes
// committed rows to Kafka in order per key and deletes them; a crash between
// the two publishes them again, which is harmless because every consumer runs
// behind an Inbox: the inbox row that records (consumer, message id) commits
// in the same transaction as the handler's effect, so a redelivered message
// is acknowledged and skipped. Retention purges old inbox rows in small
// batches.
package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/telemetry"
)

// Header names carried by every message (as Kafka headers, and as watermill
// metadata on the consumer side).
const (
	HeaderType          = "type"
	HeaderSchemaVersion = "schema_version"
	HeaderCorrelationID = "correlation_id"
	HeaderCausationID   = "causation_id"
)

// Message is one message to publish.
type Message struct {
	// ID identifies the message end to end: it becomes the watermill message
	// UUID, by which consumers deduplicate. Zero means a new UUIDv7.
	ID uuid.UUID
	// Topic and Key say where it goes; messages of one key are published in
	// the order they were written.
	Topic string
	Key   string
	// Payload is the body (JSON in Sagaflow).
	Payload []byte
	// Type names the payload's schema (for example "inventory.reserve") and
	// SchemaVersion its version.
	Type          string
	SchemaVersion int
	// CorrelationID ties the messages of one business flow (the saga id);
	// CausationID is the id of the message that caused this one.
	CorrelationID string
	CausationID   string
	// Headers are extra headers. With tracing on, Write adds the trace
	// context of its ctx (traceparent …) unless they carry one.
	Headers map[string]string
}

// Outbox is the outbox table of one service schema.
type Outbox struct {
	q queries
}

// New returns the outbox of the given schema (for example "inventory").
func New(schema string) *Outbox {
	return &Outbox{q: newQueries(schema)}
}

// Schema is the schema whose outbox this is.
func (o *Outbox) Schema() string { return o.q.schema }

// Write stores messages in the outbox inside tx. They are published after tx
// commits, and never if it rolls back. It fills in zero IDs.
func (o *Outbox) Write(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	sql, args, err := o.insertArgs(ctx, msgs)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("write %d message(s) to %s outbox: %w", len(msgs), o.q.schema, err)
	}
	wake(o.q.schema)
	return nil
}

// Queue adds the insert of msgs to b, for a caller that sends a
// transaction's writes in one round trip (tx.SendBatch); an error from the
// insert surfaces when the batch is read. It fills in zero IDs. Having no
// ctx, it adds no trace context: a traced caller puts it in Headers
// (telemetry.Inject).
func (o *Outbox) Queue(b *pgx.Batch, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	sql, args, err := o.insertArgs(context.Background(), msgs)
	if err != nil {
		return err
	}
	b.Queue(sql, args...)
	wake(o.q.schema)
	return nil
}

// insertArgs checks msgs, fills in their ids and returns the statement that
// inserts them with its arguments.
func (o *Outbox) insertArgs(ctx context.Context, msgs []Message) (string, []any, error) {
	traced := telemetry.Enabled() && trace.SpanContextFromContext(ctx).IsValid()
	ids := make([]uuid.UUID, len(msgs))
	topics := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	encoded := make([][]byte, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if m.Topic == "" {
			return "", nil, errors.New("write outbox message: empty topic")
		}
		for k := range m.Headers {
			if reservedHeader(k) {
				return "", nil, fmt.Errorf("write outbox message to %s: header %q is the relay's own (message id or key) and cannot be set", m.Topic, k)
			}
		}
		if m.ID == uuid.Nil {
			id, err := uuid.NewV7()
			if err != nil {
				return "", nil, fmt.Errorf("write outbox message: new id: %w", err)
			}
			m.ID = id
		}
		headers := m.headers()
		if traced && headers[telemetry.TraceParent] == "" {
			telemetry.Inject(ctx, headers)
		}
		h, err := json.Marshal(headers)
		if err != nil {
			return "", nil, fmt.Errorf("write outbox message %s: encode headers: %w", m.ID, err)
		}
		ids[i], topics[i], keys[i], payloads[i], encoded[i] = m.ID, m.Topic, m.Key, m.Payload, h
	}
	if len(msgs) == 1 {
		return o.q.insertOne, []any{ids[0], topics[0], keys[0], payloads[0], encoded[0], o.q.schema + ":"}, nil
	}
	return o.q.insert, []any{ids, topics, keys, payloads, encoded, o.q.schema + ":"}, nil
}

// reservedHeader reports whether name is a header the relay writes itself:
// the watermill message id, by which inboxes dedupe, and the key. Kafka
// header names are case-sensitive, but a look-alike would only confuse.
func reservedHeader(name string) bool {
	return strings.EqualFold(name, kafka.UUIDHeaderKey) || strings.EqualFold(name, kafkax.KeyMetadata)
}

func (m *Message) headers() map[string]string {
	h := make(map[string]string, len(m.Headers)+4)
	for k, v := range m.Headers {
		h[k] = v
	}
	if m.Type != "" {
		h[HeaderType] = m.Type
	}
	if m.SchemaVersion != 0 {
		h[HeaderSchemaVersion] = strconv.Itoa(m.SchemaVersion)
	}
	if m.CorrelationID != "" {
		h[HeaderCorrelationID] = m.CorrelationID
	}
	if m.CausationID != "" {
		h[HeaderCausationID] = m.CausationID
	}
	return h
}
