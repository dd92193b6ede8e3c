package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// Limits of GET /sagas and of operator notes.
const (
	// DefaultListLimit is the page size of GET /sagas without limit=.
	DefaultListLimit = 50
	// MaxListLimit is the largest limit= of GET /sagas.
	MaxListLimit = 500
	// MaxNoteLength bounds the note of POST /sagas/{id}/resolve, in
	// characters.
	MaxNoteLength = 2000
)

// Step statuses in Saga.Steps, derived from the saga's history.
const (
	StepPending      = "pending"      // its action was never sent
	StepRunning      = "running"      // its action was sent; the reply is awaited
	StepSucceeded    = "succeeded"    // its action succeeded
	StepRefused      = "refused"      // its action was refused (a business refusal)
	StepTimedOut     = "timed_out"    // its action went unanswered and it has no compensation
	StepCompensating = "compensating" // its compensation was sent; the reply is awaited
	StepCompensated  = "compensated"  // its compensation succeeded
	StepStuck        = "stuck"        // its compensation went unanswered past its attempts
	StepResolved     = "resolved"     // an operator resolved the stuck compensation by hand
)

// Step is the latest status of one step of a saga.
type Step struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	// Attempt, LastEvent, Reason and At are of the step's latest history
	// entry (absent while pending).
	Attempt   int        `json:"attempt,omitempty"`
	LastEvent string     `json:"last_event,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	At        *time.Time `json:"at,omitempty"`
}

// Saga is the answer to GET /sagas/{id} (and to the operator actions): the
// instance, its steps and its whole history.
type Saga struct {
	*saga.Instance
	// StepName names the step at index Step.
	StepName string `json:"step_name,omitempty"`
	// OrderID is the order whose saga this is (order sagas).
	OrderID  *uuid.UUID `json:"order_id,omitempty"`
	URL      string     `json:"url"`
	OrderURL string     `json:"order_url,omitempty"`
	// TraceID is the saga's OpenTelemetry trace (absent when it was
	// started with tracing off).
	TraceID string              `json:"trace_id,omitempty"`
	Steps   []Step              `json:"steps"`
	History []saga.HistoryEntry `json:"history"`
}

// SagaSummary is one saga in a list: the instance without its history.
type SagaSummary struct {
	*saga.Instance
	StepName string `json:"step_name,omitempty"`
	URL      string `json:"url"`
}

// SagaList is the answer to GET /sagas.
type SagaList struct {
	Sagas []SagaSummary `json:"sagas"`
	// Next is the after= of the next page; empty on the last page.
	Next string `json:"next"`
}

// stepNames lists a saga's steps in order: the engine's definition of
// its type; for a type this process does not define, the steps its
// history has seen, in order of first appearance.
func (s *server) stepNames(typ string, history []saga.HistoryEntry) []string {
	if names := s.cfg.Engine.Steps(typ); names != nil {
		return names
	}
	var names []string
	seen := map[string]bool{}
	for _, h := range history {
		if h.Step != "" && !seen[h.Step] {
			seen[h.Step] = true
			names = append(names, h.Step)
		}
	}
	return names
}

func stepName(names []string, i int) string {
	if i >= 0 && i < len(names) {
		return names[i]
	}
	return ""
}

// stepStatuses derives each step's latest status from the history.
func stepStatuses(names []string, history []saga.HistoryEntry) []Step {
	steps := make([]Step, len(names))
	index := map[string]int{}
	for i, n := range names {
		steps[i] = Step{Name: n, Status: StepPending}
		index[n] = i
	}
	for _, h := range history {
		i, ok := index[h.Step]
		if !ok || h.Kind == "" || h.Event == saga.EventStaleReply {
			continue // saga-level entries (started, completed …) and ignored replies
		}
		st := &steps[i]
		compensation := h.Kind == string(saga.KindCompensation)
		switch {
		case h.Event == saga.EventStuck:
			st.Status = StepStuck
		case h.Event == saga.EventOperatorResolved:
			st.Status = StepResolved
		case compensation && h.Event == saga.EventSucceeded:
			st.Status = StepCompensated
		case compensation:
			st.Status = StepCompensating // sent, refused or timed out: it is resent
		case h.Event == saga.EventSent:
			st.Status = StepRunning
		case h.Event == saga.EventSucceeded:
			st.Status = StepSucceeded
		case h.Event == saga.EventRefused:
			st.Status = StepRefused
		case h.Event == saga.EventTimedOut:
			st.Status = StepTimedOut // followed by a resend or a compensation, unless it has none
		}
		at := h.At
		st.Attempt, st.LastEvent, st.Reason, st.At = h.Attempt, h.Event, h.Reason, &at
	}
	return steps
}

// readTx runs fn in a read-only snapshot, so that an instance and its
// history agree.
func (s *server) readTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.cfg.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read only
	return fn(tx)
}

// errNoSaga is returned by sagaView when neither a saga nor an order has
// the id.
var errNoSaga = errors.New("no saga")

// sagaView reads saga id, or the saga of order id.
func (s *server) sagaView(ctx context.Context, id uuid.UUID) (*Saga, error) {
	var v Saga
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		in, err := saga.Get(ctx, tx, id)
		if errors.Is(err, saga.ErrNotFound) {
			o, oerr := order.Get(ctx, tx, id)
			if errors.Is(oerr, order.ErrNotFound) {
				return errNoSaga
			}
			if oerr != nil {
				return oerr
			}
			in, err = saga.Get(ctx, tx, o.SagaID)
		}
		if err != nil {
			return err
		}
		history, err := saga.History(ctx, tx, in.ID)
		if err != nil {
			return err
		}
		if history == nil {
			history = []saga.HistoryEntry{}
		}
		names := s.stepNames(in.Type, history)
		v = Saga{Instance: in, StepName: stepName(names, in.Step), URL: sagaURL(in.ID),
			Steps: stepStatuses(names, history), History: history}
		if v.TraceID, err = saga.TraceID(ctx, tx, in.ID); err != nil {
			return err
		}
		if in.Type == order.SagaType {
			oid, err := order.OrderIDOfSaga(ctx, tx, in.ID)
			switch {
			case err == nil:
				v.OrderID, v.OrderURL = &oid, orderURL(oid)
			case !errors.Is(err, order.ErrNotFound):
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &v, nil
}

// getSaga is GET /sagas/{id}; id may also be an order's.
func (s *server) getSaga(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r)
	if err != nil {
		return err
	}
	v, err := s.sagaView(r.Context(), id)
	if errors.Is(err, errNoSaga) {
		return notFound(fmt.Sprintf("no saga or order has id %s", id))
	}
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

var states = []saga.State{saga.Running, saga.Compensating, saga.Completed, saga.Compensated, saga.Failed, saga.Stuck}

// listSagas is GET /sagas: the saga filters (SagaFilterParams), limit,
// order (oldest, the default, or newest first) and after (the cursor).
func (s *server) listSagas(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	known := append([]string{"limit", "after", "order"}, SagaFilterParams...)
	for name, vs := range q {
		if !slices.Contains(known, name) {
			return badRequest(name, "is not a known query parameter ("+strings.Join(known, ", ")+")",
				fmt.Sprintf("unknown query parameter %q; GET /sagas takes %s", name, strings.Join(known, ", ")))
		}
		if len(vs) > 1 {
			return badRequest(name, "must be given once", fmt.Sprintf("query parameter %s is given %d times", name, len(vs)))
		}
	}
	f, found, err := SagaFilter(r.Context(), s.cfg.Pool, s.cfg.Engine, q, time.Now())
	var fe *FilterError
	if errors.As(err, &fe) {
		return badRequest(fe.Param, fe.Reason, fe.Error())
	}
	if err != nil {
		return storeError(err)
	}
	limit, err := listLimit(q)
	if err != nil {
		return err
	}
	switch q.Get("order") {
	case "", "oldest":
		f.Oldest = true
	case "newest":
	default:
		return badRequest("order", "must be oldest or newest", fmt.Sprintf("order %q is not oldest or newest", q.Get("order")))
	}
	if v := q.Get("after"); v != "" || q.Has("after") {
		id, err := uuid.Parse(v)
		if err != nil {
			return badRequest("after", "must be the next cursor of the previous page (a saga id)", fmt.Sprintf("after %q is not a saga id", v))
		}
		f.Cursor = &id
	}
	out := SagaList{Sagas: []SagaSummary{}}
	if !found {
		writeJSON(w, http.StatusOK, out)
		return nil
	}
	// One more than asked tells whether a next page exists.
	list, err := saga.Search(r.Context(), s.cfg.Pool, f, limit+1)
	if err != nil {
		return storeError(err)
	}
	if len(list) > limit {
		list = list[:limit]
		out.Next = list[limit-1].ID.String()
	}
	for _, in := range list {
		out.Sagas = append(out.Sagas, SagaSummary{Instance: in, StepName: stepName(s.stepNames(in.Type, nil), in.Step), URL: sagaURL(in.ID)})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// ResolveRequest is the body of POST /sagas/{id}/resolve.
type ResolveRequest struct {
	// Note says what the operator did by hand to undo the saga's remaining
	// steps; it is kept in the saga's history.
	Note string `json:"note"`
}

// RetryRequest is the optional body of POST /sagas/{id}/retry.
type RetryRequest struct {
	// Note says why the saga is retried (what was fixed); it is kept, with
	// the operator's name, in the saga's history.
	Note string `json:"note"`
}

// AbortRequest is the body of POST /sagas/{id}/abort.
type AbortRequest struct {
	// Note says why the saga is compensated now; it is kept, with the
	// operator's name, in the saga's history and becomes its reason.
	Note string `json:"note"`
}

// checkNote validates an operator's note; what says what it must tell.
func checkNote(note string, required bool, what string) error {
	switch {
	case required && strings.TrimSpace(note) == "":
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "note is required: " + what,
			Errors: []order.FieldError{{Field: "note", Reason: "is required"}}}
	case utf8.RuneCountInString(note) > MaxNoteLength:
		reason := fmt.Sprintf("is longer than %d characters", MaxNoteLength)
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "note " + reason, Errors: []order.FieldError{{Field: "note", Reason: reason}}}
	}
	return nil
}

// retrySaga is POST /sagas/{id}/retry.
func (s *server) retrySaga(w http.ResponseWriter, r *http.Request) error {
	if _, err := pathID(r); err != nil {
		return err
	}
	var req RetryRequest
	if r.ContentLength != 0 { // the body is optional
		if err := s.decodeJSON(w, r, &req, reflect.TypeFor[RetryRequest]()); err != nil {
			return err
		}
		if err := checkNote(req.Note, false, ""); err != nil {
			return err
		}
	}
	return s.operate(w, r, "retry", func(ctx context.Context, id uuid.UUID) error {
		_, err := s.cfg.Engine.Retry(ctx, id, resolutionNote(operatorName(ctx), req.Note))
		return err
	})
}

// abortSaga is POST /sagas/{id}/abort.
func (s *server) abortSaga(w http.ResponseWriter, r *http.Request) error {
	if _, err := pathID(r); err != nil {
		return err
	}
	var req AbortRequest
	if err := s.decodeJSON(w, r, &req, reflect.TypeFor[AbortRequest]()); err != nil {
		return err
	}
	if err := checkNote(req.Note, true, "say why the saga is compensated now"); err != nil {
		return err
	}
	return s.operate(w, r, "abort", func(ctx context.Context, id uuid.UUID) error {
		_, err := s.cfg.Engine.Abort(ctx, id, resolutionNote(operatorName(ctx), req.Note))
		return err
	})
}

// resolveSaga is POST /sagas/{id}/resolve.
func (s *server) resolveSaga(w http.ResponseWriter, r *http.Request) error {
	if _, err := pathID(r); err != nil {
		return err
	}
	var req ResolveRequest
	if err := s.decodeJSON(w, r, &req, reflect.TypeFor[ResolveRequest]()); err != nil {
		return err
	}
	if err := checkNote(req.Note, true, "say what was done by hand to undo the saga's remaining steps"); err != nil {
		return err
	}
	return s.operate(w, r, "resolve", func(ctx context.Context, id uuid.UUID) error {
		_, err := s.cfg.Engine.Resolve(ctx, id, resolutionNote(operatorName(ctx), req.Note))
		return err
	})
}

// resolutionNote is the reason the history keeps for a resolution: the
// operator's note, after the name of who resolved (the engine has no field
// for it).
func resolutionNote(who, note string) string {
	switch {
	case who == "":
		return note
	case note == "":
		return "operator " + who
	}
	return "operator " + who + ": " + note
}

// operate runs an operator action on saga {id} (or the saga of order {id})
// and answers the saga as it is afterwards. Every attempt that reaches a
// saga is logged with who made it.
func (s *server) operate(w http.ResponseWriter, r *http.Request, name string, action func(ctx context.Context, id uuid.UUID) error) error {
	ctx := r.Context()
	id, err := pathID(r)
	if err != nil {
		return err
	}
	sagaID := id
	err = action(ctx, sagaID)
	if errors.Is(err, saga.ErrNotFound) {
		o, oerr := order.Get(ctx, s.cfg.Pool, id)
		switch {
		case errors.Is(oerr, order.ErrNotFound):
			return notFound(fmt.Sprintf("no saga or order has id %s", id))
		case oerr != nil:
			return storeError(oerr)
		}
		sagaID = o.SagaID
		err = action(ctx, sagaID)
	}
	outcome := "done"
	switch {
	case errors.Is(err, saga.ErrNotFound):
		return notFound(fmt.Sprintf("no saga has id %s", sagaID))
	case errors.Is(err, saga.ErrConflict):
		outcome = "refused: " + err.Error()
	case err != nil:
		outcome = "failed"
	}
	s.log.InfoContext(ctx, "operator action", "action", name, "saga", sagaID, "operator", operatorName(ctx), "outcome", outcome)
	switch {
	case errors.Is(err, saga.ErrConflict):
		return &Problem{Type: TypeConflict, Title: "Conflict", Status: http.StatusConflict,
			Detail: strings.TrimSuffix(err.Error(), ": "+saga.ErrConflict.Error())}
	case err != nil:
		return storeError(err)
	}
	v, err := s.sagaView(ctx, sagaID)
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// listLimit reads a list's limit= (DefaultListLimit without it).
func listLimit(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" && !q.Has("limit") {
		return DefaultListLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxListLimit {
		reason := fmt.Sprintf("must be a whole number from 1 to %d", MaxListLimit)
		return 0, badRequest("limit", reason, fmt.Sprintf("limit %q %s", v, reason))
	}
	return n, nil
}
