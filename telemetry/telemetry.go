// Package telemetry is Sagaflow's tracing: one OpenTelemetry trace per
// saga, carried across every database row and Kafka hop. A message written
// to an outbox keeps the W3C trace context of the transaction that wrote
// it among its headers (Inject); the relay's producer span is that
// context's child and replaces it in the Kafka headers; the inbox's
// consumer span is the producer's child (Extract). Span names carry no
// ids; attributes follow the OpenTelemetry messaging conventions.
//
// Tracing is configured only by the standard OTEL_* environment variables
// and is off by default (Setup). While it is off, Enabled is false and
// every helper here returns at once, so tracing costs nothing.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName names Sagaflow's tracer.
const ScopeName = "github.com/sagaflow/sagaflow"

// TraceParent is the W3C header that carries a span's context.
const TraceParent = "traceparent"

var (
	enabled    atomic.Bool
	tracer     atomic.Pointer[trace.Tracer]
	propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
)

func init() {
	t := noop.NewTracerProvider().Tracer(ScopeName)
	tracer.Store(&t)
}

// Enabled reports whether spans are recorded.
func Enabled() bool { return enabled.Load() }

// Tracer is Sagaflow's tracer (a no-op one while tracing is off).
func Tracer() trace.Tracer { return *tracer.Load() }

// Use makes tp the provider of Sagaflow's spans (tests use an in-memory
// exporter); nil turns tracing off.
func Use(tp trace.TracerProvider) {
	if tp == nil {
		t := noop.NewTracerProvider().Tracer(ScopeName)
		tracer.Store(&t)
		enabled.Store(false)
		return
	}
	t := tp.Tracer(ScopeName)
	tracer.Store(&t)
	enabled.Store(true)
}

// Configured reports whether the environment asks for traces: an OTLP
// endpoint is set, or OTEL_TRACES_EXPORTER names otlp; OTEL_SDK_DISABLED
// or OTEL_TRACES_EXPORTER=none turn them off.
func Configured() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	switch strings.ToLower(os.Getenv("OTEL_TRACES_EXPORTER")) {
	case "none":
		return false
	case "otlp":
		return true
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup turns tracing on when the environment asks for it (Configured):
// an OTLP exporter over HTTP/protobuf or gRPC (OTEL_EXPORTER_OTLP_PROTOCOL
// or OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: http/protobuf, the default, or
// grpc), the endpoint, headers, sampler and resource from the usual OTEL_*
// variables, service.name defaulting to service. It returns a shutdown
// that flushes the spans; with tracing off, a no-op.
func Setup(ctx context.Context, service string) (shutdown func(context.Context) error, err error) {
	if !Configured() {
		return func(context.Context) error { return nil }, nil
	}
	protocol := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if protocol == "" {
		protocol = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	var exp sdktrace.SpanExporter
	switch protocol {
	case "", "http/protobuf":
		exp, err = otlptracehttp.New(ctx)
	case "grpc":
		exp, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL %q: Sagaflow exports traces over http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("start the OTLP trace exporter: %w", err)
	}
	// Later detectors win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
	// over the default name.
	res, err := resource.New(ctx, resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithTelemetrySDK(), resource.WithHost(), resource.WithFromEnv())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("tracing resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	otel.SetTextMapPropagator(propagator)
	Use(tp)
	return func(ctx context.Context) error {
		Use(nil)
		return tp.Shutdown(ctx)
	}, nil
}

// Inject writes ctx's trace context (traceparent, tracestate, baggage)
// into headers, when tracing is on and ctx has a span.
func Inject(ctx context.Context, headers map[string]string) {
	if !Enabled() || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	propagator.Inject(ctx, propagation.MapCarrier(headers))
}

// Extract returns ctx with the trace context headers carry (ctx itself
// while tracing is off).
func Extract(ctx context.Context, headers map[string]string) context.Context {
	if !Enabled() {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier(headers))
}

// Fields are the trace context headers, which a message's own headers
// must not be confused with.
func Fields() []string { return propagator.Fields() }
