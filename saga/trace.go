package saga

import (
	"context"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/telemetry"
)

// outcomes are the history events that end a saga (or stop it, stuck),
// recorded on the span as saga.outcome.
var outcomes = map[string]bool{EventCompleted: true, EventCompensated: true, EventFailed: true, EventStuck: true}

// traceEvent records a history entry as an event of the span of ctx (the
// consumer span of the reply that caused it, the saga's root span or a
// sweep's span): every step transition, stale reply, timeout, resend,
// compensation and operator action is in the saga's trace.
func traceEvent(ctx context.Context, id uuid.UUID, step string, kind Kind, attempt int, event, reason string) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{telemetry.AttrSagaID.String(id.String())}
	if step != "" {
		attrs = append(attrs, telemetry.AttrSagaStep.String(step))
	}
	if kind != "" {
		attrs = append(attrs, attribute.String("saga.kind", string(kind)), telemetry.AttrSagaAttempt.Int(attempt))
	}
	if reason != "" {
		attrs = append(attrs, attribute.String("saga.reason", reason))
	}
	span.AddEvent(event, trace.WithAttributes(attrs...))
	span.SetAttributes(telemetry.AttrSagaID.String(id.String()))
	if outcomes[event] {
		span.SetAttributes(telemetry.AttrSagaOutcome.String(event))
	}
}

// traceReply marks the span of ctx (a reply's consumer span) with the
// step, kind and attempt the reply answers: the message's, not those of
// the command the answer causes, which are the events'.
func traceReply(ctx context.Context, r Reply) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(telemetry.AttrSagaStep.String(r.Step), attribute.String("saga.kind", string(r.Kind)),
		telemetry.AttrSagaAttempt.Int(r.Attempt))
	if r.Participant != "" {
		span.SetAttributes(attribute.String("saga.participant", r.Participant))
	}
}

// sweepSpan starts the span of the sweeper's handling of one overdue saga,
// the child of the saga's root span, and makes it w's; the returned func
// ends it.
func sweepSpan(w *writes, o overdue) (end func()) {
	if !telemetry.Enabled() || o.traceParent == nil {
		return func() {}
	}
	ctx := telemetry.Extract(context.Background(), map[string]string{telemetry.TraceParent: *o.traceParent})
	ctx, span := telemetry.Tracer().Start(ctx, "saga step overdue", trace.WithAttributes(
		telemetry.AttrSagaID.String(o.ID.String()), telemetry.AttrSagaType.String(o.Type), telemetry.AttrSagaAttempt.Int(o.Attempt)))
	w.trace = ctx
	return func() {
		span.End()
		w.trace = nil
	}
}
