package outbox

import (
	"context"
	"maps"
	"slices"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/telemetry"
)

// Traced returns m carrying the trace context of ctx in its headers, when
// tracing is on: for messages queued on a batch (Queue), which has no ctx.
func Traced(ctx context.Context, m Message) Message {
	if !telemetry.Enabled() || !trace.SpanContextFromContext(ctx).IsValid() {
		return m
	}
	h := make(map[string]string, len(m.Headers)+3)
	maps.Copy(h, m.Headers)
	telemetry.Inject(ctx, h)
	m.Headers = h
	return m
}

// traceSends starts a producer span per message when tracing is on (nil
// otherwise): the child of the trace context its row carries, whose own
// context replaces the row's in the message's Kafka headers. A row sent
// again gets a new span each try.
func traceSends(batch []row, msgs []*sarama.ProducerMessage) []trace.Span {
	if !telemetry.Enabled() {
		return nil
	}
	spans := make([]trace.Span, len(msgs))
	fields := telemetry.Fields()
	for j, m := range msgs {
		rw := &batch[m.Metadata.(int)]
		headers := maps.Clone(rw.headers)
		if headers == nil {
			headers = map[string]string{}
		}
		spans[j] = telemetry.StartSend(headers, telemetry.Message{Topic: rw.topic, Key: rw.key, ID: rw.id.String(),
			SagaID: rw.headers[HeaderCorrelationID], Partition: -1, Offset: -1})
		m.Headers = slices.DeleteFunc(m.Headers, func(h sarama.RecordHeader) bool { return slices.Contains(fields, string(h.Key)) })
		for _, f := range fields {
			if v, ok := headers[f]; ok {
				m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(f), Value: []byte(v)})
			}
		}
	}
	return spans
}

// endSends ends the producer spans of traceSends; failed holds the errors
// of the rows that failed, by row index.
func endSends(spans []trace.Span, msgs []*sarama.ProducerMessage, failed map[int]error, all error) {
	for j, span := range spans {
		m := msgs[j]
		err := all
		if failed != nil {
			err = failed[m.Metadata.(int)]
		}
		telemetry.Sent(span, m.Partition, m.Offset, err)
	}
}
