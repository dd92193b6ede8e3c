package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/order"
)

// ContentTypeProblem is the media type of every error answer (RFC 9457).
const ContentTypeProblem = "application/problem+json"

// Problem types (RFC 9457 "type" member): URNs that name the kind of error;
// the title and status go with them.
const (
	// TypeInvalidRequest (400): the request cannot be read (malformed JSON,
	// an unknown field, a wrong JSON type, a bad header or parameter).
	TypeInvalidRequest = "urn:sagaflow:problem:invalid-request"
	// TypeValidation (422): the request was read but breaks rules; errors
	// lists every one.
	TypeValidation = "urn:sagaflow:problem:validation"
	// TypeBodyTooLarge (413).
	TypeBodyTooLarge = "urn:sagaflow:problem:body-too-large"
	// TypeUnsupportedMediaType (415): the body must be JSON.
	TypeUnsupportedMediaType = "urn:sagaflow:problem:unsupported-media-type"
	// TypeNotFound (404): no order or saga has the id.
	TypeNotFound = "urn:sagaflow:problem:not-found"
	// TypeUnknownRoute (404): no route has the path.
	TypeUnknownRoute = "urn:sagaflow:problem:unknown-route"
	// TypeMethodNotAllowed (405): the route exists with other methods
	// (header Allow).
	TypeMethodNotAllowed = "urn:sagaflow:problem:method-not-allowed"
	// TypeIdempotencyConflict (409): the Idempotency-Key was used with a
	// different order.
	TypeIdempotencyConflict = "urn:sagaflow:problem:idempotency-conflict"
	// TypeConflict (409): the saga is not in a state that allows the action.
	TypeConflict = "urn:sagaflow:problem:conflict"
	// TypeUnavailable (503): the database (or, for /readyz, Kafka) cannot be
	// reached, or the server is overloaded (too many requests in flight, no
	// database connection free in time, a request out of time); retry later.
	TypeUnavailable = "urn:sagaflow:problem:unavailable"
	// TypeUnauthorized (401): the route needs an operator token and the
	// request has no Authorization: Bearer header, or a malformed one
	// (WWW-Authenticate says so).
	TypeUnauthorized = "urn:sagaflow:problem:unauthorized"
	// TypeForbidden (403): the bearer token is not an operator token of the
	// server, or the server has none (operator actions are off).
	TypeForbidden = "urn:sagaflow:problem:forbidden"
	// TypeInternal (500): a bug; the server logged it.
	TypeInternal = "urn:sagaflow:problem:internal"
)

// Problem is an error answer: RFC 9457 problem details with Sagaflow's
// extension members. It is also an error, which handlers return.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Field is the first field at fault (a JSON path such as
	// "items[0].quantity", or a header or parameter name).
	Field string `json:"field,omitempty"`
	// Errors lists every field at fault, in field order.
	Errors []order.FieldError `json:"errors,omitempty"`
	// Checks is the state of each dependency (GET /readyz).
	Checks map[string]string `json:"checks,omitempty"`

	cause error // logged, never shown
	// retryAfter is a 503's Retry-After in seconds (0: 1).
	retryAfter int
}

// Error implements error.
func (p *Problem) Error() string {
	if p.Detail != "" {
		return p.Title + ": " + p.Detail
	}
	return p.Title
}

// Unwrap returns the error behind the problem, if any.
func (p *Problem) Unwrap() error { return p.cause }

func writeProblem(w http.ResponseWriter, r *http.Request, p *Problem) {
	if p.Instance == "" {
		p.Instance = r.URL.Path
	}
	if p.Field == "" && len(p.Errors) > 0 {
		p.Field = p.Errors[0].Field
	}
	switch p.Status {
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", strconv.Itoa(max(p.retryAfter, 1)))
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", BearerChallenge)
	}
	writeJSONType(w, ContentTypeProblem, p.Status, p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	writeJSONType(w, "application/json", status, v)
}

func writeJSONType(w http.ResponseWriter, contentType string, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only a bug makes one of the API's own values unencodable.
		b, _ = json.Marshal(&Problem{Type: TypeInternal, Title: "Internal Server Error", Status: http.StatusInternalServerError,
			Detail: "the answer could not be encoded"})
		contentType, status = ContentTypeProblem, http.StatusInternalServerError
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// badRequest is a 400 about one field.
func badRequest(field, reason, detail string) *Problem {
	p := &Problem{Type: TypeInvalidRequest, Title: "Bad Request", Status: http.StatusBadRequest, Detail: detail}
	if field != "" {
		p.Errors = []order.FieldError{{Field: field, Reason: reason}}
	}
	return p
}

func notFound(detail string) *Problem {
	return &Problem{Type: TypeNotFound, Title: "Not Found", Status: http.StatusNotFound, Detail: detail}
}

func internalError(err error) *Problem {
	return &Problem{Type: TypeInternal, Title: "Internal Server Error", Status: http.StatusInternalServerError,
		Detail: "the server hit a bug; it has been logged", cause: err}
}

// storeError turns an error of the database layer into a problem: 503
// when the database is unreachable, overloaded, shutting down or the
// transaction lost a race — retrying can help, and a transaction that failed
// changed nothing; 500 for anything else (a constraint or statement the
// database refuses, a misconfiguration: a bug, logged).
func storeError(err error) *Problem {
	var p *Problem
	if errors.As(err, &p) {
		return p
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		// Data exception: the database refused a value the validation let
		// through (a backstop: Validate should have named the field).
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "the database refused a value of the request: " + pgErr.Message, cause: err}
	}
	if !unavailable(err) {
		return internalError(err)
	}
	return &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
		Detail: "the database is unavailable; nothing was changed, retry later", cause: err}
}

// unavailable reports whether err says the database cannot serve now
// rather than that the request or the code is wrong.
func unavailable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", // connection exception
			"40", // serialization failure, deadlock
			"53", // insufficient resources (too many connections, disk full)
			"55", // lock not available, object in use
			"57", // operator intervention (shutdown, query cancelled)
			"58": // system error
			return true
		}
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	switch {
	case errors.As(err, &connErr), errors.As(err, &netErr), pgconn.Timeout(err), pgconn.SafeToRetry(err),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	// pgxpool reports a closed pool (the server is shutting down) with
	// puddle's ErrClosedPool, whose text is all this package can see
	// without importing puddle.
	return strings.Contains(err.Error(), "closed pool")
}
