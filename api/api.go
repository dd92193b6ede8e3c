// Package api is Sagaflow's HTTP API: placing orders, reading orders and
// sagas, and the operator actions on stuck sagas.
//
// Every route is listed once, in routeTable, which both registers the
// handlers and is checked by the tests against the OpenAPI document served
// at GET /openapi.json (openapi.json in this directory).
//
// Errors are RFC 9457 problem details (Content-Type application/problem+json)
// with a type, title, status and detail and, when a field of the request is at
// fault, the extension members "field" (the first one) and "errors" (every
// one, as {field, reason}). Status codes:
//
//   - 400: the request cannot be read: a missing or malformed
//     Idempotency-Key, malformed JSON, trailing data after the JSON object,
//     an unknown field, a value of the wrong JSON type (a string quantity,
//     an amount that is not a plain decimal, such as -5 or 1e3), or a
//     malformed path or query parameter.
//   - 422: the request was read but breaks a rule (order.PlaceRequest's
//     ValidateWithAmount: a blank customer, no items, a zero quantity, a
//     duplicate SKU, a currency that is not ISO 4217, an amount with more
//     fractional digits than its currency has or too large …): every broken
//     rule is listed.
//   - 413: the body is larger than Config.MaxBodyBytes.
//   - 415: the body is not JSON (Content-Type).
//   - 404: an unknown order or saga, or an unknown route; 405: a known route
//     with another method.
//   - 409: an Idempotency-Key used before with a different order, or an
//     operator action on a saga that is not stuck.
//   - 503: the database is unreachable or overloaded (retry; a placement is
//     one transaction, so nothing was half written). 500: a bug (logged).
//
// POST /orders answers 202 Accepted: the order is stored and its saga
// started; the saga then runs asynchronously. A replay (the same
// Idempotency-Key with the same order) answers the same way — 202 with the
// same order and saga ids, the order's current status, and the header
// Idempotent-Replayed: true — and places nothing.
package api

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// DefaultMaxBodyBytes is the default limit of a request body.
const DefaultMaxBodyBytes = 64 << 10

// Config is what the API needs.
type Config struct {
	// Pool is the database (orders, sagas, their history).
	Pool *pgxpool.Pool
	// Orders places orders.
	Orders *order.Service
	// Engine runs the operator actions on stuck sagas.
	Engine *saga.Engine
	// Ready reports whether Kafka is reachable, for GET /readyz. Nil skips
	// the check.
	Ready func(ctx context.Context) error
	// Logger receives a debug line per request and the errors behind 5xx
	// answers (default slog.Default()).
	Logger *slog.Logger
	// MaxBodyBytes limits request bodies (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Injection checks an order's fault injection modes (the participants'
	// steps.CheckInjection); nil, the default, refuses every order that
	// asks for fault injection, so that a client cannot make a production
	// participant fail or exit.
	Injection func(mode string) error
}

// server holds the handlers' dependencies.
type server struct {
	cfg Config
	log *slog.Logger
}

// handlerFunc is a handler that reports failure as an error: a *Problem is
// written as it is; any other error is logged and answered with 500.
type handlerFunc func(s *server, w http.ResponseWriter, r *http.Request) error

// route is one operation of the API.
type route struct {
	method  string
	path    string // a net/http pattern path, which is also the OpenAPI path
	handler handlerFunc
}

// routeTable lists every route of the API, once.
func routeTable() []route {
	return []route{
		{http.MethodPost, "/orders", (*server).placeOrder},
		{http.MethodGet, "/orders/{id}", (*server).getOrder},
		{http.MethodGet, "/sagas", (*server).listSagas},
		{http.MethodGet, "/sagas/{id}", (*server).getSaga},
		{http.MethodPost, "/sagas/{id}/retry", (*server).retrySaga},
		{http.MethodPost, "/sagas/{id}/resolve", (*server).resolveSaga},
		{http.MethodGet, "/healthz", (*server).healthz},
		{http.MethodGet, "/readyz", (*server).readyz},
		{http.MethodGet, "/openapi.json", (*server).openapi},
	}
}

// New returns the API's handler.
func New(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	s := &server{cfg: cfg, log: cfg.Logger.With("component", "api")}
	mux := http.NewServeMux()
	for _, rt := range routeTable() {
		mux.Handle(rt.method+" "+rt.path, s.handle(rt.handler))
	}
	return s.middleware(mux)
}

// handle adapts a handlerFunc to http.Handler.
func (s *server) handle(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(s, w, r); err != nil {
			s.fail(w, r, err)
		}
	})
}

// fail writes err as a problem. Errors that are not a *Problem are bugs or
// outages: they are logged and answered without their text.
func (s *server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var p *Problem
	if !errors.As(err, &p) {
		p = internalError(err)
	}
	switch {
	case p.Status == http.StatusServiceUnavailable:
		s.log.WarnContext(r.Context(), "request failed: unavailable", "method", r.Method, "path", r.URL.Path, "detail", p.Detail, "err", p.cause)
	case p.Status >= 500:
		s.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "status", p.Status, "err", p.cause)
	}
	writeProblem(w, r, p)
}

// middleware logs each request, recovers panics and turns the mux's own
// 404 and 405 answers into problems.
func (s *server) middleware(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		var out http.ResponseWriter = rec
		if _, pattern := mux.Handler(r); pattern == "" {
			// No route matches: the mux answers 404 or 405 in plain text.
			out = &routeErrorWriter{recorder: rec, r: r}
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.ErrorContext(r.Context(), "panic in handler", "method", r.Method, "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
				if !rec.wrote {
					writeProblem(rec, r, &Problem{Type: TypeInternal, Title: "Internal Server Error", Status: http.StatusInternalServerError,
						Detail: "the server hit a bug; it has been logged"})
				}
			}
			s.log.DebugContext(r.Context(), "http request", "method", r.Method, "path", r.URL.Path, "pattern", r.Pattern,
				"status", rec.status(), "bytes", rec.bytes, "duration", time.Since(start), "remote", r.RemoteAddr)
		}()
		mux.ServeHTTP(out, r)
	})
}

// recorder remembers the status and size of a response.
type recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
	wrote bool
}

func (w *recorder) WriteHeader(code int) {
	if !w.wrote {
		w.code, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recorder) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *recorder) status() int {
	if !w.wrote {
		return http.StatusOK
	}
	return w.code
}

// Unwrap lets http.ResponseController reach the connection.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// routeErrorWriter replaces the plain-text 404 and 405 of http.ServeMux by
// problems (the mux has set Allow on a 405 already).
type routeErrorWriter struct {
	*recorder
	r        *http.Request
	replaced bool
}

func (w *routeErrorWriter) WriteHeader(code int) {
	switch code {
	case http.StatusNotFound:
		w.replaced = true
		writeProblem(w.recorder, w.r, &Problem{Type: TypeUnknownRoute, Title: "Not Found", Status: code,
			Detail: "no route " + w.r.URL.Path + "; GET /openapi.json lists the routes"})
	case http.StatusMethodNotAllowed:
		w.replaced = true
		writeProblem(w.recorder, w.r, &Problem{Type: TypeMethodNotAllowed, Title: "Method Not Allowed", Status: code,
			Detail: w.r.Method + " is not allowed on " + w.r.URL.Path + "; allowed: " + w.Header().Get("Allow")})
	default:
		w.recorder.WriteHeader(code)
	}
}

func (w *routeErrorWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the mux's plain-text body
	}
	return w.recorder.Write(b)
}
