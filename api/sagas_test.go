package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/overview"
	"github.com/sagaflow/sagaflow/saga"
)

// reply hands the engine a participant's reply, as the orchestrator would.
func (e *env) reply(sagaID uuid.UUID, step string, kind saga.Kind, attempt int, outcome saga.Outcome, reason string) {
	e.t.Helper()
	payload, err := json.Marshal(saga.Reply{SagaID: sagaID, Step: step, Kind: kind, Attempt: attempt, Outcome: outcome, Reason: reason})
	if err != nil {
		e.t.Fatal(err)
	}
	msg := message.NewMessage(uuid.NewString(), payload)
	msg.Metadata.Set(outbox.HeaderType, saga.ReplyType)
	msg.Metadata.Set(outbox.HeaderSchemaVersion, "1")
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if err := e.engine.HandleReply(ctx, tx, msg); err != nil {
		e.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// saga reads GET /sagas/{id}.
func (e *env) saga(id uuid.UUID) *api.Saga {
	e.t.Helper()
	res := e.do(http.MethodGet, "/sagas/"+id.String(), "")
	if res.status != http.StatusOK {
		e.t.Fatalf("GET /sagas/%s: status %d: %s", id, res.status, res.body)
	}
	var s api.Saga
	res.decode(e.t, &s)
	return &s
}

// listSagas reads GET /sagas{query}.
func (e *env) listSagas(query string) api.SagaList {
	e.t.Helper()
	res := e.do(http.MethodGet, "/sagas"+query, "")
	if res.status != http.StatusOK {
		e.t.Fatalf("GET /sagas%s: %d: %s", query, res.status, res.body)
	}
	var l api.SagaList
	res.decode(e.t, &l)
	return l
}

// stepStatuses lists name=status of each step.
func stepStatuses(s *api.Saga) string {
	var parts []string
	for _, st := range s.Steps {
		parts = append(parts, st.Name+"="+st.Status)
	}
	return strings.Join(parts, " ")
}

func TestGetSaga(t *testing.T) {
	t.Parallel()
	e := setup(t)
	placed := e.mustPlace("k", orderJSON(t))

	s := e.saga(placed.SagaID)
	if s.Instance == nil || s.ID != placed.SagaID || s.Type != order.SagaType || s.State != saga.Running || s.Step != 0 ||
		s.StepName != order.StepInventory || s.Attempt != 1 || s.StepDeadline == nil || s.Deadline.IsZero() || s.CreatedAt.IsZero() {
		t.Fatalf("saga %+v", s)
	}
	if s.OrderID == nil || *s.OrderID != placed.OrderID || s.OrderURL != placed.StatusURL || s.URL != placed.SagaURL {
		t.Errorf("links: order %v %q, url %q", s.OrderID, s.OrderURL, s.URL)
	}
	var data order.Data
	if err := json.Unmarshal(s.Data, &data); err != nil || data.OrderID != placed.OrderID || data.CustomerID != "cust-42" {
		t.Errorf("data %s (%v)", s.Data, err)
	}
	if got, want := stepStatuses(s), "inventory=running payment=pending shipping=pending"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	var cmdID uuid.UUID
	if err := e.pool.QueryRow(context.Background(), `SELECT id FROM saga.outbox`).Scan(&cmdID); err != nil {
		t.Fatal(err)
	}
	if len(s.History) != 2 || s.History[0].Event != saga.EventStarted || s.History[1].Event != saga.EventSent ||
		s.History[1].Kind != string(saga.KindAction) || s.History[1].Attempt != 1 || s.History[1].Reason != order.TypeReserve ||
		s.History[1].MessageID == nil || *s.History[1].MessageID != cmdID || s.History[1].At.IsZero() {
		t.Errorf("history %+v", s.History)
	}

	// The order's id finds its saga too.
	if byOrder := e.saga(placed.OrderID); byOrder.ID != placed.SagaID {
		t.Errorf("GET /sagas/{order id} answered saga %s, want %s", byOrder.ID, placed.SagaID)
	}

	// Inventory reserves, payment refuses: the saga compensates inventory.
	e.reply(placed.SagaID, order.StepInventory, saga.KindAction, 1, saga.Succeeded, "")
	s = e.saga(placed.SagaID)
	if s.State != saga.Running || s.StepName != order.StepPayment || s.Completed != 1 {
		t.Errorf("after inventory: %s at %s, %d completed", s.State, s.StepName, s.Completed)
	}
	if got, want := stepStatuses(s), "inventory=succeeded payment=running shipping=pending"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	e.reply(placed.SagaID, order.StepPayment, saga.KindAction, 1, saga.Refused, "card declined")
	s = e.saga(placed.SagaID)
	if s.State != saga.Compensating || s.StepName != order.StepInventory || !strings.Contains(s.Reason, "card declined") {
		t.Errorf("after the refusal: %s at %s, reason %q", s.State, s.StepName, s.Reason)
	}
	if got, want := stepStatuses(s), "inventory=compensating payment=refused shipping=pending"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	if s.Steps[1].Reason != "card declined" || s.Steps[1].LastEvent != saga.EventRefused || s.Steps[1].At == nil {
		t.Errorf("payment step %+v", s.Steps[1])
	}

	// A late duplicate is recorded and changes nothing.
	e.reply(placed.SagaID, order.StepPayment, saga.KindAction, 1, saga.Refused, "card declined")
	s2 := e.saga(placed.SagaID)
	if stepStatuses(s2) != stepStatuses(s) || len(s2.History) != len(s.History)+1 ||
		s2.History[len(s2.History)-1].Event != saga.EventStaleReply {
		t.Errorf("a stale reply changed the saga: %s, history %+v", stepStatuses(s2), s2.History)
	}

	e.reply(placed.SagaID, order.StepInventory, saga.KindCompensation, 1, saga.Succeeded, "")
	s = e.saga(placed.OrderID)
	if s.State != saga.Compensated || s.EndedAt == nil {
		t.Errorf("after the compensation: %s, ended %v", s.State, s.EndedAt)
	}
	if got, want := stepStatuses(s), "inventory=compensated payment=refused shipping=pending"; got != want {
		t.Errorf("steps %s, want %s", got, want)
	}
	var o api.Order
	e.do(http.MethodGet, placed.StatusURL, "").decode(t, &o)
	if o.Order == nil || o.Status != order.Cancelled || !strings.Contains(o.Reason, "card declined") {
		t.Errorf("order %+v", o.Order)
	}

	if p := e.do(http.MethodGet, "/sagas/"+uuid.NewString(), "").problem(t, http.StatusNotFound); p.Type != api.TypeNotFound {
		t.Errorf("unknown saga: %+v", p)
	}
	if p := e.do(http.MethodGet, "/sagas/42", "").problem(t, http.StatusBadRequest); p.Field != "id" {
		t.Errorf("bad id: %+v", p)
	}
}

func TestListSagas(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var ids []uuid.UUID
	for i := range 7 {
		ids = append(ids, e.mustPlace("key-"+string(rune('a'+i)), orderJSON(t, set("customer_id", "c"+string(rune('a'+i))))).SagaID)
	}
	list := e.listSagas

	// Pages of 3: 3 + 3 + 1, in id order, nothing twice, next empty at the end.
	var got []uuid.UUID
	var sizes []int
	query := "?limit=3"
	for page := 0; ; page++ {
		if page > 3 {
			t.Fatal("paging does not end")
		}
		l := list(query)
		sizes = append(sizes, len(l.Sagas))
		for _, s := range l.Sagas {
			if s.Instance == nil || s.State != saga.Running || s.StepName != order.StepInventory || s.URL != "/sagas/"+s.ID.String() {
				t.Errorf("summary %+v", s)
			}
			got = append(got, s.ID)
		}
		if l.Next == "" {
			break
		}
		if l.Next != got[len(got)-1].String() {
			t.Errorf("next %s is not the page's last saga", l.Next)
		}
		query = "?limit=3&after=" + l.Next
	}
	if len(sizes) != 3 || sizes[0] != 3 || sizes[1] != 3 || sizes[2] != 1 {
		t.Errorf("page sizes %v, want [3 3 1]", sizes)
	}
	if len(got) != len(ids) {
		t.Fatalf("listed %d sagas, want %d", len(got), len(ids))
	}
	seen := map[uuid.UUID]bool{}
	for i, id := range got {
		if seen[id] {
			t.Errorf("saga %s listed twice", id)
		}
		seen[id] = true
		if i > 0 && strings.Compare(got[i-1].String(), id.String()) >= 0 {
			t.Errorf("sagas out of order: %s before %s", got[i-1], id)
		}
	}
	for _, id := range ids {
		if !seen[id] {
			t.Errorf("saga %s not listed", id)
		}
	}

	// A page that holds the rest exactly has no next.
	if l := list("?limit=7"); len(l.Sagas) != 7 || l.Next != "" {
		t.Errorf("limit=7: %d sagas, next %q", len(l.Sagas), l.Next)
	}
	if l := list(""); len(l.Sagas) != 7 || l.Next != "" {
		t.Errorf("default limit: %d sagas, next %q", len(l.Sagas), l.Next)
	}

	// By state.
	e.exec(`UPDATE saga.instances SET state = 'stuck' WHERE id = ANY($1)`, ids[1:3])
	if l := list("?state=stuck"); len(l.Sagas) != 2 || l.Sagas[0].ID != ids[1] || l.Sagas[1].ID != ids[2] || l.Next != "" {
		t.Errorf("stuck: %+v", l)
	}
	if l := list("?state=running&limit=500"); len(l.Sagas) != 5 {
		t.Errorf("running: %d sagas", len(l.Sagas))
	}
	if l := list("?state=completed"); len(l.Sagas) != 0 || l.Sagas == nil {
		t.Errorf("completed: %+v", l)
	}
}

func TestListSagasRejectsBadParameters(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cases := []struct{ name, query, field string }{
		{"unknown state", "?state=done", "state"},
		{"upper-case state", "?state=STUCK", "state"},
		{"zero limit", "?limit=0", "limit"},
		{"negative limit", "?limit=-1", "limit"},
		{"limit over the maximum", "?limit=501", "limit"},
		{"limit not a number", "?limit=ten", "limit"},
		{"empty limit", "?limit=", "limit"},
		{"bad cursor", "?after=page2", "after"},
		{"empty cursor", "?after=", "after"},
		{"unknown parameter", "?status=stuck", "status"},
		{"repeated state", "?state=stuck&state=running", "state"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := e.do(http.MethodGet, "/sagas"+tc.query, "").problem(t, http.StatusBadRequest)
			if p.Field != tc.field || p.Type != api.TypeInvalidRequest || p.Detail == "" {
				t.Errorf("problem %+v, want field %s", p, tc.field)
			}
		})
	}
}

func TestRetryAndResolve(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t))
	a := e.mustPlace("a", orderJSON(t))
	b := e.mustPlace("b", orderJSON(t, set("customer_id", "other")))
	auth := []string{"Authorization", "Bearer " + aliceToken}
	jsonCT := append([]string{"Content-Type", "application/json"}, auth...)
	note := `{"note": "released the reservation by hand"}`

	// Not stuck: 409.
	for _, path := range []string{"/retry", "/resolve"} {
		p := e.do(http.MethodPost, "/sagas/"+a.SagaID.String()+path, note, jsonCT...).problem(t, http.StatusConflict)
		if p.Type != api.TypeConflict || !strings.Contains(p.Detail, "running") {
			t.Errorf("%s of a running saga: %+v", path, p)
		}
		e.do(http.MethodPost, "/sagas/"+uuid.NewString()+path, note, jsonCT...).problem(t, http.StatusNotFound)
		e.do(http.MethodPost, "/sagas/nope"+path, note, jsonCT...).problem(t, http.StatusBadRequest)
	}

	// Bad resolve bodies.
	for _, tc := range []struct {
		body, contentType string
		status            int
		field             string
	}{
		{`{}`, "application/json", 422, "note"},
		{`{"note": "  "}`, "application/json", 422, "note"},
		{`{"note": "` + strings.Repeat("n", api.MaxNoteLength+1) + `"}`, "application/json", 422, "note"},
		{`{"note": "x", "by": "me"}`, "application/json", 400, "by"},
		{`{"note": 1}`, "application/json", 400, "note"},
		{`{"note": "x"`, "application/json", 400, ""},
		{note, "text/plain", 415, "Content-Type"},
	} {
		p := e.do(http.MethodPost, "/sagas/"+a.SagaID.String()+"/resolve", tc.body, append([]string{"Content-Type", tc.contentType}, auth...)...).problem(t, tc.status)
		if p.Field != tc.field {
			t.Errorf("resolve %s: field %q, want %q", tc.body, p.Field, tc.field)
		}
	}

	// Stuck: resolve ends the saga compensated and cancels the order.
	e.exec(`UPDATE saga.instances SET state = 'stuck', reason = 'inventory compensation unanswered' WHERE id = ANY($1)`,
		[]uuid.UUID{a.SagaID, b.SagaID})
	res := e.do(http.MethodPost, "/sagas/"+a.SagaID.String()+"/resolve", note, jsonCT...)
	if res.status != http.StatusOK {
		t.Fatalf("resolve: %d: %s", res.status, res.body)
	}
	var s api.Saga
	res.decode(t, &s)
	if s.State != saga.Compensated || s.EndedAt == nil || s.Steps[0].Status != api.StepResolved {
		t.Errorf("resolved saga: %s, ended %v, steps %s", s.State, s.EndedAt, stepStatuses(&s))
	}
	found := false
	for _, h := range s.History {
		if h.Event == saga.EventOperatorResolved && h.Reason == "operator alice: released the reservation by hand" {
			found = true
		}
	}
	if !found {
		t.Errorf("history lacks the operator's note: %+v", s.History)
	}
	var o api.Order
	e.do(http.MethodGet, a.StatusURL, "").decode(t, &o)
	if o.Status != order.Cancelled {
		t.Errorf("order of the resolved saga is %s", o.Status)
	}
	e.do(http.MethodPost, "/sagas/"+a.SagaID.String()+"/resolve", note, jsonCT...).problem(t, http.StatusConflict)

	// Stuck: retry (by order id) resends the compensation.
	res = e.do(http.MethodPost, "/sagas/"+b.OrderID.String()+"/retry", "", auth...)
	if res.status != http.StatusOK {
		t.Fatalf("retry: %d: %s", res.status, res.body)
	}
	res.decode(t, &s)
	if s.ID != b.SagaID || s.State != saga.Compensating || s.Attempt != 1 || s.Steps[0].Status != api.StepCompensating {
		t.Errorf("retried saga %s: %s attempt %d, steps %s", s.ID, s.State, s.Attempt, stepStatuses(&s))
	}
	var releases int
	if err := e.pool.QueryRow(context.Background(), `SELECT count(*) FROM saga.outbox WHERE key = $1 AND headers->>'type' = $2`,
		b.SagaID.String(), order.TypeRelease).Scan(&releases); err != nil {
		t.Fatal(err)
	}
	if releases != 1 {
		t.Errorf("%d release commands after the retry, want 1", releases)
	}
	e.do(http.MethodPost, "/sagas/"+b.SagaID.String()+"/retry", "", auth...).problem(t, http.StatusConflict)
}

// GET /sagas takes the console's filters: a bare id of any kind, type,
// step, age, created_before, reason, and newest first.
func TestListSagasFilters(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var placed []api.PlaceResponse
	for i := range 4 {
		placed = append(placed, e.mustPlace(fmt.Sprintf("filter-key-%d", i), orderJSON(t, set("customer_id", fmt.Sprintf("cust-%d", i%2)))))
	}
	list := func(query string) []uuid.UUID {
		t.Helper()
		var out []uuid.UUID
		for _, s := range e.listSagas(query).Sagas {
			out = append(out, s.ID)
		}
		return out
	}
	s := func(i int) uuid.UUID { return placed[i].SagaID }
	// Sagas 2 and 3 are on payment; saga 3 waits for a reason; saga 0
	// is two hours old.
	e.exec(`UPDATE saga.instances SET step = 1 WHERE id = ANY($1)`, []uuid.UUID{s(2), s(3)})
	e.exec(`UPDATE saga.instances SET reason = 'Card Declined by issuer' WHERE id = $1`, s(3))
	e.exec(`UPDATE saga.instances SET created_at = now() - interval '2 hours' WHERE id = $1`, s(0))
	cases := []struct {
		query string
		want  []uuid.UUID
	}{
		{"?q=" + s(1).String(), []uuid.UUID{s(1)}},
		{"?q=" + placed[2].OrderID.String(), []uuid.UUID{s(2)}},
		{"?q=filter-key-3", []uuid.UUID{s(3)}},
		{"?q=cust-1", []uuid.UUID{s(1), s(3)}},
		{"?q=cust-1&order=newest", []uuid.UUID{s(3), s(1)}},
		{"?q=nobody", nil},
		{"?q=" + uuid.NewString(), nil},
		{"?step=payment", []uuid.UUID{s(2), s(3)}},
		{"?type=order&step=inventory", []uuid.UUID{s(0), s(1)}},
		{"?reason=declined", []uuid.UUID{s(3)}},
		{"?age=1h", []uuid.UUID{s(0)}},
		{"?created_before=" + url.QueryEscape(time.Now().Add(-time.Hour).Format(time.RFC3339)), []uuid.UUID{s(0)}},
		{"?q=cust-0&step=payment", []uuid.UUID{s(2)}},
		{"?order=newest&limit=2", []uuid.UUID{s(3), s(2)}},
		{"?order=newest&limit=2&after=" + s(2).String(), []uuid.UUID{s(1), s(0)}},
	}
	for _, tc := range cases {
		if got := list(tc.query); !slices.Equal(got, tc.want) {
			t.Errorf("GET /sagas%s: %v, want %v", tc.query, got, tc.want)
		}
	}
	for query, field := range map[string]string{"?step=refund": "step", "?type=invoice": "type", "?age=yesterday": "age",
		"?age=-5m": "age", "?created_before=monday": "created_before", "?order=random": "order"} {
		p := e.do(http.MethodGet, "/sagas"+query, "").problem(t, http.StatusBadRequest)
		if p.Field != field || p.Detail == "" {
			t.Errorf("GET /sagas%s: problem %+v, want field %s", query, p, field)
		}
	}
}

// GET /overview answers the console's overview figures.
func TestOverview(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var sagas []uuid.UUID
	for i := range 3 {
		sagas = append(sagas, e.mustPlace(fmt.Sprintf("overview-%d", i), orderJSON(t)).SagaID)
	}
	e.exec(`UPDATE saga.instances SET state = 'stuck' WHERE id = $1`, sagas[0])
	e.exec(`UPDATE saga.instances SET state = 'completed', ended_at = now() WHERE id = $1`, sagas[1])
	res := e.do(http.MethodGet, "/overview", "")
	if res.status != http.StatusOK {
		t.Fatalf("GET /overview: %d: %s", res.status, res.body)
	}
	var o overview.Overview
	res.decode(t, &o)
	got := map[saga.State]int64{}
	for _, s := range o.States {
		got[s.State] = s.Count
	}
	if len(o.States) != 6 || got[saga.Running] != 1 || got[saga.Stuck] != 1 || got[saga.Completed] != 1 {
		t.Errorf("states %+v", o.States)
	}
	if o.EndedLastHour != 1 || len(o.Minutes) != 1 || o.Minutes[0].Completed != 1 {
		t.Errorf("last hour: %d ended, minutes %+v", o.EndedLastHour, o.Minutes)
	}
	waiting := int64(0)
	for _, b := range o.Outboxes {
		waiting += b.Rows
	}
	if len(o.Outboxes) == 0 || waiting < 3 {
		t.Errorf("outboxes %+v: the three placements' commands wait (no relay runs here)", o.Outboxes)
	}
}
