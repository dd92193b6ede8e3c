package saga_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env drives an engine by hand: it starts sagas, reads the commands the
// engine wrote to its outbox, and feeds replies through the inbox.
type env struct {
	t      *testing.T
	db     *testenv.Database
	engine *saga.Engine
	inbox  *outbox.Inbox
	ended  map[uuid.UUID]string
}

// threeSteps is a test saga a → b → c; c is a pivot without compensation
// unless compensateLast.
func threeSteps(timeout time.Duration, attempts, compAttempts int, compensateLast bool) *saga.Definition {
	retry := saga.RetryPolicy{MaxAttempts: attempts, Timeout: timeout, Multiplier: 1, MaxTimeout: timeout}
	comp := saga.RetryPolicy{MaxAttempts: compAttempts, Timeout: timeout, Multiplier: 1, MaxTimeout: timeout}
	last := ""
	if compensateLast {
		last = "c.undo"
	}
	return &saga.Definition{
		Type: "test",
		Steps: []saga.Step{
			{Name: "a", Topic: "a.cmd", ActionType: "a.do", CompensationType: "a.undo", Retry: retry, CompensationRetry: comp},
			{Name: "b", Topic: "b.cmd", ActionType: "b.do", CompensationType: "b.undo", Retry: retry, CompensationRetry: comp},
			{Name: "c", Topic: "c.cmd", ActionType: "c.do", CompensationType: last, Retry: retry, CompensationRetry: comp},
		},
	}
}

func setup(t *testing.T, def *saga.Definition) *env {
	t.Helper()
	e := &env{t: t, db: testenv.DB(t), ended: map[uuid.UUID]string{}}
	def.OnCompleted = func(_ *pgx.Batch, in *saga.Instance) error {
		e.ended[in.ID] = "completed"
		return nil
	}
	def.OnCancelled = func(_ *pgx.Batch, in *saga.Instance) error {
		e.ended[in.ID] = "cancelled: " + in.Reason
		return nil
	}
	engine, err := saga.NewEngine(e.db.Pool, nil, def)
	if err != nil {
		t.Fatal(err)
	}
	e.engine = engine
	e.inbox = outbox.NewInbox(e.db.Pool, "saga", "test-orchestrator")
	// As Register does: replies delivered through Wrap go through the
	// batch handler (batches of one here), the bad ones through HandleReply.
	e.inbox.SetBatchHandler(engine.Batch())
	return e
}

func (e *env) start() uuid.UUID {
	e.t.Helper()
	ctx := context.Background()
	id := uuid.Must(uuid.NewV7())
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit; frees the connection on Fatal
	if _, err := e.engine.Start(ctx, tx, "test", id, json.RawMessage(`{"x":1}`)); err != nil {
		e.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
	return id
}

// command is a command the engine wrote.
type command struct {
	typ string
	cmd saga.Command
}

// commands returns the commands of saga id in the outbox, oldest first.
func (e *env) commands(id uuid.UUID) []command {
	e.t.Helper()
	rows, err := e.db.Pool.Query(context.Background(), `SELECT headers->>'type', (headers->>'schema_version')::int, payload FROM saga.outbox WHERE key = $1 ORDER BY seq`, id.String())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []command
	for rows.Next() {
		var c command
		var payload []byte
		if err := rows.Scan(&c.typ, &c.cmd.Version, &payload); err != nil {
			e.t.Fatal(err)
		}
		if err := json.Unmarshal(payload, &c.cmd); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// types lists the command types sent for saga id, with attempts.
func (e *env) types(id uuid.UUID) []string {
	var out []string
	for _, c := range e.commands(id) {
		out = append(out, c.typ+"#"+strconv.Itoa(c.cmd.Attempt))
	}
	return out
}

// reply feeds a reply through the inbox, as the orchestrator's consumer does.
func (e *env) reply(id uuid.UUID, step string, kind saga.Kind, attempt int, outcome saga.Outcome, reason string) uuid.UUID {
	e.t.Helper()
	msgID := uuid.Must(uuid.NewV7())
	e.deliver(msgID, saga.Reply{SagaID: id, Step: step, Kind: kind, Attempt: attempt, Outcome: outcome, Reason: reason})
	return msgID
}

func (e *env) deliver(msgID uuid.UUID, r saga.Reply) {
	e.t.Helper()
	e.deliverVersion(msgID, r, 1)
}

// deliverVersion delivers r as a reply of schema version v.
func (e *env) deliverVersion(msgID uuid.UUID, r saga.Reply, v int) {
	e.t.Helper()
	payload, _ := json.Marshal(r)
	msg := message.NewMessage(msgID.String(), payload)
	msg.Metadata.Set(outbox.HeaderType, saga.ReplyType)
	msg.Metadata.Set(outbox.HeaderSchemaVersion, strconv.Itoa(v))
	if err := e.inbox.Wrap(e.engine.HandleReply)(msg); err != nil {
		e.t.Fatalf("deliver reply %+v: %v", r, err)
	}
}

func (e *env) get(id uuid.UUID) *saga.Instance {
	e.t.Helper()
	in, err := saga.Get(context.Background(), e.db.Pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

// expire makes the saga's step overdue and sweeps.
func (e *env) expire(id uuid.UUID) {
	e.t.Helper()
	ctx := context.Background()
	if _, err := e.db.Pool.Exec(ctx, `UPDATE saga.instances SET step_deadline = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		e.t.Fatal(err)
	}
	n, err := e.engine.SweepOnce(ctx, 100)
	if err != nil {
		e.t.Fatal(err)
	}
	if n != 1 {
		e.t.Fatalf("sweep handled %d sagas, want 1", n)
	}
}

func (e *env) events(id uuid.UUID) []string {
	e.t.Helper()
	h, err := saga.History(context.Background(), e.db.Pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, x := range h {
		out = append(out, fmt.Sprintf("%s/%s/%d %s", x.Step, x.Kind, x.Attempt, x.Event))
	}
	return out
}

func equal(a, b []string) bool { return slices.Equal(a, b) }

func TestHappyPath(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	id := e.start()
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	e.reply(id, "b", saga.KindAction, 1, saga.Succeeded, "")
	e.reply(id, "c", saga.KindAction, 1, saga.Succeeded, "")
	in := e.get(id)
	if in.State != saga.Completed || in.Completed != 3 || in.EndedAt == nil {
		t.Fatalf("saga %+v, want completed with 3 steps", in)
	}
	if got, want := e.types(id), []string{"a.do#1", "b.do#1", "c.do#1"}; !equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	if e.ended[id] != "completed" {
		t.Fatalf("completion hook saw %q", e.ended[id])
	}
	// Commands carry the saga's data.
	if string(e.commands(id)[2].cmd.Data) != `{"x": 1}` && string(e.commands(id)[2].cmd.Data) != `{"x":1}` {
		t.Fatalf("command data %s", e.commands(id)[2].cmd.Data)
	}
}

// Commands name the definition's replies topic (reply_to, version 2). The
// orchestrator reads replies of both versions: the history names who
// answered, the participant a version 2 reply names, the step's for a
// version 1 reply (its upcast).
func TestRepliesOfBothVersions(t *testing.T) {
	t.Parallel()
	def := threeSteps(time.Minute, 3, 3, false)
	def.ReplyTo = "test.replies"
	e := setup(t, def)
	id := e.start()
	if c := e.commands(id)[0].cmd; c.ReplyTo != "test.replies" {
		t.Fatalf("the first command's reply_to is %q, want test.replies", c.ReplyTo)
	}
	e.deliverVersion(uuid.Must(uuid.NewV7()), saga.Reply{SagaID: id, Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded}, 1)
	e.deliverVersion(uuid.Must(uuid.NewV7()), saga.Reply{SagaID: id, Step: "b", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded, Participant: "b-service"}, 2)
	hist, err := saga.History(context.Background(), e.db.Pool, id)
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]string{}
	for _, h := range hist {
		if h.Event == saga.EventSucceeded {
			by[h.Step] = h.Participant
		} else if h.Participant != "" {
			t.Errorf("history line %d (%s) names participant %q; only answers do", h.Seq, h.Event, h.Participant)
		}
	}
	if by["a"] != "a" || by["b"] != "b-service" {
		t.Fatalf("answered by %v, want a by a (version 1, upcast) and b by b-service", by)
	}
	if in := e.get(id); in.Step != 2 {
		t.Fatalf("saga at step %d, want 2", in.Step)
	}
}

// During a rolling upgrade the engine writes the older command version:
// no reply_to, schema_version 1. It refuses a version it cannot write.
func TestCommandVersionHeldBack(t *testing.T) {
	t.Parallel()
	def := threeSteps(time.Minute, 3, 3, false)
	def.ReplyTo = "test.replies"
	e := setup(t, def)
	if err := e.engine.SetCommandVersion(saga.SchemaVersion + 1); err == nil {
		t.Error("the engine accepted a command version it cannot write")
	}
	if err := e.engine.SetCommandVersion(saga.SchemaVersion - 1); err != nil {
		t.Fatal(err)
	}
	id := e.start()
	c := e.commands(id)[0]
	if c.cmd.ReplyTo != "" || c.cmd.Version != saga.SchemaVersion-1 {
		t.Fatalf("command %+v, want version %d without reply_to", c.cmd, saga.SchemaVersion-1)
	}
}

// A refusal compensates the completed steps, newest first, never the step
// that refused (it made no change).
func TestRefusalCompensatesInReverse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		refuseAt string
		want     []string
		state    saga.State
	}{
		{"a", []string{"a.do#1"}, saga.Failed},
		{"b", []string{"a.do#1", "b.do#1", "a.undo#1"}, saga.Compensated},
		{"c", []string{"a.do#1", "b.do#1", "c.do#1", "b.undo#1", "a.undo#1"}, saga.Compensated},
	}
	for _, tt := range tests {
		t.Run("refused at "+tt.refuseAt, func(t *testing.T) {
			t.Parallel()
			e := setup(t, threeSteps(time.Minute, 3, 3, false))
			id := e.start()
			for _, s := range []string{"a", "b", "c"} {
				if s == tt.refuseAt {
					e.reply(id, s, saga.KindAction, 1, saga.Refused, "no "+s)
					break
				}
				e.reply(id, s, saga.KindAction, 1, saga.Succeeded, "")
			}
			// Answer the compensations as they come.
			for {
				in := e.get(id)
				if in.State != saga.Compensating {
					break
				}
				cmds := e.commands(id)
				last := cmds[len(cmds)-1].cmd
				e.reply(id, last.Step, saga.KindCompensation, last.Attempt, saga.Succeeded, "")
			}
			in := e.get(id)
			if in.State != tt.state {
				t.Fatalf("state %s, want %s", in.State, tt.state)
			}
			if got := e.types(id); !equal(got, tt.want) {
				t.Fatalf("commands %v, want %v", got, tt.want)
			}
			if want := "cancelled: " + tt.refuseAt + " refused: no " + tt.refuseAt; e.ended[id] != want {
				t.Fatalf("cancel hook saw %q, want %q", e.ended[id], want)
			}
		})
	}
}

// A reply for another step, kind or attempt, or after the saga ended, is
// recorded as stale and changes nothing; a redelivered reply is absorbed by
// the inbox.
func TestStaleAndDuplicateReplies(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	id := e.start()
	first := e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	// The same reply message again: the inbox skips it.
	e.deliver(first, saga.Reply{SagaID: id, Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded})
	if d := e.inbox.Duplicates(); d != 1 {
		t.Fatalf("inbox absorbed %d duplicates, want 1", d)
	}
	before := e.get(id)
	// A second reply (new message) for step a, a reply for an attempt not
	// sent, and a compensation reply while running: all stale.
	e.reply(id, "a", saga.KindAction, 1, saga.Refused, "late")
	e.reply(id, "b", saga.KindAction, 2, saga.Succeeded, "")
	e.reply(id, "b", saga.KindCompensation, 1, saga.Succeeded, "")
	after := e.get(id)
	if after.Version != before.Version || after.Step != 1 || after.State != saga.Running {
		t.Fatalf("stale replies changed the saga: before %+v after %+v", before, after)
	}
	stale := 0
	for _, ev := range e.events(id) {
		if len(ev) > 0 && strings.Contains(ev, saga.EventStaleReply) {
			stale++
		}
	}
	if stale != 3 {
		t.Fatalf("%d stale replies in history, want 3: %v", stale, e.events(id))
	}
	if got := e.types(id); !equal(got, []string{"a.do#1", "b.do#1"}) {
		t.Fatalf("commands %v", got)
	}
}

// An overdue step is resent with the next attempt; when its attempts are
// spent it fails and the saga compensates it too (its action may still
// arrive), then the earlier steps. A late answer to the failed action is
// stale: the saga now awaits compensations.
func TestDeadlineRetriesThenCompensates(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 2, 3, true))
	id := e.start()
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	e.expire(id) // b attempt 1 overdue → attempt 2
	if in := e.get(id); in.Attempt != 2 || in.State != saga.Running {
		t.Fatalf("after the first timeout: %+v, want running attempt 2", in)
	}
	e.expire(id) // attempt 2 overdue → compensate b, then a
	in := e.get(id)
	if in.State != saga.Compensating || in.Step != 1 {
		t.Fatalf("after the last timeout: %+v, want compensating step b", in)
	}
	// The late answer to attempt 1 arrives: stale, nothing changes.
	e.reply(id, "b", saga.KindAction, 1, saga.Succeeded, "")
	if got := e.get(id); got.State != saga.Compensating || got.Step != 1 {
		t.Fatalf("late reply changed the saga: %+v", got)
	}
	e.reply(id, "b", saga.KindCompensation, 1, saga.Succeeded, "")
	e.reply(id, "a", saga.KindCompensation, 1, saga.Succeeded, "")
	in = e.get(id)
	if in.State != saga.Compensated {
		t.Fatalf("state %s, want compensated", in.State)
	}
	want := []string{"a.do#1", "b.do#1", "b.do#2", "b.undo#1", "a.undo#1"}
	if got := e.types(id); !equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	if !strings.Contains(in.Reason, "b did not answer after 2 attempt(s)") {
		t.Fatalf("reason %q", in.Reason)
	}
}

// A compensation that never succeeds is resent until its attempts are
// spent, then the saga is stuck: visible, not looping. An operator retries
// it (fresh attempts) or resolves it.
func TestCompensationStuckThenRetriedAndResolved(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 1, 2, false))
	ctx := context.Background()
	id := e.start()
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	e.reply(id, "b", saga.KindAction, 1, saga.Refused, "declined")
	e.expire(id) // a.undo attempt 1 overdue → attempt 2
	e.expire(id) // attempt 2 overdue → stuck
	in := e.get(id)
	if in.State != saga.Stuck {
		t.Fatalf("state %s, want stuck", in.State)
	}
	if in.StepDeadline != nil {
		t.Fatal("a stuck saga still has a deadline: the sweeper would keep resending")
	}
	if n, err := e.engine.SweepOnce(ctx, 100); err != nil || n != 0 {
		t.Fatalf("sweep touched %d stuck sagas (err %v), want 0", n, err)
	}
	stuck, err := saga.Search(ctx, e.db.Pool, saga.Filter{State: saga.Stuck}, 10)
	if err != nil || len(stuck) != 1 || stuck[0].ID != id {
		t.Fatalf("stuck list %v (err %v)", stuck, err)
	}
	if _, err := e.engine.Retry(ctx, id, "test"); err != nil {
		t.Fatal(err)
	}
	if in := e.get(id); in.State != saga.Compensating || in.Attempt != 1 {
		t.Fatalf("after retry: %+v", in)
	}
	e.expire(id)
	e.expire(id)
	if _, err := e.engine.Resolve(ctx, id, "refunded by hand"); err != nil {
		t.Fatal(err)
	}
	if in := e.get(id); in.State != saga.Compensated {
		t.Fatalf("after resolve: %s", in.State)
	}
	if _, err := e.engine.Retry(ctx, id, "test"); err == nil {
		t.Fatal("retrying a compensated saga succeeded")
	}
	want := []string{"a.do#1", "b.do#1", "a.undo#1", "a.undo#2", "a.undo#1", "a.undo#2"}
	if got := e.types(id); !equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
}

// An operator aborts a running saga: the steps done are compensated in
// reverse order, the current one's included (its action may be in flight);
// the operator's note is in the history and the reason; the late reply to
// the action is stale. Only a running saga can be aborted.
func TestAbortCompensatesRunningSaga(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 1, 2, false))
	ctx := context.Background()
	id := e.start()
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	if _, err := e.engine.Abort(ctx, id, "operator alice: customer called to cancel"); err != nil {
		t.Fatal(err)
	}
	in := e.get(id)
	if in.State != saga.Compensating || in.Reason != "aborted by operator: operator alice: customer called to cancel" {
		t.Fatalf("after abort: %s (%s)", in.State, in.Reason)
	}
	e.reply(id, "b", saga.KindAction, 1, saga.Succeeded, "") // the in-flight action answers late
	e.reply(id, "b", saga.KindCompensation, 1, saga.Succeeded, "")
	e.reply(id, "a", saga.KindCompensation, 1, saga.Succeeded, "")
	if in := e.get(id); in.State != saga.Compensated {
		t.Fatalf("state %s, want compensated", in.State)
	}
	want := []string{"a.do#1", "b.do#1", "b.undo#1", "a.undo#1"}
	if got := e.types(id); !equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	events := strings.Join(e.events(id), "; ")
	if !strings.Contains(events, "b/action/1 "+saga.EventOperatorAborted) || !strings.Contains(events, saga.EventStaleReply) {
		t.Fatalf("history %v lacks the abort or the stale reply", events)
	}
	if _, err := e.engine.Abort(ctx, id, "again"); !errors.Is(err, saga.ErrConflict) {
		t.Fatalf("aborting a compensated saga: %v, want a conflict", err)
	}
}

// The saga's deadline stops retries even when attempts remain.
func TestSagaDeadline(t *testing.T) {
	t.Parallel()
	def := threeSteps(time.Minute, 5, 3, false)
	e := setup(t, def)
	id := e.start()
	if _, err := e.db.Pool.Exec(context.Background(), `UPDATE saga.instances SET deadline = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	e.expire(id)
	in := e.get(id)
	if in.State != saga.Compensating || !strings.Contains(in.Reason, "before the saga's deadline") {
		t.Fatalf("saga %+v, want compensating for its deadline", in)
	}
}

// Bad replies are permanent errors (dead-lettered), never half-applied.
func TestBadReplies(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	id := e.start()
	tests := []struct {
		name    string
		payload string
		typ     string
		version string
	}{
		{"garbage", "\xff\x00", saga.ReplyType, "1"},
		{"unknown type", `{}`, "saga.something", "1"},
		{"future schema version", `{"saga_id":"` + id.String() + `","step":"a","kind":"action","attempt":1,"outcome":"succeeded"}`, saga.ReplyType, strconv.Itoa(saga.SchemaVersion + 1)},
		{"missing fields", `{"saga_id":"` + id.String() + `"}`, saga.ReplyType, "1"},
		{"unknown outcome", `{"saga_id":"` + id.String() + `","step":"a","kind":"action","attempt":1,"outcome":"maybe"}`, saga.ReplyType, "1"},
		{"unknown saga", `{"saga_id":"` + uuid.NewString() + `","step":"a","kind":"action","attempt":1,"outcome":"succeeded"}`, saga.ReplyType, "1"},
	}
	for _, tt := range tests {
		msg := message.NewMessage(uuid.NewString(), []byte(tt.payload))
		msg.Metadata.Set(outbox.HeaderType, tt.typ)
		msg.Metadata.Set(outbox.HeaderSchemaVersion, tt.version)
		err := e.inbox.Wrap(e.engine.HandleReply)(msg)
		if err == nil || !outbox.IsPermanent(err) {
			t.Errorf("%s: error %v, want a permanent error", tt.name, err)
		}
	}
	if in := e.get(id); in.Version != 1 || in.State != saga.Running {
		t.Fatalf("bad replies changed the saga: %+v", in)
	}
}

// Many sweepers at once (SKIP LOCKED) handle each overdue saga once.
func TestConcurrentSweepers(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	ctx := context.Background()
	var ids []uuid.UUID
	for range 50 {
		ids = append(ids, e.start())
	}
	if _, err := e.db.Pool.Exec(ctx, `UPDATE saga.instances SET step_deadline = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	results := make(chan int, 4)
	for range 4 {
		go func() {
			total := 0
			for {
				n, err := e.engine.SweepOnce(ctx, 5)
				if err != nil {
					t.Error(err)
					break
				}
				if n == 0 {
					break
				}
				total += n
			}
			results <- total
		}()
	}
	total := 0
	for range 4 {
		total += <-results
	}
	if total != 50 {
		t.Fatalf("sweepers handled %d sagas, want each of 50 once", total)
	}
	for _, id := range ids {
		if got := e.types(id); !equal(got, []string{"a.do#1", "a.do#2"}) {
			t.Fatalf("saga %s commands %v, want one resend", id, got)
		}
	}
}

func TestDefinitionValidation(t *testing.T) {
	t.Parallel()
	bad := []*saga.Definition{
		{Type: "", Steps: []saga.Step{{Name: "a", Topic: "t", ActionType: "x"}}},
		{Type: "t"},
		{Type: "t", Steps: []saga.Step{{Name: "a", Topic: "t", ActionType: "x"}, {Name: "b", Topic: "t", ActionType: "y", CompensationType: "z"}}},
		{Type: "t", Steps: []saga.Step{{Name: "a", Topic: "t", ActionType: "x", CompensationType: "u"}, {Name: "a", Topic: "t", ActionType: "y"}}},
	}
	for i, d := range bad {
		if _, err := saga.NewEngine(nil, nil, d); err == nil {
			t.Errorf("definition %d accepted", i)
		}
	}
}

// HandleReplies moves many sagas in one transaction as HandleReply moves
// each: two replies of one saga in a batch apply in turn, a stale one
// changes nothing. So does the orchestrator's batch handler, whose Prelude
// locks the sagas in the round trip of the inbox's claim.
func TestHandleRepliesBatch(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		apply func(ctx context.Context, e *env, tx pgx.Tx, ids []uuid.UUID, replies []saga.Reply) error
	}{
		{"HandleReplies", func(ctx context.Context, e *env, tx pgx.Tx, ids []uuid.UUID, replies []saga.Reply) error {
			return e.engine.HandleReplies(ctx, tx, ids, replies)
		}},
		{"Batch with its Prelude", func(ctx context.Context, e *env, tx pgx.Tx, ids []uuid.UUID, replies []saga.Reply) error {
			b := e.engine.Batch()
			items := make([]any, len(replies))
			for i, r := range replies {
				payload, _ := json.Marshal(r)
				msg := message.NewMessage(ids[i].String(), payload)
				msg.Metadata.Set(outbox.HeaderType, saga.ReplyType)
				msg.Metadata.Set(outbox.HeaderSchemaVersion, "1")
				item, ok := b.Take(msg)
				if !ok {
					return fmt.Errorf("the batch handler did not take reply %d", i)
				}
				items[i] = item
			}
			var pb pgx.Batch
			b.(outbox.BatchPrelude).Prelude(&pb, items)
			if err := tx.SendBatch(ctx, &pb).Close(); err != nil {
				return fmt.Errorf("prelude: %w", err)
			}
			return b.HandleBatch(ctx, tx, items)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			testHandleRepliesBatch(t, tc.apply)
		})
	}
}

func testHandleRepliesBatch(t *testing.T, apply func(ctx context.Context, e *env, tx pgx.Tx, ids []uuid.UUID, replies []saga.Reply) error) {
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	ok, refused, twice, stale := e.start(), e.start(), e.start(), e.start()
	batch := []saga.Reply{
		{SagaID: ok, Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded},
		{SagaID: refused, Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Refused, Reason: "no"},
		{SagaID: twice, Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded},
		{SagaID: stale, Step: "a", Kind: saga.KindAction, Attempt: 2, Outcome: saga.Succeeded},
		{SagaID: twice, Step: "b", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded},
	}
	ids := make([]uuid.UUID, len(batch))
	for i := range ids {
		ids[i] = uuid.Must(uuid.NewV7())
	}
	ctx := context.Background()
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if err := apply(ctx, e, tx, ids, batch); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id    uuid.UUID
		state saga.State
		step  int
		types []string
	}{
		{ok, saga.Running, 1, []string{"a.do#1", "b.do#1"}},
		{refused, saga.Failed, 0, []string{"a.do#1"}},
		{twice, saga.Running, 2, []string{"a.do#1", "b.do#1", "c.do#1"}},
		{stale, saga.Running, 0, []string{"a.do#1"}},
	} {
		in := e.get(c.id)
		if in.State != c.state || in.Step != c.step {
			t.Errorf("saga %s: %s at step %d, want %s at step %d", c.id, in.State, in.Step, c.state, c.step)
		}
		if got := e.types(c.id); !equal(got, c.types) {
			t.Errorf("saga %s: commands %v, want %v", c.id, got, c.types)
		}
	}
	if got := e.ended[refused]; got != "cancelled: a refused: no" {
		t.Errorf("refused saga's hook: %q", got)
	}
	if got := e.events(stale); !slices.Contains(got, "a/action/2 "+saga.EventStaleReply) {
		t.Errorf("stale reply not in the history: %v", got)
	}
	// An unknown saga beside a known one fails the whole batch (its
	// replies then go one by one).
	tx2, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx2.Rollback(ctx) //nolint:errcheck // rolled back on purpose
	err = apply(ctx, e, tx2, []uuid.UUID{uuid.Must(uuid.NewV7()), uuid.Must(uuid.NewV7())}, []saga.Reply{
		{SagaID: ok, Step: "b", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded},
		{SagaID: uuid.Must(uuid.NewV7()), Step: "a", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded},
	})
	if err == nil {
		t.Fatal("a reply for an unknown saga was applied")
	}
}

// StepIndex resolves an operator's step name: in one type, or in every
// type that agrees on its position.
func TestStepIndex(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Second, 1, 1, false))
	other := threeSteps(time.Second, 1, 1, false)
	other.Type = "other"
	other.Steps[0].Name, other.Steps[1].Name = "b", "a" // a and b swapped, c agrees
	if err := e.engine.Define(other); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		typ, name string
		want      int
		err       string
	}{
		{"test", "b", 1, ""},
		{"other", "b", 0, ""},
		{"", "c", 2, ""},
		{"", "a", 0, "give the saga type"},
		{"", "z", 0, "no saga type has a step \"z\" (steps: a, b, c)"},
		{"test", "z", 0, "no saga type has a step"},
		{"invoice", "a", 0, "no saga type \"invoice\""},
	}
	for _, tc := range cases {
		got, err := e.engine.StepIndex(tc.typ, tc.name)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("StepIndex(%q, %q) = %d, %v; want %d", tc.typ, tc.name, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("StepIndex(%q, %q) = %d, %v; want an error with %q", tc.typ, tc.name, got, err, tc.err)
		}
	}
}
