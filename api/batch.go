package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
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
	f := saga.Filter{State: req.State, Type: req.Type, ReasonContains: req.ReasonContains}
	if req.State != "" && !req.State.Valid() {
		return badRequest("state", "is not a saga state", fmt.Sprintf("state %q is not a saga state", req.State))
	}
	if req.CreatedBefore != nil {
		f.CreatedBefore = *req.CreatedBefore
	}
	if req.Step != "" {
		i := -1
		for _, typ := range s.cfg.Engine.Types() {
			if req.Type == "" || req.Type == typ {
				if j := slices.Index(s.cfg.Engine.Steps(typ), req.Step); j >= 0 {
					i = j
				}
			}
		}
		if i < 0 {
			return badRequest("step", "is not a step of any saga type", fmt.Sprintf("no saga type has a step %q", req.Step))
		}
		f.Step = &i
	}
	if f.State == "" && f.Type == "" && f.Step == nil && f.CreatedBefore.IsZero() && f.ReasonContains == "" {
		return &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "say which sagas: state, type, step, created_before or reason_contains"}
	}
	if !req.DryRun {
		if err := checkNote(req.Note, true, "say why, it is kept in each saga's history"); err != nil {
			return err
		}
	}
	list, err := saga.Search(ctx, s.cfg.Pool, f, MaxBatch)
	if err != nil {
		return storeError(err)
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
