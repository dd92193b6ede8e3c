package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

// MaxBatch bounds the sagas one batch action changes.
const MaxBatch = 1000

// BatchRequest is the body of POST /batch/{action}: which sagas (every
// field given must match; at least one is required), the note kept in each
// saga's history, and whether only to count them.
type BatchRequest struct {
	// Q is a bare id: a saga id, order id, idempotency key or customer id.
	Q     string     `json:"q,omitempty"`
	State saga.State `json:"state,omitempty"`
	Type  string     `json:"type,omitempty"`
	// Step is the name of the step the sagas are on.
	Step string `json:"step,omitempty"`
	// CreatedBefore selects sagas created before it (RFC 3339).
	CreatedBefore  *time.Time `json:"created_before,omitempty"`
	ReasonContains string     `json:"reason_contains,omitempty"`
	Note           string     `json:"note,omitempty"`
	DryRun         bool       `json:"dry_run,omitempty"`
}

// BatchResult is the answer to POST /batch/{action}.
type BatchResult struct {
	Action  string `json:"action"`
	Matched int    `json:"matched"`
	DryRun  bool   `json:"dry_run"`
	// Done, Conflicts and Failed count the sagas the action changed, those
	// that had moved on to a state that does not allow it, and errors.
	Done      int         `json:"done"`
	Conflicts int         `json:"conflicts"`
	Failed    int         `json:"failed"`
	Sagas     []uuid.UUID `json:"sagas"`
}

// batchSagas is POST /batch/{action}: an operator action on every saga a
// filter matches (at most MaxBatch), or with dry_run only their count.
func (s *server) batchSagas(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	action := r.PathValue("action")
	do := map[string]func(context.Context, uuid.UUID, string) (*saga.Instance, error){
		"retry": s.cfg.Engine.Retry, "resolve": s.cfg.Engine.Resolve, "abort": s.cfg.Engine.Abort}[action]
	if do == nil {
		return notFound(fmt.Sprintf("no batch action %q: retry, resolve or abort", action))
	}
	var req BatchRequest
	if err := s.decodeJSON(w, r, &req, reflect.TypeFor[BatchRequest]()); err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"q": req.Q, "state": string(req.State), "type": req.Type, "step": req.Step, "reason": req.ReasonContains} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if req.CreatedBefore != nil {
		q.Set("created_before", req.CreatedBefore.Format(time.RFC3339Nano))
	}
	f, found, err := SagaFilter(ctx, s.cfg.Pool, s.cfg.Engine, q, time.Now())
	var fe *FilterError
	if errors.As(err, &fe) {
		field := map[string]string{"reason": "reason_contains"}[fe.Param]
		if field == "" {
			field = fe.Param
		}
		return badRequest(field, fe.Reason, fe.Error())
	}
	if err != nil {
		return storeError(err)
	}
	if !Filtered(f) && req.Q == "" {
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "say which sagas: q, state, type, step, created_before or reason_contains"}
	}
	if !req.DryRun {
		if err := checkNote(req.Note, true, "say why, it is kept in each saga's history"); err != nil {
			return err
		}
	}
	var list []*saga.Instance
	if found {
		if list, err = saga.Search(ctx, s.cfg.Pool, f, MaxBatch); err != nil {
			return storeError(err)
		}
	}
	out := BatchResult{Action: action, Matched: len(list), DryRun: req.DryRun, Sagas: []uuid.UUID{}}
	for _, in := range list {
		out.Sagas = append(out.Sagas, in.ID)
	}
	if !req.DryRun {
		note := resolutionNote(operatorName(ctx), req.Note)
		for _, in := range list {
			_, err := do(ctx, in.ID, note)
			switch {
			case err == nil:
				out.Done++
			case errors.Is(err, saga.ErrConflict):
				out.Conflicts++
			default:
				out.Failed++
				s.log.ErrorContext(ctx, "batch action failed on a saga", "action", action, "saga", in.ID, "err", err)
			}
		}
		s.log.InfoContext(ctx, "operator action", "action", "batch "+action, "operator", operatorName(ctx),
			"matched", out.Matched, "done", out.Done, "conflicts", out.Conflicts, "failed", out.Failed)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
