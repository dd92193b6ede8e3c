package api

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// SagaFilterParams are the saga filters that GET /sagas, the console's saga
// list and its batch actions, and the CLI's `sagaflow sagas` share: q (a
// bare id: saga id, order id, idempotency key or customer id), state, type,
// step (a step name), age (a duration: sagas created longer ago),
// created_before (RFC 3339) and reason (text the reason contains).
var SagaFilterParams = []string{"q", "state", "type", "step", "age", "created_before", "reason"}

// MaxSearchIDs bounds the sagas a search by a bare id finds (a customer id
// may name many orders).
const MaxSearchIDs = 1000

// FilterError is a saga filter parameter that is not understood.
type FilterError struct {
	Param  string
	Reason string
}

func (e *FilterError) Error() string { return e.Param + " " + e.Reason }

// SagaFilter reads the saga filters (SagaFilterParams) from q. With q= it
// looks the id up; found is false when that matched nothing (the filter
// would match everything without its ids). Step names are resolved by the
// engine's definitions.
func SagaFilter(ctx context.Context, db saga.Querier, engine *saga.Engine, q url.Values, now time.Time) (f saga.Filter, found bool, err error) {
	if st := saga.State(q.Get("state")); st != "" {
		if !st.Valid() {
			return f, false, &FilterError{"state", fmt.Sprintf("%q is not a saga state (%s)", st, stateNames())}
		}
		f.State = st
	}
	f.Type = q.Get("type")
	if f.Type != "" && engine.Steps(f.Type) == nil {
		return f, false, &FilterError{"type", fmt.Sprintf("%q is not a saga type (%s)", f.Type, strings.Join(engine.Types(), ", "))}
	}
	if step := q.Get("step"); step != "" {
		i, err := engine.StepIndex(f.Type, step)
		if err != nil {
			return f, false, &FilterError{"step", err.Error()}
		}
		f.Step = &i
	}
	if age := q.Get("age"); age != "" {
		d, err := time.ParseDuration(age)
		if err != nil || d < 0 {
			return f, false, &FilterError{"age", fmt.Sprintf("%q is not a duration such as 5m or 2h", age)}
		}
		f.CreatedBefore = now.Add(-d)
	}
	if cb := q.Get("created_before"); cb != "" {
		t, err := time.Parse(time.RFC3339Nano, cb)
		if err != nil {
			return f, false, &FilterError{"created_before", fmt.Sprintf("%q is not an RFC 3339 time such as 2026-12-03T08:00:00Z", cb)}
		}
		if f.CreatedBefore.IsZero() || t.Before(f.CreatedBefore) {
			f.CreatedBefore = t
		}
	}
	f.ReasonContains = q.Get("reason")
	search := strings.TrimSpace(q.Get("q"))
	if search == "" {
		return f, true, nil
	}
	ids, err := order.FindSagas(ctx, db, search, MaxSearchIDs)
	if err != nil {
		return f, false, err
	}
	f.IDs = ids
	return f, len(ids) > 0, nil
}

// Filtered reports whether f selects anything narrower than every saga.
func Filtered(f saga.Filter) bool {
	return f.State != "" || f.Type != "" || f.Step != nil || !f.CreatedBefore.IsZero() || f.ReasonContains != "" || len(f.IDs) > 0
}

func stateNames() string {
	names := make([]string, len(states))
	for i, st := range states {
		names[i] = string(st)
	}
	return strings.Join(names, ", ")
}
