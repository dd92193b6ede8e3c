package telemetry

import (
	"context"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Attribute keys of Sagaflow's spans, beside the messaging conventions'.
const (
	AttrSagaID      = attribute.Key("saga.id")
	AttrSagaType    = attribute.Key("saga.type")
	AttrSagaStep    = attribute.Key("saga.step")
	AttrSagaAttempt = attribute.Key("saga.attempt")
	AttrSagaOutcome = attribute.Key("saga.outcome")
	// AttrDuplicate marks a message an inbox had already applied.
	AttrDuplicate = attribute.Key("messaging.sagaflow.duplicate")
)

// Message is what a messaging span records of a Kafka message.
type Message struct {
	Topic string
	Key   string
	ID    string
	// SagaID is the conversation (the correlation id), when known.
	SagaID string
	// Group is the consumer group of a consumer span.
	Group string
	// Partition and Offset are known once sent, or when consumed;
	// negative is unknown.
	Partition int32
	Offset    int64
}

func (m Message) attributes() []attribute.KeyValue {
	attrs := make([]attribute.KeyValue, 0, 9)
	attrs = append(attrs, attribute.String("messaging.system", "kafka"),
		attribute.String("messaging.destination.name", m.Topic))
	if m.Key != "" {
		attrs = append(attrs, attribute.String("messaging.kafka.message.key", m.Key))
	}
	if m.ID != "" {
		attrs = append(attrs, attribute.String("messaging.message.id", m.ID))
	}
	if m.SagaID != "" {
		attrs = append(attrs, attribute.String("messaging.message.conversation_id", m.SagaID), AttrSagaID.String(m.SagaID))
	}
	if m.Group != "" {
		attrs = append(attrs, attribute.String("messaging.consumer.group.name", m.Group))
	}
	if m.Partition >= 0 {
		attrs = append(attrs, attribute.String("messaging.destination.partition.id", strconv.Itoa(int(m.Partition))))
	}
	if m.Offset >= 0 {
		attrs = append(attrs, attribute.Int64("messaging.kafka.offset", m.Offset))
	}
	return attrs
}

// StartSend starts the producer span of a message ("send {topic}") as the
// child of the trace context in headers (the row's: the transaction that
// wrote it), and writes the span's own context into headers in its place,
// so that the consumer's span is the producer's child.
func StartSend(headers map[string]string, m Message) trace.Span {
	if !Enabled() {
		return noopSpan
	}
	ctx := Extract(context.Background(), headers)
	ctx, span := Tracer().Start(ctx, "send "+m.Topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(m.attributes(), attribute.String("messaging.operation.type", "send"))...))
	for _, f := range Fields() {
		delete(headers, f)
	}
	propagator.Inject(ctx, propagation.MapCarrier(headers))
	return span
}

// noopSpan is what the Start functions return while tracing is off.
var noopSpan = trace.SpanFromContext(context.Background())

// Sent ends a producer span: where the message went, or why it failed.
func Sent(span trace.Span, partition int32, offset int64, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	} else {
		span.SetAttributes(attribute.String("messaging.destination.partition.id", strconv.Itoa(int(partition))),
			attribute.Int64("messaging.kafka.offset", offset))
	}
	span.End()
}

// StartProcess starts the consumer span of a message ("process {topic}")
// as the child of the producer's context its headers carry, linked to
// the consumer's own context ctx (when that has a span).
func StartProcess(ctx context.Context, headers map[string]string, m Message) (context.Context, trace.Span) {
	if !Enabled() {
		return ctx, noopSpan
	}
	parent := Extract(context.Background(), headers)
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(append(m.attributes(), attribute.String("messaging.operation.type", "process"))...)}
	if own := trace.SpanContextFromContext(ctx); own.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: own}))
	}
	pctx, span := Tracer().Start(parent, "process "+m.Topic, opts...)
	// The handler keeps ctx's deadline and values, under the new span and
	// with the baggage the message carried.
	ctx = baggage.ContextWithBaggage(ctx, baggage.FromContext(parent))
	return trace.ContextWithSpan(ctx, trace.SpanFromContext(pctx)), span
}

// Processed ends a consumer span: a duplicate the inbox absorbed, or the
// error that failed the message (errorType names its class, as
// error.type: "permanent" for one dead-lettered at once).
func Processed(span trace.Span, duplicate bool, err error, errorType string) {
	if !span.IsRecording() {
		return
	}
	if duplicate {
		span.SetAttributes(AttrDuplicate.Bool(true))
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(attribute.String("error.type", errorType))
	}
	span.End()
}

// StartServer starts the server span of an HTTP request, named by its
// route pattern ("POST /orders": no ids), the child of the caller's trace
// context when the request carries one.
func StartServer(ctx context.Context, header http.Header, pattern, method, path string) (context.Context, trace.Span) {
	if !Enabled() {
		return ctx, noopSpan
	}
	ctx = propagator.Extract(ctx, propagation.HeaderCarrier(header))
	name := pattern
	if name == "" {
		name = method
	}
	return Tracer().Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(
		attribute.String("http.request.method", method), attribute.String("url.path", path), attribute.String("http.route", pattern)))
}

// Served ends a server span with the response's status (5xx is an error).
func Served(span trace.Span, status int) {
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.Int("http.response.status_code", status))
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
		span.SetAttributes(attribute.String("error.type", strconv.Itoa(status)))
	}
	span.End()
}

// DeadLettered records that a message is sent to its dead-letter topic
// (m.Topic): a producer span, the child of the message's last consumer
// span (in ctx), with error.type the reason class. The span's context
// goes into headers, which the dead letter carries.
func DeadLettered(ctx context.Context, headers map[string]string, m Message, err error, reason string) {
	if !Enabled() {
		return
	}
	_, span := Tracer().Start(ctx, "send "+m.Topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(m.attributes(), attribute.String("messaging.operation.type", "send"),
			attribute.Bool("messaging.sagaflow.dead_letter", true))...))
	for _, f := range Fields() {
		delete(headers, f)
	}
	propagator.Inject(trace.ContextWithSpan(context.Background(), span), propagation.MapCarrier(headers))
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(attribute.String("error.type", reason))
	span.End()
}
