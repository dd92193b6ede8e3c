// Package api is Sagaflow's HTTP API: placing orders, reading orders and
// sagas, and the operator actions on stuck sagas.
//
// Every route is listed once, in routeTable, which both registers the
// handlers and is checked by the tests against the OpenAPI document served
// at GET /openapi.json (openapi.json in this directory). A route's entry
// also says who may call it (access: anyone; a reader, who needs an
// operator token only with Config.ProtectReads; an operator) and whether it
// counts against Config.MaxInFlight: authentication and load shedding are
// properties of the route, not checks in handlers.
//
// Operators authenticate with Authorization: Bearer <token>, one of
// Config.Operators; the token's name is logged as who acted (and kept in
// the saga's history with a resolution's note). Every request runs under a
// deadline (Config.RequestTimeout) and waits at most Config.AcquireTimeout
// for a database connection; beyond Config.MaxInFlight requests in flight,
// more are answered 503 at once. An overload is answered, never queued
// without bound.
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
//   - 401: an operator route (or, with ProtectReads, a read) without a
//     well-formed Authorization: Bearer header; WWW-Authenticate:
//     Bearer realm="sagaflow". 403: a token that is not an operator's, or
//     no operator tokens configured at all.
//   - 503 with Retry-After: 1: the database is unreachable or overloaded,
//     MaxInFlight requests are in flight already, no database connection
//     came free within AcquireTimeout, or the request ran out of
//     RequestTimeout (retry; a placement is one transaction, so nothing
//     was half written). 500: a bug (logged).
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
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/telemetry"
)

// Defaults of Config.
const (
	// DefaultMaxBodyBytes is the default limit of a request body.
	DefaultMaxBodyBytes = 64 << 10
	// DefaultRequestTimeout bounds a request's handling: its statements take
	// milliseconds, so a request still running after 10 s waits on
	// something (a lock, a sick database) that will not let it finish in a
	// time a client waits.
	DefaultRequestTimeout = 10 * time.Second
	// DefaultAcquireTimeout bounds the wait for a database connection: a
	// request that cannot get one in 2 s is answered 503 so that the
	// client retries later, instead of queueing behind the others.
	DefaultAcquireTimeout = 2 * time.Second
	// DefaultMaxInFlight is the number of requests handled at once beyond
	// which the API sheds load (503 at once). Far more than the database
	// pool serves at once, so that a burst queues briefly on the pool
	// rather than being refused, but bounded, so that an overload is
	// answered rather than queued without end.
	DefaultMaxInFlight = 256
	// DefaultMaxSagasInFlight is the default admission bound of
	// placements. At the few hundred sagas a second a small machine
	// finishes, a thousand in flight is a few seconds of work per step:
	// within the first attempt's 5 s timeout. Size it to about throughput
	// times the step timeout.
	DefaultMaxSagasInFlight = 1000
	// DefaultSagaCountInterval is how old the count of sagas in flight may
	// be when a placement is admitted: one cheap count per interval, not
	// one per placement.
	DefaultSagaCountInterval = 250 * time.Millisecond
)

// Config is what the API needs.
type Config struct {
	// Pool is the database (orders, sagas, their history). Set it up with
	// dbpool.BoundAcquire, so that AcquireTimeout applies.
	Pool *pgxpool.Pool
	// Orders places orders.
	Orders *order.Service
	// Engine runs the operator actions on stuck sagas.
	Engine *saga.Engine
	// Ready reports whether Kafka is reachable, for GET /readyz. Nil skips
	// the check.
	Ready func(ctx context.Context) error
	// Logger receives a debug line per request, the errors behind 5xx
	// answers, refused authentications and every operator action with who
	// acted (default slog.Default()). Tokens are never logged.
	Logger *slog.Logger
	// MaxBodyBytes limits request bodies (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Injection checks an order's fault injection modes (the participants'
	// steps.CheckInjection); nil, the default, refuses every order that
	// asks for fault injection, so that a client cannot make a production
	// participant fail or exit.
	Injection func(mode string) error

	// Operators are the bearer tokens that may call the operator actions
	// (the routes of access operator: POST /sagas/{id}/retry, /resolve).
	// Without any, operator actions are refused (403): an API reachable by
	// clients must not let them resolve sagas.
	Operators *Tokens
	// ReadOnly refuses every operator action (403), whoever asks: the
	// console's read-only mode.
	ReadOnly bool
	// ProtectReads makes the reads (GET /orders/{id}, GET /sagas…) need an
	// operator token too. POST /orders, the health checks and the OpenAPI
	// document stay open.
	ProtectReads bool

	// MaxInFlight bounds the requests handled at once (default
	// DefaultMaxInFlight; negative: no bound). Beyond it a request is
	// answered 503 with Retry-After at once; the health checks are exempt.
	MaxInFlight int
	// RequestTimeout bounds each request's handling: its database work is
	// cancelled after it and the request answered 503 (default
	// DefaultRequestTimeout).
	RequestTimeout time.Duration
	// AcquireTimeout bounds a request's wait for a database connection; a
	// request that waits longer is answered 503 with Retry-After (default
	// DefaultAcquireTimeout). It applies on a Pool set up with
	// dbpool.BoundAcquire (serve and dev set up the API's pool so); on
	// another pool only RequestTimeout bounds the wait.
	AcquireTimeout time.Duration
	// MaxSagasInFlight is admission control: while more sagas than this
	// are running or compensating, POST /orders is answered 503 with
	// Retry-After, a replay of a placed order included (it is answered
	// once there is room). Requests
	// in flight measure the API; this measures the pipeline behind it,
	// where an overload piles up as consumer lag until step deadlines
	// cancel orders that would have succeeded. Default
	// DefaultMaxSagasInFlight; negative: no bound.
	MaxSagasInFlight int
	// DeadLetters serves GET /dead-letters… and the purge (nil: those
	// routes answer 503); Replayer replays them (nil: replay answers 503).
	DeadLetters *deadletter.Store
	Replayer    *deadletter.Replayer
	// Kafka, when set, is asked for the consumer groups' lag on the
	// topics Topics names (GET /overview).
	Kafka  *kafkax.Config
	Topics kafkax.Topics
	// Stock serves GET /stock and PUT /stock/{sku} (nil: they answer 503).
	Stock Stock
	// SagaCountInterval is how often the count behind MaxSagasInFlight is
	// refreshed (default DefaultSagaCountInterval; negative: on every
	// placement).
	SagaCountInterval time.Duration
}

// server holds the handlers' dependencies.
type server struct {
	cfg Config
	log *slog.Logger
	// inflight holds a token per request in flight (nil: no bound).
	inflight chan struct{}
	// overload summarises the requests answered 503 for overload.
	overload overloadLog
	// sagas caches the count of sagas in flight for admission.
	sagas flightCount
}

// handlerFunc is a handler that reports failure as an error: a *Problem is
// written as it is; any other error is logged and answered with 500.
type handlerFunc func(s *server, w http.ResponseWriter, r *http.Request) error

// access says who may call a route.
type access int8

const (
	// public routes answer anyone: the business API (POST /orders), the
	// health checks and the OpenAPI document.
	public access = iota
	// reader routes answer anyone, or with Config.ProtectReads holders of an
	// operator token only.
	reader
	// operator routes change sagas by hand: they need an operator token,
	// whose name is recorded as who acted.
	operator
)

// load says whether a route counts against Config.MaxInFlight.
type load int8

const (
	// shed routes are refused (503) when MaxInFlight requests are in flight.
	shed load = iota
	// exempt routes always answer: the health checks, which an overloaded
	// process must still answer truthfully.
	exempt
)

// route is one operation of the API.
type route struct {
	method  string
	path    string // a net/http pattern path, which is also the OpenAPI path
	access  access
	load    load
	handler handlerFunc
}

// routeTable lists every route of the API, once, with who may call it.
func routeTable() []route {
	return []route{
		{http.MethodPost, "/orders", public, shed, (*server).placeOrder},
		{http.MethodGet, "/orders/{id}", reader, shed, (*server).getOrder},
		{http.MethodGet, "/overview", reader, shed, (*server).getOverview},
		{http.MethodGet, "/sagas", reader, shed, (*server).listSagas},
		{http.MethodGet, "/sagas/{id}", reader, shed, (*server).getSaga},
		{http.MethodPost, "/sagas/{id}/retry", operator, shed, (*server).retrySaga},
		{http.MethodPost, "/sagas/{id}/resolve", operator, shed, (*server).resolveSaga},
		{http.MethodPost, "/sagas/{id}/abort", operator, shed, (*server).abortSaga},
		{http.MethodPost, "/batch/{action}", operator, shed, (*server).batchSagas},
		{http.MethodGet, "/dead-letters", reader, shed, (*server).listDeadLetters},
		{http.MethodGet, "/dead-letters/groups", reader, shed, (*server).deadLetterGroups},
		{http.MethodGet, "/dead-letters/{id}", reader, shed, (*server).getDeadLetter},
		{http.MethodPost, "/dead-letters/actions/replay", operator, shed, (*server).replayDeadLetters},
		{http.MethodPost, "/dead-letters/actions/purge", operator, shed, (*server).purgeDeadLetters},
		{http.MethodGet, "/stock", reader, shed, (*server).listStock},
		{http.MethodPut, "/stock/{sku}", operator, shed, (*server).setStock},
		{http.MethodGet, "/healthz", public, exempt, (*server).healthz},
		{http.MethodGet, "/readyz", public, exempt, (*server).readyz},
		{http.MethodGet, "/openapi.json", public, shed, (*server).openapi},
		{http.MethodGet, "/asyncapi.json", public, shed, (*server).asyncapi},
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
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.AcquireTimeout <= 0 {
		cfg.AcquireTimeout = DefaultAcquireTimeout
	}
	if cfg.MaxSagasInFlight == 0 {
		cfg.MaxSagasInFlight = DefaultMaxSagasInFlight
	}
	if cfg.SagaCountInterval == 0 {
		cfg.SagaCountInterval = DefaultSagaCountInterval
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	s := &server{cfg: cfg, log: cfg.Logger.With("component", "api")}
	if cfg.MaxInFlight > 0 {
		s.inflight = make(chan struct{}, cfg.MaxInFlight)
	}
	mux := http.NewServeMux()
	for _, rt := range routeTable() {
		mux.Handle(rt.method+" "+rt.path, s.handle(rt))
	}
	return s.middleware(mux)
}

// handle adapts a route's handlerFunc to http.Handler: it checks who
// calls, sheds the request when too many are in flight, and bounds its
// time and its waits for a database connection.
func (s *server) handle(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		who, err := s.authorize(r, rt.access)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if rt.load == shed && s.inflight != nil {
			select {
			case s.inflight <- struct{}{}:
				defer func() { <-s.inflight }()
			default:
				s.overload.note(r.Context(), s.log)
				writeProblem(w, r, &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
					Detail: fmt.Sprintf("the server is busy: %d requests are in flight, its limit; retry in a second", s.cfg.MaxInFlight)})
				return
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), s.cfg.RequestTimeout)
		defer cancel()
		ctx = dbpool.WithAcquireTimeout(ctx, s.cfg.AcquireTimeout)
		if who != "" {
			ctx = context.WithValue(ctx, operatorKey{}, who)
		}
		r = r.WithContext(ctx)
		if err := rt.handler(s, w, r); err != nil {
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
	case p.Status == http.StatusServiceUnavailable && errors.Is(p.cause, context.DeadlineExceeded):
		// Out of time: the request's or its wait for a connection. Under
		// overload these come by the thousand: summarised, not one a line.
		if r.Context().Err() != nil {
			p.Detail = fmt.Sprintf("the request took longer than %s, the server's limit; retry later", s.cfg.RequestTimeout)
		} else {
			p.Detail = fmt.Sprintf("the server is busy: no database connection came free within %s; retry later", s.cfg.AcquireTimeout)
		}
		s.overload.note(r.Context(), s.log)
		s.log.DebugContext(r.Context(), "request failed: out of time", "method", r.Method, "path", r.URL.Path, "detail", p.Detail, "err", p.cause)
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
		_, pattern := mux.Handler(r)
		if pattern == "" {
			// No route matches: the mux answers 404 or 405 in plain text.
			out = &routeErrorWriter{recorder: rec, r: r}
		}
		if telemetry.Enabled() {
			ctx, span := telemetry.StartServer(r.Context(), r.Header, pattern, r.Method, r.URL.Path)
			r = r.WithContext(ctx)
			defer func() { telemetry.Served(span, rec.status()) }()
		}
		route := "unmatched"
		if _, path, ok := strings.Cut(pattern, " "); ok {
			route = path // "POST /orders": the method is a label of its own
		}
		ctx := r.Context()
		defer func() {
			telemetry.HTTPRequests.WithLabelValues(route, r.Method, strconv.Itoa(rec.status())).Inc()
			telemetry.Observe(ctx, telemetry.HTTPDuration.WithLabelValues(route, r.Method), time.Since(start))
		}()
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
