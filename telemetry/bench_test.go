package telemetry_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sagaflow/sagaflow/telemetry"
)

// BenchmarkHop is what one message costs the tracing: the writer injects
// its context into the row's headers, the relay's producer span, the
// inbox's consumer span. Off, it is an atomic load per hook; on, spans go
// to a batching processor whose exporter discards them (the export itself
// runs on the SDK's goroutine).
//
//	go test -run '^$' -bench Hop -benchmem ./telemetry
func BenchmarkHop(b *testing.B) {
	hop := func(b *testing.B) {
		ctx := context.Background()
		m := telemetry.Message{Topic: "payment.commands", Key: "k", ID: "id", SagaID: "saga", Partition: -1, Offset: -1}
		headers := map[string]string{"type": "payment.charge"}
		for b.Loop() {
			delete(headers, telemetry.TraceParent)
			telemetry.Inject(ctx, headers)
			span := telemetry.StartSend(headers, m)
			telemetry.Sent(span, 3, 42, nil)
			_, consumer := telemetry.StartProcess(ctx, headers, m)
			telemetry.Processed(consumer, false, nil, "")
		}
	}
	b.Run("off", func(b *testing.B) {
		telemetry.Use(nil)
		hop(b)
	})
	b.Run("on", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		telemetry.Use(tp)
		defer func() { telemetry.Use(nil); _ = tp.Shutdown(context.Background()) }()
		hop(b)
	})
}
