package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// Headers of POST /orders.
const (
	// HeaderIdempotencyKey names the client's key of a placement: the same
	// key places one order however often it is sent.
	HeaderIdempotencyKey = "Idempotency-Key"
	// HeaderIdempotentReplayed is "true" on the answer to a replay.
	HeaderIdempotentReplayed = "Idempotent-Replayed"
	// MaxIdempotencyKeyLength bounds an Idempotency-Key (visible ASCII).
	MaxIdempotencyKeyLength = 200
)

// PlaceResponse is the answer to POST /orders.
type PlaceResponse struct {
	OrderID uuid.UUID    `json:"order_id"`
	SagaID  uuid.UUID    `json:"saga_id"`
	Status  order.Status `json:"status"`
	// StatusURL is the order (GET /orders/{id}), SagaURL its saga.
	StatusURL string `json:"status_url"`
	SagaURL   string `json:"saga_url"`
}

// Order is the answer to GET /orders/{id}: the order with a link to its
// saga.
type Order struct {
	*order.Order
	SagaURL string `json:"saga_url"`
}

// placeBody decodes order.PlaceRequest with its amount as the client wrote
// it: the value's scale depends on the currency, which may come after it,
// so the value is kept as a decimal and converted once both are known
// (order.PlaceRequest.ValidateWithAmount). Its decoding errors name their
// field (order.Decimal's errors do not say where they are).
type placeBody struct {
	order.PlaceRequest
	Amount struct {
		Value    money  `json:"value"`
		Currency string `json:"currency"`
	} `json:"amount"` // shadows PlaceRequest.Amount
}

// request returns the request and its amount as written, which
// ValidateWithAmount converts.
func (b *placeBody) request() (*order.PlaceRequest, order.DecimalAmount) {
	req := b.PlaceRequest
	return &req, order.DecimalAmount{Value: order.Decimal(b.Amount.Value), Currency: b.Amount.Currency}
}

// money decodes an amount's value like order.Decimal but fails with a
// *json.UnmarshalTypeError, to which encoding/json adds the field's path.
type money order.Decimal

func (m *money) UnmarshalJSON(b []byte) error {
	if err := (*order.Decimal)(m).UnmarshalJSON(b); err != nil {
		return &json.UnmarshalTypeError{Value: describeJSON(b), Type: reflect.TypeFor[money]()}
	}
	return nil
}

// describeJSON describes a JSON scalar for an error message.
func describeJSON(b []byte) string {
	s := string(b)
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	if len(b) > 0 && b[0] == '"' {
		return "string " + s
	}
	return "number " + s
}

func orderURL(id uuid.UUID) string { return "/orders/" + id.String() }
func sagaURL(id uuid.UUID) string  { return "/sagas/" + id.String() }

// idempotencyKey returns the request's Idempotency-Key.
func idempotencyKey(r *http.Request) (string, error) {
	values := r.Header.Values(HeaderIdempotencyKey)
	bad := func(reason string) error {
		return badRequest(HeaderIdempotencyKey, reason, "header "+HeaderIdempotencyKey+" "+reason)
	}
	switch {
	case len(values) == 0:
		return "", bad("is required: a unique key per order, such as a UUID, so that retrying the request cannot place it twice")
	case len(values) > 1:
		return "", bad("must be sent once")
	}
	key := values[0]
	if len(key) == 0 || len(key) > MaxIdempotencyKeyLength {
		return "", bad(fmt.Sprintf("must be 1 to %d characters long", MaxIdempotencyKeyLength))
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return "", bad("must consist of visible ASCII characters (no spaces)")
		}
	}
	return key, nil
}

// placeRequestType is the schema of POST /orders: the type decoded, which
// the walk of decodeJSON's errors must mirror (order.Amount decodes itself,
// placeBody's amount field by field).
var placeRequestType = reflect.TypeFor[placeBody]()

// placeOrder is POST /orders.
func (s *server) placeOrder(w http.ResponseWriter, r *http.Request) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	// Admission comes first: while the pipeline is full, a refusal must
	// cost as little as possible (no body decoded), for refused clients
	// come back.
	if err := s.admit(r.Context()); err != nil {
		return err
	}
	var body placeBody
	if err := s.decodeJSON(w, r, &body, placeRequestType); err != nil {
		return err
	}
	req, amount := body.request()
	if errs := append(req.ValidateWithAmount(amount), s.checkInjection(req)...); len(errs) > 0 {
		detail := fmt.Sprintf("the order has %d invalid field(s): %s %s", len(errs), errs[0].Field, errs[0].Reason)
		if len(errs) > 1 {
			detail += " …"
		}
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: detail, Errors: errs}
	}
	placed, err := s.cfg.Orders.Place(r.Context(), key, req)
	if errors.Is(err, order.ErrIdempotencyConflict) {
		return &Problem{Type: TypeIdempotencyConflict, Title: "Conflict", Status: http.StatusConflict,
			Detail: "this Idempotency-Key was used for a different order; use a new key for a new order",
			Errors: []order.FieldError{{Field: HeaderIdempotencyKey, Reason: "was used with a different request body"}}}
	}
	if err != nil {
		return storeError(err)
	}
	resp := PlaceResponse{OrderID: placed.OrderID, SagaID: placed.SagaID, Status: placed.Status,
		StatusURL: orderURL(placed.OrderID), SagaURL: sagaURL(placed.SagaID)}
	w.Header().Set("Location", resp.StatusURL)
	if placed.Replayed {
		w.Header().Set(HeaderIdempotentReplayed, "true")
	}
	writeJSON(w, http.StatusAccepted, resp)
	return nil
}

// admit refuses placements while more than MaxSagasInFlight sagas are in
// flight. It never waits for the database while it has a count at hand
// (see flightCount), and it refuses before any lookup: a replay of a
// placed order is refused too, and answered once there is room. Measured
// with the pipeline saturating the database (sagaflow bench --api … at
// three times capacity), a refusal that looked its key up took p99 317 ms,
// one that reads nothing 47 ms; refused clients come back, and each
// lookup was database time taken from the sagas in flight.
func (s *server) admit(ctx context.Context) error {
	limit := s.cfg.MaxSagasInFlight
	if limit < 0 {
		return nil
	}
	n, err := s.sagas.get(ctx, s.cfg.Pool, s.cfg.SagaCountInterval, s.log)
	if err != nil {
		return storeError(err)
	}
	if n < int64(limit) {
		return nil
	}
	s.overload.note(ctx, s.log)
	// Refused clients are told to come back after 1 to
	// AdmissionRetryAfterMax seconds, at random: all told "1" they would
	// come back together, and a retry storm would take the CPU the sagas
	// in flight need (measured: 3× capacity with retrying clients cut
	// throughput from 230 to 46 sagas/s when every refusal said 1 s).
	after := 1 + rand.IntN(AdmissionRetryAfterMax)
	return &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable, retryAfter: after,
		Detail: fmt.Sprintf("%d sagas in flight, the admission limit: this request was not processed; retry in %d s (Retry-After) with the same Idempotency-Key (an order it placed before stands, and the retry returns it)", n, after)}
}

// AdmissionRetryAfterMax is the longest Retry-After of an admission
// refusal, in seconds.
const AdmissionRetryAfterMax = 5

// flightCount caches the count of sagas in flight for admission. A
// placement never waits for the database while a count is at hand: when
// the count is older than the interval, the first placement to notice
// starts one count in the background and every placement goes on with the
// count it has, so admission lags by at most a count's duration. Only
// without a count, or with one older than flightCountStale (the counts
// keep failing), does a placement count itself, so that an error reaches
// the client.
type flightCount struct {
	mu       sync.Mutex
	at       time.Time
	n        int64
	counting bool
}

const (
	// flightCountStale is how old a count may be and still be used while
	// a newer one is under way.
	flightCountStale = 5 * time.Second
	// flightCountTimeout bounds a background count.
	flightCountTimeout = 5 * time.Second
)

// get returns the count of sagas in flight; interval is how old it may be
// before a new count starts (negative: count now, every time).
func (c *flightCount) get(ctx context.Context, pool saga.Querier, interval time.Duration, log *slog.Logger) (int64, error) {
	c.mu.Lock()
	age := time.Since(c.at)
	switch {
	case interval >= 0 && !c.at.IsZero() && age < interval:
		defer c.mu.Unlock()
		return c.n, nil
	case interval >= 0 && !c.at.IsZero() && age < flightCountStale:
		n := c.n
		if !c.counting {
			c.counting = true
			go c.refresh(pool, log)
		}
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	n, err := saga.CountInFlight(ctx, pool)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	c.n, c.at = n, time.Now()
	c.mu.Unlock()
	return n, nil
}

// refresh counts in the background; it ends within flightCountTimeout.
func (c *flightCount) refresh(pool saga.Querier, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), flightCountTimeout)
	defer cancel()
	n, err := saga.CountInFlight(ctx, pool)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.counting = false
	if err != nil {
		log.Warn("count sagas in flight for admission", "err", err)
		return
	}
	c.n, c.at = n, time.Now()
}

// checkInjection refuses fault injection on a server that does not allow
// it, and modes that participants would not understand.
func (s *server) checkInjection(req *order.PlaceRequest) []order.FieldError {
	if len(req.Inject) == 0 {
		return nil
	}
	if s.cfg.Injection == nil {
		return []order.FieldError{{Field: "inject", Reason: "is refused: fault injection is off on this server (serve --allow-fault-injection turns it on, for tests)"}}
	}
	var errs []order.FieldError
	for _, k := range slices.Sorted(maps.Keys(req.Inject)) {
		if err := s.cfg.Injection(req.Inject[k]); err != nil {
			errs = append(errs, order.FieldError{Field: "inject." + k, Reason: err.Error()})
		}
	}
	return errs
}

// pathID parses the {id} path parameter.
func pathID(r *http.Request) (uuid.UUID, error) {
	v := r.PathValue("id")
	id, err := uuid.Parse(v)
	if err != nil {
		return uuid.Nil, badRequest("id", "must be a UUID", fmt.Sprintf("%q is not a UUID", v))
	}
	return id, nil
}

// getOrder is GET /orders/{id}.
func (s *server) getOrder(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	o, err := order.Get(r.Context(), s.cfg.Pool, id)
	if errors.Is(err, order.ErrNotFound) {
		return notFound(fmt.Sprintf("no order has id %s", id))
	}
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, Order{Order: o, SagaURL: sagaURL(o.SagaID)})
	return nil
}
