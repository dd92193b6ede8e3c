package saga_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/saga"
)

// A participant answers per (saga, step), not per attempt: its answer to an
// earlier attempt of the step and kind the saga waits for is just as true.
// (Before: thrown away as stale, so an outage that let the deadline resend
// cancelled sagas whose answer was on its way.)
func TestReplyToEarlierAttemptIsAccepted(t *testing.T) {
	t.Parallel()
	t.Run("action", func(t *testing.T) {
		t.Parallel()
		e := setup(t, threeSteps(time.Minute, 3, 3, false))
		id := e.start()
		e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
		e.expire(id) // b attempt 1 overdue → attempt 2
		e.expire(id) // → attempt 3
		e.reply(id, "b", saga.KindAction, 1, saga.Succeeded, "")
		if in := e.get(id); in.State != saga.Running || in.Step != 2 || in.Attempt != 1 {
			t.Fatalf("after b's answer to attempt 1: %+v, want running at step c attempt 1", in)
		}
		// The answer to attempt 2 or 3 arriving now is stale: b is done.
		e.reply(id, "b", saga.KindAction, 2, saga.Succeeded, "")
		if in := e.get(id); in.Step != 2 {
			t.Fatalf("a second answer moved the saga: %+v", in)
		}
	})
	t.Run("compensation", func(t *testing.T) {
		t.Parallel()
		e := setup(t, threeSteps(time.Minute, 3, 3, false))
		id := e.start()
		e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
		e.reply(id, "b", saga.KindAction, 1, saga.Refused, "declined")
		e.expire(id) // a.undo attempt 1 overdue → attempt 2
		e.reply(id, "a", saga.KindCompensation, 1, saga.Succeeded, "")
		if in := e.get(id); in.State != saga.Compensated {
			t.Fatalf("after a.undo's answer to attempt 1: %s, want compensated", in.State)
		}
	})
	t.Run("an attempt never sent is stale", func(t *testing.T) {
		t.Parallel()
		e := setup(t, threeSteps(time.Minute, 3, 3, false))
		id := e.start()
		e.reply(id, "a", saga.KindAction, 2, saga.Succeeded, "")
		if in := e.get(id); in.Step != 0 || in.Version != 1 {
			t.Fatalf("a reply to an attempt not sent moved the saga: %+v", in)
		}
	})
}

// A stuck saga waits for the compensation it gave up on: when that
// compensation's success arrives late, the saga carries on compensating.
// (Before: stale, the saga stayed stuck until an operator came.)
func TestStuckSagaAcceptsLateCompensationSuccess(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 2, false))
	id := e.start()
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	e.reply(id, "b", saga.KindAction, 1, saga.Succeeded, "")
	e.reply(id, "c", saga.KindAction, 1, saga.Refused, "blocked")
	e.expire(id) // b.undo attempt 1 → 2
	e.expire(id) // → stuck
	if in := e.get(id); in.State != saga.Stuck {
		t.Fatalf("state %s, want stuck", in.State)
	}
	// A late refusal changes nothing; a late success moves it on.
	e.reply(id, "b", saga.KindCompensation, 2, saga.Refused, "still failing")
	if in := e.get(id); in.State != saga.Stuck {
		t.Fatalf("a refused compensation moved a stuck saga to %s", in.State)
	}
	e.reply(id, "b", saga.KindCompensation, 1, saga.Succeeded, "")
	in := e.get(id)
	if in.State != saga.Compensating || in.Step != 0 || in.Attempt != 1 {
		t.Fatalf("after the late success: %+v, want compensating a", in)
	}
	e.reply(id, "a", saga.KindCompensation, 1, saga.Succeeded, "")
	if in := e.get(id); in.State != saga.Compensated || !strings.Contains(in.Reason, "c refused: blocked") {
		t.Fatalf("end: %s (%s), want compensated for c's refusal", in.State, in.Reason)
	}
}

// The sweeper leaves alone sagas of types this engine does not run (a
// retired type, another orchestrator's): a hundred of them overdue must not
// keep its own sagas from timing out. (Before: it locked the oldest hundred
// overdue sagas, all foreign, changed nothing and returned 100, forever.)
func TestSweeperSkipsUnknownTypes(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	ctx := context.Background()
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO saga.instances (id, type, state, step, attempt, data, step_deadline, deadline)
SELECT gen_random_uuid(), 'retired', 'running', 0, 1, '{}', now() - interval '1 hour', now() + interval '1 hour'
FROM generate_series(1, 150)`); err != nil {
		t.Fatal(err)
	}
	id := e.start()
	if _, err := e.db.Pool.Exec(ctx, `UPDATE saga.instances SET step_deadline = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.engine.SweepOnce(ctx, 100); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.types(id); !equal(got, []string{"a.do#1", "a.do#2"}) {
		t.Fatalf("own overdue saga's commands %v, want a resend", got)
	}
	var untouched int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM saga.instances WHERE type = 'retired' AND version = 1 AND attempt = 1`).Scan(&untouched); err != nil {
		t.Fatal(err)
	}
	if untouched != 150 {
		t.Fatalf("%d of 150 foreign sagas untouched", untouched)
	}
}

// A saga whose definition lost the step it is on (a deploy removed a step)
// becomes stuck with a reason, for an operator. (Before: the sweeper
// goroutine panicked with index out of range.)
func TestSweeperStuckOnRemovedStep(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 3, 3, false))
	ctx := context.Background()
	id := e.start()
	if _, err := e.db.Pool.Exec(ctx, `UPDATE saga.instances SET step = 7, step_deadline = now() - interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	n, err := e.engine.SweepOnce(ctx, 100)
	if err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	in := e.get(id)
	if in.State != saga.Stuck || !strings.Contains(in.Reason, "no step 7") || in.StepDeadline != nil {
		t.Fatalf("saga %+v, want stuck for its missing step", in)
	}
	// A reply for it is stale, not a panic either.
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
}

// Deadlines are computed in the database's time, the clock they are
// compared with: a saga's step deadline and deadline are exactly the
// starting transaction's now() plus the timeouts, whatever the host's clock
// says. (Before: host time plus the timeouts, so a host whose clock lagged
// by more than a step timeout made sagas overdue at birth.)
func TestDeadlinesInDatabaseTime(t *testing.T) {
	t.Parallel()
	def := threeSteps(7*time.Second, 3, 3, false)
	def.Deadline = 3 * time.Minute
	e := setup(t, def)
	ctx := context.Background()
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	id := uuid.Must(uuid.NewV7())
	if _, err := e.engine.Start(ctx, tx, "test", id, json.RawMessage(`{}`)); err != nil {
		t.Fatal(err)
	}
	var stepOK, sagaOK bool
	if err := tx.QueryRow(ctx, `SELECT step_deadline = now() + interval '7 seconds', deadline = now() + interval '3 minutes'
FROM saga.instances WHERE id = $1`, id).Scan(&stepOK, &sagaOK); err != nil {
		t.Fatal(err)
	}
	if !stepOK || !sagaOK {
		t.Fatalf("deadlines not in database time: step deadline ok %v, saga deadline ok %v", stepOK, sagaOK)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// A re-armed step deadline too.
	e.reply(id, "a", saga.KindAction, 1, saga.Succeeded, "")
	var ok bool
	if err := e.db.Pool.QueryRow(ctx, `SELECT step_deadline = updated_at + interval '7 seconds' FROM saga.instances WHERE id = $1`, id).Scan(&ok); err != nil || !ok {
		t.Fatalf("step deadline after a move not in database time (%v)", err)
	}
}

// While the delivery check reports that messages are not flowing (broker
// down, relay backlog), an overdue step is not an attempt: its deadline is
// re-armed for the same attempt, nothing is resent, and the history says
// why. Once delivery flows the deadline counts again.
func TestDeadlineHeldWhileDeliveryStalls(t *testing.T) {
	t.Parallel()
	e := setup(t, threeSteps(time.Minute, 2, 3, false))
	var stalled string
	e.engine.SetDeliveryCheck(func(context.Context) (string, error) { return stalled, nil })
	id := e.start()
	stalled = "oldest unpublished message in outbox saga is 12s old"
	for range 3 {
		e.expire(id)
	}
	in := e.get(id)
	if in.State != saga.Running || in.Attempt != 1 || in.StepDeadline == nil || !in.StepDeadline.After(time.Now().Add(50*time.Second)) {
		t.Fatalf("held saga %+v, want running attempt 1 with a re-armed deadline", in)
	}
	if got := e.types(id); !equal(got, []string{"a.do#1"}) {
		t.Fatalf("commands %v, want no resend while held", got)
	}
	held := 0
	for _, ev := range e.events(id) {
		if strings.HasSuffix(ev, saga.EventDeadlineHeld) {
			held++
		}
	}
	if held != 3 {
		t.Fatalf("history %v, want 3 %q lines", e.events(id), saga.EventDeadlineHeld)
	}
	if m := e.engine.Metrics(); m.DeadlinesHeld != 3 || m.Timeouts != 0 {
		t.Fatalf("metrics %+v, want 3 held and no timeouts", m)
	}
	stalled = ""
	e.expire(id)
	if in := e.get(id); in.Attempt != 2 {
		t.Fatalf("after delivery resumed: attempt %d, want 2", in.Attempt)
	}
}
