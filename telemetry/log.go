package telemetry

import (
	"context"
	"log/slog"

	"go.opentelemetry.io/otel/trace"
)

type sagaKey struct{}

// WithSagaID returns ctx carrying the saga a message belongs to, which
// log lines written with ctx name (LogHandler).
func WithSagaID(ctx context.Context, id string) context.Context {
	if id == "" {
		return ctx
	}
	return context.WithValue(ctx, sagaKey{}, id)
}

// SagaID is the saga ctx carries ("" if none).
func SagaID(ctx context.Context) string {
	id, _ := ctx.Value(sagaKey{}).(string)
	return id
}

// LogHandler wraps h so that every record logged with a context (the
// slog ...Context functions) carries trace_id and span_id of its span and
// saga_id of its saga, where they are known.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
		}
		if id := SagaID(ctx); id != "" {
			r.AddAttrs(slog.String("saga_id", id))
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(attrs)}
}

func (h logHandler) WithGroup(name string) slog.Handler { return logHandler{h.Handler.WithGroup(name)} }
