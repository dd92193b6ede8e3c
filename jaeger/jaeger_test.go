package jaeger_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/jaeger"
)

// setup returns a client of the running Jaeger (scripts/jaeger/jaeger
// start; make test sets SAGAFLOW_JAEGER_QUERY and SAGAFLOW_JAEGER_OTLP, and
// SAGAFLOW_REQUIRE_JAEGER, with which a missing Jaeger fails the test) and
// a tracer provider per service exporting to it.
func setup(t *testing.T) (*jaeger.Client, func(service string) *sdktrace.TracerProvider) {
	t.Helper()
	query, otlp := os.Getenv("SAGAFLOW_JAEGER_QUERY"), os.Getenv("SAGAFLOW_JAEGER_OTLP")
	if query == "" || otlp == "" {
		if os.Getenv("SAGAFLOW_REQUIRE_JAEGER") != "" {
			t.Fatal("no Jaeger: run scripts/jaeger/jaeger start and set SAGAFLOW_JAEGER_QUERY and SAGAFLOW_JAEGER_OTLP (make test does)")
		}
		t.Skip("no Jaeger here (scripts/jaeger/jaeger starts one); make test runs this test")
	}
	provider := func(service string) *sdktrace.TracerProvider {
		exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpointURL(otlp+"/v1/traces"))
		if err != nil {
			t.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp),
			sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service))))
		t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		return tp
	}
	return jaeger.New(query), provider
}

// A trace exported by two services reads back whole: spans in tree order
// with their depth, services, kinds, attributes, events and error status;
// an unknown trace is ErrNotFound, a malformed id an error.
func TestReadTrace(t *testing.T) {
	t.Parallel()
	c, provider := setup(t)
	ctx := context.Background()
	api, worker := provider("test-api").Tracer("t"), provider("test-worker").Tracer("t")

	rootCtx, root := api.Start(ctx, "POST /orders", trace.WithSpanKind(trace.SpanKindServer))
	sendCtx, send := api.Start(rootCtx, "send commands", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.destination.name", "commands")))
	_, process := worker.Start(sendCtx, "process commands", trace.WithSpanKind(trace.SpanKindConsumer))
	process.AddEvent("step refused", trace.WithAttributes(attribute.String("saga.step", "payment")))
	process.SetStatus(codes.Error, "card declined")
	process.End()
	send.End()
	_, late := api.Start(rootCtx, "start saga", trace.WithTimestamp(time.Now().Add(time.Millisecond)))
	late.End()
	root.End()
	id := root.SpanContext().TraceID().String()

	var tr *jaeger.Trace
	deadline := time.Now().Add(time.Minute)
	for {
		var err error
		tr, err = c.Trace(ctx, id)
		if err == nil && len(tr.Spans) == 4 {
			break
		}
		if err != nil && !errors.Is(err, jaeger.ErrNotFound) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s: %+v, %v; want 4 spans", id, tr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var got []string
	for _, s := range tr.Spans {
		got = append(got, row(s.Depth, s.Name, s.Service, s.Kind))
	}
	want := []string{
		row(0, "POST /orders", "test-api", "server"),
		row(1, "send commands", "test-api", "producer"),
		row(2, "process commands", "test-worker", "consumer"),
		row(1, "start saga", "test-api", "internal"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("spans\n%v\nwant\n%v", got, want)
	}
	if p := tr.Spans[2]; !p.Error || len(p.Events) != 1 || p.Events[0].Name != "step refused" || p.Events[0].Attrs["saga.step"] != "payment" {
		t.Errorf("the consumer span: error %v, events %+v", p.Error, p.Events)
	}
	if tr.Spans[0].Error || tr.Spans[1].Attrs["messaging.destination.name"] != "commands" || tr.Spans[1].ParentID != tr.Spans[0].ID {
		t.Errorf("the producer span: %+v", tr.Spans[1])
	}
	if s := tr.Services(); !slices.Equal(s, []string{"test-api", "test-worker"}) {
		t.Errorf("services %v", s)
	}
	if !tr.Start.Equal(tr.Spans[0].Start) || tr.End.Before(tr.Spans[3].Start) {
		t.Errorf("trace from %s to %s", tr.Start, tr.End)
	}

	if _, err := c.Trace(ctx, "0123456789abcdef0123456789abcdef"); !errors.Is(err, jaeger.ErrNotFound) {
		t.Errorf("an unknown trace: %v, want ErrNotFound", err)
	}
	if _, err := c.Trace(ctx, "../api/services"); err == nil || errors.Is(err, jaeger.ErrNotFound) {
		t.Errorf("a malformed id: %v, want an error", err)
	}
}

func row(depth int, name, service, kind string) string {
	return string(rune('0'+depth)) + " " + name + " (" + service + ", " + kind + ")"
}
