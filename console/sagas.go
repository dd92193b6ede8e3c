package console

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// Page sizes and bounds.
const (
	sagaPage    = 50
	historyPage = 200
	// maxTimelineEvents bounds the events the timeline draws, so that a
	// saga with a huge history still opens at once (the table pages).
	maxTimelineEvents = 2000
	// maxBatch bounds the sagas one batch action changes.
	maxBatch = 1000
)

// sagaRow is one saga in a list.
type sagaRow struct {
	*saga.Instance
	StepName string
}

type sagasData struct {
	Query    url.Values
	Rows     []sagaRow
	Next     string
	States   []saga.State
	Types    []string
	Steps    []string
	Searched string
	// NoMatch is set when a search found nothing.
	NoMatch bool
}

// sagaFilter reads the filters of the saga list (and of batch actions)
// from q: the API's, api.SagaFilter.
func (s *server) sagaFilter(ctx context.Context, q url.Values) (saga.Filter, bool, error) {
	f, found, err := api.SagaFilter(ctx, s.cfg.Pool, s.cfg.Engine, q, time.Now())
	var fe *api.FilterError
	if errors.As(err, &fe) {
		return f, false, fail(http.StatusBadRequest, "%s", fe.Error())
	}
	return f, found, err
}

func (s *server) stepName(in *saga.Instance) string {
	steps := s.cfg.Engine.Steps(in.Type)
	if in.Step >= 0 && in.Step < len(steps) {
		return steps[in.Step]
	}
	return fmt.Sprintf("#%d", in.Step)
}

func (s *server) sagas(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	ctx := r.Context()
	q := r.URL.Query()
	f, found, err := s.sagaFilter(ctx, q)
	if err != nil {
		return "", view{}, err
	}
	d := sagasData{Query: q, States: allStates, Types: s.cfg.Engine.Types(), Searched: q.Get("q")}
	for _, typ := range d.Types {
		for _, st := range s.cfg.Engine.Steps(typ) {
			if !slices.Contains(d.Steps, st) {
				d.Steps = append(d.Steps, st)
			}
		}
	}
	if !found {
		d.NoMatch = true
		return "sagas", view{Title: "Sagas", Nav: "sagas", Data: d}, nil
	}
	if c := q.Get("before"); c != "" {
		id, err := uuid.Parse(c)
		if err != nil {
			return "", view{}, fail(http.StatusBadRequest, "before %q is not a page cursor", c)
		}
		f.Cursor = &id
	}
	list, err := saga.Search(ctx, s.cfg.Pool, f, sagaPage+1)
	if err != nil {
		return "", view{}, err
	}
	if len(list) > sagaPage {
		list = list[:sagaPage]
		next := cloneValues(q)
		next.Set("before", list[len(list)-1].ID.String())
		d.Next = next.Encode()
	}
	for _, in := range list {
		d.Rows = append(d.Rows, sagaRow{Instance: in, StepName: s.stepName(in)})
	}
	return "sagas", view{Title: "Sagas", Nav: "sagas", Data: d}, nil
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		out[k] = slices.Clone(v)
	}
	return out
}

type sagaData struct {
	*saga.Instance
	StepName    string
	Steps       []string
	Order       *order.Order
	Timeline    template.HTML
	Clipped     bool
	History     []saga.HistoryEntry
	HistoryLen  int64
	NextHistory string
	DeadLetters []deadletter.DeadLetter
	Actions     []string
	// TraceID is the saga's trace (tracing on); TraceLink its page in the
	// trace backend (Config.TraceURL); TraceDrawn says the console draws it
	// (Config.Traces).
	TraceID, TraceLink string
	TraceDrawn         bool
}

// actionsFor lists the actions a saga in state st allows.
func actionsFor(st saga.State) []string {
	switch st {
	case saga.Running:
		return []string{"abort"}
	case saga.Stuck:
		return []string{"retry", "resolve"}
	}
	return nil
}

func (s *server) saga(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	ctx := r.Context()
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return "", view{}, fail(http.StatusBadRequest, "%q is not a saga id", r.PathValue("id"))
	}
	in, err := saga.Get(ctx, s.cfg.Pool, id)
	if errors.Is(err, saga.ErrNotFound) {
		return "", view{}, fail(http.StatusNotFound, "no saga has id %s", id)
	}
	if err != nil {
		return "", view{}, err
	}
	d := sagaData{Instance: in, StepName: s.stepName(in), Steps: s.cfg.Engine.Steps(in.Type), Actions: actionsFor(in.State)}
	// The timeline draws the first maxTimelineEvents; the table pages.
	all, total, err := saga.HistoryPage(ctx, s.cfg.Pool, id, 0, maxTimelineEvents)
	if err != nil {
		return "", view{}, err
	}
	d.HistoryLen, d.Clipped = total, total > int64(len(all))
	d.Timeline = timeline(in, d.Steps, all, time.Now())
	after, _ := strconv.ParseInt(r.URL.Query().Get("after"), 10, 64)
	page, _, err := saga.HistoryPage(ctx, s.cfg.Pool, id, after, historyPage+1)
	if err != nil {
		return "", view{}, err
	}
	if len(page) > historyPage {
		page = page[:historyPage]
		d.NextHistory = strconv.FormatInt(page[len(page)-1].Seq, 10)
	}
	d.History = page
	if oid, err := order.OrderIDOfSaga(ctx, s.cfg.Pool, id); err == nil {
		if d.Order, err = order.Get(ctx, s.cfg.Pool, oid); err != nil {
			return "", view{}, err
		}
	} else if !errors.Is(err, order.ErrNotFound) {
		return "", view{}, err
	}
	if d.TraceID, err = saga.TraceID(ctx, s.cfg.Pool, id); err != nil {
		return "", view{}, err
	}
	if d.TraceID != "" && s.cfg.TraceURL != "" {
		d.TraceLink = strings.ReplaceAll(s.cfg.TraceURL, "{trace_id}", d.TraceID)
	}
	d.TraceDrawn = d.TraceID != "" && s.cfg.Traces != nil
	if s.cfg.DeadLetters != nil {
		if d.DeadLetters, err = s.cfg.DeadLetters.List(ctx, deadletter.Filter{SagaID: id}, 50); err != nil {
			return "", view{}, err
		}
	}
	return "saga", view{Title: "Saga " + id.String(), Nav: "sagas", Data: d, Flash: r.URL.Query().Get("done")}, nil
}

// confirmData is a confirmation page: what will happen, then a form with
// a reason and an operator token.
type confirmData struct {
	Action  string
	What    string
	Count   int64
	Post    string
	Hidden  url.Values
	Summary []string
	Done    bool
}

// sagaActions are the engine's operator actions by name.
func (s *server) sagaAction(name string) (func(ctx context.Context, id uuid.UUID, note string) (*saga.Instance, error), bool) {
	switch name {
	case "retry":
		return s.cfg.Engine.Retry, true
	case "resolve":
		return s.cfg.Engine.Resolve, true
	case "abort":
		return s.cfg.Engine.Abort, true
	}
	return nil, false
}

var actionText = map[string]string{
	"retry":   "send the stuck compensation again, with fresh attempts",
	"resolve": "end the stuck saga as compensated: say what was undone by hand",
	"abort":   "compensate the running saga now, its current step included",
}

func (s *server) confirmSaga(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	action := r.PathValue("action")
	if _, ok := s.sagaAction(action); !ok {
		return "", view{}, fail(http.StatusNotFound, "no action %q", action)
	}
	if s.cfg.ReadOnly {
		return "", view{}, fail(http.StatusForbidden, "the console is read-only: actions are refused")
	}
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return "", view{}, fail(http.StatusBadRequest, "%q is not a saga id", r.PathValue("id"))
	}
	in, err := saga.Get(r.Context(), s.cfg.Pool, id)
	if errors.Is(err, saga.ErrNotFound) {
		return "", view{}, fail(http.StatusNotFound, "no saga has id %s", id)
	}
	if err != nil {
		return "", view{}, err
	}
	d := confirmData{Action: action, Count: 1, Post: fmt.Sprintf("%s/sagas/%s/%s", s.cfg.Base, id, action),
		What: fmt.Sprintf("%s saga %s (%s, on step %s): %s.", action, id, in.State, s.stepName(in), actionText[action])}
	return "confirm", view{Title: "Confirm " + action, Nav: "sagas", Data: d}, nil
}

func (s *server) actSaga(w http.ResponseWriter, r *http.Request) (string, view, error) {
	action := r.PathValue("action")
	do, ok := s.sagaAction(action)
	if !ok {
		return "", view{}, fail(http.StatusNotFound, "no action %q", action)
	}
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return "", view{}, fail(http.StatusBadRequest, "%q is not a saga id", r.PathValue("id"))
	}
	who, reason, err := s.operator(r)
	if err != nil {
		return "", view{}, err
	}
	_, err = do(r.Context(), id, "operator "+who+": "+reason)
	s.log.Info("operator action", "action", action, "saga", id, "operator", who, "err", err)
	switch {
	case errors.Is(err, saga.ErrConflict):
		return "", view{}, fail(http.StatusConflict, "%s", strings.TrimSuffix(err.Error(), ": "+saga.ErrConflict.Error()))
	case errors.Is(err, saga.ErrNotFound):
		return "", view{}, fail(http.StatusNotFound, "no saga has id %s", id)
	case err != nil:
		return "", view{}, err
	}
	http.Redirect(w, r, fmt.Sprintf("%s/sagas/%s?done=%s", s.cfg.Base, id, url.QueryEscape(action+" done by "+who)), http.StatusSeeOther)
	return "", view{}, nil
}

// confirmBatch counts the sagas a batch action would change (the dry run)
// and asks for confirmation.
func (s *server) confirmBatch(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	action := r.PathValue("action")
	if _, ok := s.sagaAction(action); !ok {
		return "", view{}, fail(http.StatusNotFound, "no action %q", action)
	}
	if s.cfg.ReadOnly {
		return "", view{}, fail(http.StatusForbidden, "the console is read-only: actions are refused")
	}
	q := r.URL.Query()
	f, found, err := s.sagaFilter(r.Context(), q)
	if err != nil {
		return "", view{}, err
	}
	var n int64
	if found {
		list, err := saga.Search(r.Context(), s.cfg.Pool, f, maxBatch)
		if err != nil {
			return "", view{}, err
		}
		n = int64(len(list))
	}
	d := confirmData{Action: action, Count: n, Post: s.cfg.Base + "/batch/" + action, Hidden: pick(q, api.SagaFilterParams),
		What: fmt.Sprintf("%s %d saga(s) matching %s (at most %d at once): %s.", action, n, describe(q), maxBatch, actionText[action])}
	return "confirm", view{Title: "Confirm batch " + action, Nav: "sagas", Data: d}, nil
}

func (s *server) actBatch(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	action := r.PathValue("action")
	do, ok := s.sagaAction(action)
	if !ok {
		return "", view{}, fail(http.StatusNotFound, "no action %q", action)
	}
	who, reason, err := s.operator(r)
	if err != nil {
		return "", view{}, err
	}
	q := pick(r.PostForm, api.SagaFilterParams)
	f, found, err := s.sagaFilter(r.Context(), q)
	if err != nil {
		return "", view{}, err
	}
	d := confirmData{Action: action, Done: true}
	if found {
		list, err := saga.Search(r.Context(), s.cfg.Pool, f, maxBatch)
		if err != nil {
			return "", view{}, err
		}
		var okN, conflicts, failed int
		for _, in := range list {
			_, err := do(r.Context(), in.ID, "operator "+who+" (batch): "+reason)
			switch {
			case err == nil:
				okN++
			case errors.Is(err, saga.ErrConflict):
				conflicts++
			default:
				failed++
				d.Summary = append(d.Summary, fmt.Sprintf("saga %s: %v", in.ID, err))
			}
		}
		d.Count = int64(okN)
		d.What = fmt.Sprintf("%s done on %d of %d saga(s) matching %s; %d had moved on (conflict), %d failed.", action, okN, len(list), describe(q), conflicts, failed)
		s.log.Info("operator action", "action", "batch "+action, "operator", who, "matched", len(list), "done", okN, "conflicts", conflicts, "failed", failed)
	} else {
		d.What = "no saga matches " + describe(q) + "; nothing done."
	}
	return "confirm", view{Title: "Batch " + action, Nav: "sagas", Data: d}, nil
}

// pick returns the non-empty values of in under keys: the filters an
// action's confirmation form carries (api.SagaFilterParams for sagas,
// deadletter.FilterParams for dead letters).
func pick(in url.Values, keys []string) url.Values {
	out := url.Values{}
	for _, k := range keys {
		if v := in.Get(k); v != "" {
			out.Set(k, v)
		}
	}
	return out
}

func describe(q url.Values) string {
	var parts []string
	for _, k := range api.SagaFilterParams {
		if v := q.Get(k); v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	if len(parts) == 0 {
		return "every saga"
	}
	return strings.Join(parts, ", ")
}
