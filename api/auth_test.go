package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/saga"
)

// The operators of the auth tests and their tokens.
const (
	aliceToken = "alice-0123456789-abcdefghij"
	bobToken   = "bob-9876543210-zyxwvutsrq"
)

// operators configures the API with alice's and bob's tokens.
func operators(t *testing.T) func(*env, *api.Config) {
	return func(_ *env, cfg *api.Config) {
		tokens, err := api.ParseTokenList("alice:" + aliceToken + ",bob:" + bobToken)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Operators = tokens
	}
}

// stuck places an order and marks its saga stuck, as an unanswered
// compensation would.
func (e *env) stuck(key string) api.PlaceResponse {
	e.t.Helper()
	// Placement is set-up here: on a busy machine it may outlast a test's
	// short RequestTimeout (503); the same key places the order once.
	body := orderJSON(e.t, set("customer_id", "c-"+key))
	for range 20 {
		if res := e.place(key, body); res.status != http.StatusServiceUnavailable {
			break
		}
	}
	p := e.mustPlace(key, body)
	e.exec(`UPDATE saga.instances SET state = 'stuck', reason = 'inventory compensation unanswered' WHERE id = $1`, p.SagaID)
	return p
}

// state reads a saga's state from the database (not through the API, whose
// reads may be protected).
func (e *env) state(id uuid.UUID) saga.State {
	e.t.Helper()
	in, err := saga.Get(e.t.Context(), e.pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return in.State
}

// noSecrets fails t when the server's answers or logs show a token.
func noSecrets(t *testing.T, e *env, res *response, tokens ...string) {
	t.Helper()
	for _, tok := range tokens {
		if strings.Contains(string(res.body), tok) || strings.Contains(e.logs.String(), tok) {
			t.Errorf("a token is echoed or logged")
		}
		for k, vs := range res.header {
			for _, v := range vs {
				if strings.Contains(v, tok) {
					t.Errorf("header %s echoes a token", k)
				}
			}
		}
	}
}

// Operator actions need an operator's bearer token: no header or another
// scheme is 401 with a Bearer challenge, a token the server does not know
// is 403, and a known one runs the action, recorded under the operator's
// name.
func TestOperatorActionsNeedAToken(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t))
	note := `{"note": "released the reservation by hand"}`
	for _, tc := range []struct {
		name   string
		action string // retry or resolve
		auth   []string
		status int
		state  saga.State // the saga's state afterwards
	}{
		{"retry without a header", "retry", nil, 401, saga.Stuck},
		{"resolve without a header", "resolve", nil, 401, saga.Stuck},
		{"basic scheme", "retry", []string{"Basic YWxpY2U6c2VjcmV0"}, 401, saga.Stuck},
		{"token without a scheme", "resolve", []string{aliceToken}, 401, saga.Stuck},
		{"bearer without a token", "retry", []string{"Bearer "}, 401, saga.Stuck},
		{"bearer with a space in the token", "retry", []string{"Bearer " + aliceToken + " x"}, 401, saga.Stuck},
		{"two headers", "retry", []string{"Bearer " + aliceToken, "Bearer " + bobToken}, 401, saga.Stuck},
		{"unknown token", "retry", []string{"Bearer not-" + aliceToken}, 403, saga.Stuck},
		{"a token's prefix", "resolve", []string{"Bearer " + aliceToken[:len(aliceToken)-1]}, 403, saga.Stuck},
		{"an operator's name", "resolve", []string{"Bearer alice"}, 403, saga.Stuck},
		{"alice retries", "retry", []string{"Bearer " + aliceToken}, 200, saga.Compensating},
		{"bob resolves, scheme in lower case", "resolve", []string{"bearer " + bobToken}, 200, saga.Compensated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := e.stuck(strings.ReplaceAll(tc.name, " ", "-"))
			header := []string{"Content-Type", "application/json"}
			for _, a := range tc.auth {
				header = append(header, "Authorization", a)
			}
			body := ""
			if tc.action == "resolve" {
				body = note
			}
			res := e.do(http.MethodPost, "/sagas/"+p.SagaID.String()+"/"+tc.action, body, header...)
			noSecrets(t, e, res, aliceToken, bobToken)
			if got := e.state(p.SagaID); got != tc.state {
				t.Errorf("saga is %s afterwards, want %s", got, tc.state)
			}
			switch tc.status {
			case 401:
				pr := res.problem(t, 401)
				if pr.Type != api.TypeUnauthorized || !strings.Contains(pr.Detail, "Authorization: Bearer") {
					t.Errorf("problem %+v", pr)
				}
				if got := res.header.Get("WWW-Authenticate"); got != `Bearer realm="sagaflow"` {
					t.Errorf("WWW-Authenticate %q", got)
				}
			case 403:
				if pr := res.problem(t, 403); pr.Type != api.TypeForbidden {
					t.Errorf("problem %+v", pr)
				}
			case 200:
				if res.status != 200 {
					t.Fatalf("status %d: %s", res.status, res.body)
				}
				var s api.Saga
				res.decode(t, &s)
				want := map[string]string{"retry": "alice", "resolve": "bob"}[tc.action]
				if tc.action == "resolve" {
					// The engine keeps the note as the reason of its
					// history entry: the operator's name goes with it.
					found := false
					for _, h := range s.History {
						if h.Event == saga.EventOperatorResolved {
							found = true
							if !strings.Contains(h.Reason, "operator "+want) || !strings.Contains(h.Reason, "released the reservation by hand") {
								t.Errorf("history entry %+v does not name the operator and keep the note", h)
							}
						}
					}
					if !found {
						t.Errorf("history lacks the resolution: %+v", s.History)
					}
				}
				// Every action is logged with who acted.
				if logs := e.logs.String(); !strings.Contains(logs, `msg="operator action"`) ||
					!strings.Contains(logs, "operator="+want) || !strings.Contains(logs, "saga="+p.SagaID.String()) {
					t.Errorf("no audit line names %s and the saga:\n%s", want, logs)
				}
			}
		})
	}
}

// Without tokens, operator actions are refused whatever the request
// carries, and the answer says how to configure tokens.
func TestOperatorActionsOffWithoutTokens(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.stuck("k")
	for _, tc := range []struct {
		name, path, body string
		auth             []string
	}{
		{"retry", "/retry", "", nil},
		{"retry with a token", "/retry", "", []string{"Authorization", "Bearer " + aliceToken}},
		{"resolve", "/resolve", `{"note": "done"}`, nil},
		{"resolve with a token", "/resolve", `{"note": "done"}`, []string{"Authorization", "Bearer " + aliceToken}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := e.do(http.MethodPost, "/sagas/"+p.SagaID.String()+tc.path, tc.body, append([]string{"Content-Type", "application/json"}, tc.auth...)...)
			pr := res.problem(t, http.StatusForbidden)
			if pr.Type != api.TypeForbidden || !strings.Contains(pr.Detail, "--operator-tokens") || !strings.Contains(pr.Detail, "SAGAFLOW_OPERATOR_TOKENS") {
				t.Errorf("problem %+v does not say how to configure tokens", pr)
			}
			noSecrets(t, e, res, aliceToken)
		})
	}
	if got := e.state(p.SagaID); got != saga.Stuck {
		t.Errorf("saga is %s, want stuck", got)
	}
	// Reads stay open by default.
	if res := e.do(http.MethodGet, "/sagas/"+p.SagaID.String(), ""); res.status != http.StatusOK {
		t.Errorf("GET /sagas/{id}: %d", res.status)
	}
	// Protected reads without tokens are refused the same way.
	e = setup(t, func(_ *env, cfg *api.Config) { cfg.ProtectReads = true })
	pr := e.do(http.MethodGet, "/sagas", "").problem(t, http.StatusForbidden)
	if pr.Type != api.TypeForbidden || !strings.Contains(pr.Detail, "SAGAFLOW_OPERATOR_TOKENS") {
		t.Errorf("protected read without tokens: %+v", pr)
	}
}

// ProtectReads puts every read behind a token; placing orders and the
// health checks stay open.
func TestProtectReads(t *testing.T) {
	t.Parallel()
	for _, protect := range []bool{false, true} {
		name := map[bool]string{false: "open reads", true: "protected reads"}[protect]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, operators(t), func(_ *env, cfg *api.Config) { cfg.ProtectReads = protect })
			// POST /orders is the business API: never behind a token.
			placed := e.mustPlace("k", orderJSON(t))
			reads := []string{"/sagas", "/sagas?state=running", "/sagas/" + placed.SagaID.String(), "/sagas/" + placed.OrderID.String(), "/orders/" + placed.OrderID.String()}
			for _, path := range reads {
				for _, tc := range []struct {
					auth   []string
					status int
				}{
					{nil, map[bool]int{false: 200, true: 401}[protect]},
					{[]string{"Authorization", "Token " + aliceToken}, map[bool]int{false: 200, true: 401}[protect]},
					{[]string{"Authorization", "Bearer wrong-token-0123456789"}, map[bool]int{false: 200, true: 403}[protect]},
					{[]string{"Authorization", "Bearer " + aliceToken}, 200},
				} {
					res := e.do(http.MethodGet, path, "", tc.auth...)
					if res.status != tc.status {
						t.Errorf("GET %s with %q: %d, want %d: %s", path, tc.auth, res.status, tc.status, res.body)
						continue
					}
					if tc.status == 401 && res.header.Get("WWW-Authenticate") != `Bearer realm="sagaflow"` {
						t.Errorf("GET %s: WWW-Authenticate %q", path, res.header.Get("WWW-Authenticate"))
					}
					noSecrets(t, e, res, aliceToken)
				}
			}
			for _, path := range []string{"/healthz", "/readyz", "/openapi.json"} {
				if res := e.do(http.MethodGet, path, ""); res.status != http.StatusOK {
					t.Errorf("GET %s without a token: %d", path, res.status)
				}
			}
		})
	}
}

// An operator aborts a running saga with a note: it compensates, and the
// history keeps who and why; a retry's optional note is kept too. Abort
// needs a note, a token and a running saga.
func TestAbortAndRetryKeepWhoAndWhy(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t))
	p := e.mustPlace("abort-1", orderJSON(t, set("customer_id", "c-abort")))
	alice := []string{"Authorization", "Bearer " + aliceToken, "Content-Type", "application/json"}
	path := "/sagas/" + p.SagaID.String() + "/abort"
	if res := e.do(http.MethodPost, path, `{"note":"x"}`, "Content-Type", "application/json"); res.status != http.StatusUnauthorized {
		t.Fatalf("abort without a token: %d %s", res.status, res.body)
	}
	if res := e.do(http.MethodPost, path, `{"note":" "}`, alice...); res.status != http.StatusUnprocessableEntity {
		t.Fatalf("abort without a note: %d %s", res.status, res.body)
	}
	res := e.do(http.MethodPost, path, `{"note":"customer called to cancel"}`, alice...)
	var s api.Saga
	res.decode(t, &s)
	if res.status != http.StatusOK || s.State != saga.Compensating || !strings.Contains(s.Reason, "operator alice: customer called to cancel") {
		t.Fatalf("abort: %d %s", res.status, res.body)
	}
	found := false
	for _, h := range s.History {
		found = found || (h.Event == saga.EventOperatorAborted && h.Reason == "operator alice: customer called to cancel")
	}
	if !found {
		t.Fatalf("history lacks the abort with who and why: %+v", s.History)
	}
	if res := e.do(http.MethodPost, path, `{"note":"again"}`, alice...); res.status != http.StatusConflict {
		t.Fatalf("abort of a compensating saga: %d %s", res.status, res.body)
	}

	st := e.stuck("retry-note")
	res = e.do(http.MethodPost, "/sagas/"+st.SagaID.String()+"/retry", `{"note":"inventory is back"}`, alice...)
	res.decode(t, &s)
	found = false
	for _, h := range s.History {
		found = found || (h.Event == saga.EventOperatorRetry && h.Reason == "operator alice: inventory is back")
	}
	if res.status != http.StatusOK || !found {
		t.Fatalf("retry with a note: %d %+v", res.status, s.History)
	}
}

// POST /batch/{action} counts the sagas a filter matches (dry run), then
// acts on every one, the operator and note in each history; it needs a
// filter, a note and a token.
func TestBatchRetry(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t))
	a, b := e.stuck("batch-a"), e.stuck("batch-b")
	e.mustPlace("batch-running", orderJSON(t, set("customer_id", "c-running")))
	alice := []string{"Authorization", "Bearer " + aliceToken, "Content-Type", "application/json"}
	if res := e.do(http.MethodPost, "/batch/retry", `{"state":"stuck","note":"x"}`, "Content-Type", "application/json"); res.status != http.StatusUnauthorized {
		t.Fatalf("without a token: %d %s", res.status, res.body)
	}
	for body, want := range map[string]int{`{"note":"x"}`: 422, `{"state":"stuck"}`: 422, `{"state":"bogus","note":"x"}`: 400, `{"step":"nowhere","note":"x"}`: 400} {
		if res := e.do(http.MethodPost, "/batch/retry", body, alice...); res.status != want {
			t.Errorf("%s: %d, want %d: %s", body, res.status, want, res.body)
		}
	}
	if res := e.do(http.MethodPost, "/batch/explode", `{"state":"stuck","note":"x"}`, alice...); res.status != http.StatusNotFound {
		t.Fatalf("unknown action: %d %s", res.status, res.body)
	}
	var r api.BatchResult
	e.do(http.MethodPost, "/batch/retry", `{"state":"stuck","dry_run":true}`, alice...).decode(t, &r)
	if r.Matched != 2 || r.Done != 0 || !r.DryRun {
		t.Fatalf("dry run: %+v", r)
	}
	res := e.do(http.MethodPost, "/batch/retry", `{"state":"stuck","note":"inventory is back"}`, alice...)
	res.decode(t, &r)
	if res.status != http.StatusOK || r.Matched != 2 || r.Done != 2 || r.Conflicts != 0 || r.Failed != 0 {
		t.Fatalf("batch retry: %d %s", res.status, res.body)
	}
	for _, p := range []api.PlaceResponse{a, b} {
		if st := e.state(p.SagaID); st != saga.Compensating {
			t.Errorf("saga %s is %s after the batch retry", p.SagaID, st)
		}
		h, err := saga.History(t.Context(), e.pool, p.SagaID)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, x := range h {
			found = found || (x.Event == saga.EventOperatorRetry && x.Reason == "operator alice: inventory is back")
		}
		if !found {
			t.Errorf("saga %s: the batch retry is not in its history", p.SagaID)
		}
	}
}
