package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/telemetry"
)

// State is a saga instance's state.
type State string

// The states of a saga. completed, compensated and failed are terminal;
// stuck waits for an operator.
const (
	Running      State = "running"
	Compensating State = "compensating"
	Completed    State = "completed"
	// Compensated: a step failed and every completed step was undone.
	Compensated State = "compensated"
	// Failed: a step failed and there was nothing to undo.
	Failed State = "failed"
	// Stuck: a compensation kept failing past its attempts. Nothing retries
	// it until an operator does (Engine.Retry) or resolves it by hand.
	Stuck State = "stuck"
)

// Terminal reports whether no more commands will be sent for the saga.
func (s State) Terminal() bool { return s == Completed || s == Compensated || s == Failed }

// Valid reports whether s names a state.
func (s State) Valid() bool {
	switch s {
	case Running, Compensating, Completed, Compensated, Failed, Stuck:
		return true
	}
	return false
}

// History events.
const (
	EventStarted          = "started"
	EventSent             = "sent"
	EventSucceeded        = "succeeded"
	EventRefused          = "refused"
	EventTimedOut         = "timed out"
	EventStaleReply       = "stale reply ignored"
	EventCompleted        = "completed"
	EventCompensated      = "compensated"
	EventFailed           = "failed"
	EventStuck            = "stuck"
	EventDeadlineHeld     = "deadline held"
	EventOperatorRetry    = "retried by operator"
	EventOperatorResolved = "resolved by operator"
	EventOperatorAborted  = "aborted by operator"
)

// Instance is one saga.
type Instance struct {
	ID    uuid.UUID `json:"id"`
	Type  string    `json:"type"`
	State State     `json:"state"`
	// Step is the index of the step whose action (running) or compensation
	// (compensating, stuck) is awaited; Attempt counts its sends.
	Step    int `json:"step"`
	Attempt int `json:"attempt"`
	// Completed is how many steps' actions succeeded.
	Completed int             `json:"completed_steps"`
	Data      json.RawMessage `json:"data"`
	Reason    string          `json:"reason,omitempty"`
	// StepDeadline and Deadline are stored in the database's time (now()
	// plus the timeouts, compared with now()); an Instance returned by Start
	// carries the host's estimate of them.
	StepDeadline *time.Time `json:"step_deadline,omitempty"`
	Deadline     time.Time  `json:"deadline"`
	Version      int        `json:"version"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
	EndedAt      *time.Time `json:"ended_at,omitempty"`

	// armFor is the step timeout the next update stores as the step
	// deadline (now() + armFor, in database time); 0 stores none.
	armFor time.Duration
}

// scanInstances reads every row of rows as an instance and closes rows.
func scanInstances(rows pgx.Rows) ([]*Instance, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (*Instance, error) { return scanInstance(row) })
}

func scanInstance(row pgx.Row) (*Instance, error) {
	var in Instance
	var state string
	err := row.Scan(&in.ID, &in.Type, &state, &in.Step, &in.Attempt, &in.Completed, &in.Data, &in.Reason,
		&in.StepDeadline, &in.Deadline, &in.Version, &in.CreatedAt, &in.UpdatedAt, &in.EndedAt)
	in.State = State(state)
	return &in, err
}

// Engine runs saga definitions.
type Engine struct {
	pool    *pgxpool.Pool
	defs    map[string]*Definition
	types   []string // the keys of defs, for the sweeper
	log     *slog.Logger
	metrics engineMetrics
	// delivery, when set, tells the sweeper whether messages are flowing.
	delivery DeliveryCheck
	// commandVersion is the schema version of the commands it writes.
	commandVersion int
}

// SetCommandVersion makes the engine write commands of schema version v:
// SchemaVersion (the default) or the one before it, while participants
// that read only the older version are being upgraded (consumers first:
// then switch back). Replies come back in the version asked. Call it
// before the engine runs.
func (e *Engine) SetCommandVersion(v int) error {
	if v != SchemaVersion && v != SchemaVersion-1 {
		return fmt.Errorf("command schema version %d: this build writes %d or %d", v, SchemaVersion-1, SchemaVersion)
	}
	e.commandVersion = v
	return nil
}

// DeliveryCheck reports whether the pipeline that carries commands and
// replies is stalled: a non-empty answer says why (for the saga's history),
// an empty one that messages flow. The composition root supplies it (from
// the age of the oldest unpublished outbox row); the engine does not know
// where its messages travel.
type DeliveryCheck func(ctx context.Context) (stalled string, err error)

// SetDeliveryCheck makes the sweeper hold deadlines while c reports a
// stall: an overdue step is then not an attempt, its deadline is re-armed
// for the same attempt and nothing is resent, so that an outage delays
// sagas instead of spending their attempts. Call it before the sweeper runs.
func (e *Engine) SetDeliveryCheck(c DeliveryCheck) { e.delivery = c }

// NewEngine validates the definitions and returns an engine that writes its
// commands to the saga schema's outbox.
func NewEngine(pool *pgxpool.Pool, logger *slog.Logger, defs ...*Definition) (*Engine, error) {
	if logger == nil {
		logger = slog.Default()
	}
	e := &Engine{pool: pool, defs: map[string]*Definition{}, log: logger.With("component", "saga"), commandVersion: SchemaVersion}
	for _, d := range defs {
		if err := e.Define(d); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Define adds a saga definition. Call it before the engine handles messages.
func (e *Engine) Define(d *Definition) error {
	if err := d.validate(); err != nil {
		return err
	}
	if _, ok := e.defs[d.Type]; !ok {
		e.types = append(e.types, d.Type)
	}
	// The steps' counters exist from the start, at 0.
	for _, st := range d.Steps {
		for _, k := range []Kind{KindAction, KindCompensation} {
			telemetry.StepTimeouts.WithLabelValues(st.Name, string(k))
			telemetry.Resends.WithLabelValues(st.Name, string(k))
		}
	}
	e.defs[d.Type] = d
	return nil
}

// Start creates saga id of type sagaType with data inside tx and writes its
// first command to the outbox: the saga exists, and starts, exactly when tx
// commits.
func (e *Engine) Start(ctx context.Context, tx pgx.Tx, sagaType string, id uuid.UUID, data json.RawMessage) (*Instance, error) {
	var w writes
	in, err := e.start(ctx, &w, sagaType, id, data)
	if err != nil {
		return nil, err
	}
	if err := flush(ctx, tx, &w); err != nil {
		return nil, fmt.Errorf("start saga %s: %w", id, err)
	}
	return in, nil
}

// StartBatch is Start for a caller that sends its transaction's writes in
// one round trip: it queues the saga's rows and first command on b, and the
// saga starts when the caller's transaction (which sends b) commits. ctx
// carries the trace the saga joins (it is not used for I/O).
func (e *Engine) StartBatch(ctx context.Context, b *pgx.Batch, sagaType string, id uuid.UUID, data json.RawMessage) (*Instance, error) {
	var w writes
	in, err := e.start(ctx, &w, sagaType, id, data)
	if err != nil {
		return nil, err
	}
	wb, err := w.batch()
	if err != nil {
		return nil, fmt.Errorf("start saga %s: %w", id, err)
	}
	b.QueuedQueries = append(b.QueuedQueries, wb.QueuedQueries...)
	return in, nil
}

func (e *Engine) start(ctx context.Context, w *writes, sagaType string, id uuid.UUID, data json.RawMessage) (*Instance, error) {
	def, ok := e.defs[sagaType]
	if !ok {
		return nil, fmt.Errorf("start saga %s: unknown saga type %q", id, sagaType)
	}
	// The saga's root span: its commands, their replies and everything
	// they cause are its descendants; the sweeper's resends find it by the
	// trace parent kept with the saga.
	var traceParent *string
	if telemetry.Enabled() {
		var span trace.Span
		ctx, span = telemetry.Tracer().Start(ctx, "start saga "+sagaType,
			trace.WithAttributes(telemetry.AttrSagaID.String(id.String()), telemetry.AttrSagaType.String(sagaType),
				telemetry.AttrSagaStep.String(def.Steps[0].Name)))
		defer span.End()
		w.trace = ctx
		defer func() { w.trace = nil }()
		h := map[string]string{}
		telemetry.Inject(ctx, h)
		if tp := h[telemetry.TraceParent]; tp != "" {
			traceParent = &tp
		}
	}
	now := time.Now()
	in := &Instance{ID: id, Type: sagaType, State: Running, Step: 0, Attempt: 1, Data: data,
		Deadline: now.Add(def.Deadline), Version: 1, CreatedAt: now, UpdatedAt: now}
	first := def.Steps[0]
	timeout := first.Retry.timeout(1)
	dl := now.Add(timeout)
	in.StepDeadline = &dl
	w.Queue(sqlInsertInstance, id, sagaType, data, timeout.Microseconds(), def.Deadline.Microseconds(), traceParent)
	e.history(w, id, first.Name, "", 0, EventStarted, "", uuid.Nil)
	if err := e.send(w, def, in, KindAction, ""); err != nil {
		return nil, err
	}
	e.metrics.started.Add(1)
	return in, nil
}

// flush sends w's writes in one round trip and empties w.
func flush(ctx context.Context, tx pgx.Tx, w *writes) error {
	b, err := w.batch()
	if err != nil {
		return err
	}
	if err := SendBatch(ctx, tx, b); err != nil {
		return fmt.Errorf("write saga changes: %w", err)
	}
	return nil
}

// SendBatch sends the statements queued on b in one round trip on tx,
// runs their callbacks (QueuedQuery.Exec and friends), returns the first
// error, and empties b. Callers that queue saga
// writes with StartBatch send them (and their own) with it.
//
// In an inbox transaction, statements without callbacks go with the
// COMMIT instead (outbox.SendAtCommit), one round trip less: their errors
// are then the commit's, and the transaction does not commit.
func SendBatch(ctx context.Context, tx pgx.Tx, b *pgx.Batch) error {
	if b.Len() == 0 {
		return nil
	}
	if outbox.SendAtCommit(tx, b) {
		return nil
	}
	defer func() { *b = pgx.Batch{} }()
	// Close reads every result, runs the queued queries' callbacks and
	// returns the first error.
	return tx.SendBatch(ctx, b).Close()
}

// HandleReply is the orchestrator's handler of replies (run behind the saga
// schema's inbox, so inside its transaction).
func (e *Engine) HandleReply(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
	r, err := DecodeReply(msg)
	if err != nil {
		return err
	}
	msgID, _ := uuid.Parse(msg.UUID)
	var w writes
	w.trace = ctx
	if err := e.apply(ctx, tx, &w, r, msgID); err != nil {
		return err
	}
	return flush(ctx, tx, &w)
}

// apply locks the saga that reply r answers and moves it. Its writes are
// gathered in w (the engine's transaction sends them in one round trip).
func (e *Engine) apply(ctx context.Context, tx pgx.Tx, w *writes, r Reply, msgID uuid.UUID) error {
	in, err := scanInstance(tx.QueryRow(ctx, sqlLockInstance, r.SagaID))
	if errors.Is(err, pgx.ErrNoRows) {
		return outbox.Permanent(fmt.Errorf("reply %s for unknown saga %s", msgID, r.SagaID))
	}
	if err != nil {
		return fmt.Errorf("lock saga %s: %w", r.SagaID, err)
	}
	return e.move(w, in, r, msgID)
}

// move moves saga in (locked) as reply r says, gathering its writes in w.
func (e *Engine) move(w *writes, in *Instance, r Reply, msgID uuid.UUID) error {
	if w.trace != nil {
		traceReply(w.trace, r)
	}
	def, ok := e.defs[in.Type]
	if !ok {
		return fmt.Errorf("saga %s has type %q, which this orchestrator does not run", in.ID, in.Type)
	}
	// answered records the reply in the saga's history, with who sent it.
	answered := func(event, reason string) {
		e.history(w, in.ID, r.Step, r.Kind, r.Attempt, event, reason, msgID)
		w.hist.participants[len(w.hist.participants)-1] = r.Participant
	}
	idx := def.stepIndex(r.Step)
	wantKind := KindAction
	if in.State == Compensating || in.State == Stuck {
		wantKind = KindCompensation
	}
	// A participant answers per (saga, step): its answer to any attempt
	// sent of the step and kind awaited is the answer. A stuck saga still
	// awaits the success of the compensation it gave up on.
	awaiting := in.State == Running || in.State == Compensating || (in.State == Stuck && r.Outcome == Succeeded)
	if idx < 0 || !awaiting || idx != in.Step || r.Kind != wantKind || r.Attempt < 1 || r.Attempt > in.Attempt {
		// A late or duplicated answer to a step or kind the saga no longer
		// waits for: keep it in the history and change nothing.
		e.metrics.stale.Add(1)
		reason := fmt.Sprintf("%s reply (attempt %d, %s) while the saga is %s at step %d attempt %d", r.Kind, r.Attempt, r.Outcome, in.State, in.Step, in.Attempt)
		answered(EventStaleReply, reason)
		return nil
	}
	step := def.Steps[idx]
	// The saga row was last written when this step's latest command was.
	telemetry.Observe(w.trace, telemetry.StepLatency.WithLabelValues(step.Name, string(r.Kind)), time.Since(in.UpdatedAt))
	switch {
	case r.Kind == KindAction && r.Outcome == Succeeded:
		answered(EventSucceeded, "")
		in.Completed = idx + 1
		if idx+1 == len(def.Steps) {
			return e.finish(w, def, in, Completed, "")
		}
		in.Step, in.Attempt = idx+1, 1
		return e.advance(w, def, in, KindAction, msgID.String())
	case r.Kind == KindAction && r.Outcome == Refused:
		answered(EventRefused, r.Reason)
		// A refusal made no change, so the refusing step needs no undo.
		return e.compensate(w, def, in, idx-1, fmt.Sprintf("%s refused: %s", step.Name, r.Reason), msgID.String())
	case r.Kind == KindCompensation && r.Outcome == Succeeded:
		answered(EventSucceeded, "")
		return e.compensate(w, def, in, idx-1, in.Reason, msgID.String())
	default: // a compensation refused: it must finish, so the deadline resends it
		e.metrics.compensationRefused.Add(1)
		answered(EventRefused, r.Reason+" (will resend)")
		return nil
	}
}

// compensate moves the saga to the compensation of the newest step at or
// below from that needs one, or ends it when none is left.
func (e *Engine) compensate(w *writes, def *Definition, in *Instance, from int, reason, causation string) error {
	in.Reason = reason
	for j := from; j >= 0; j-- {
		if def.Steps[j].CompensationType == "" {
			continue
		}
		firstCompensation := in.State == Running
		in.State, in.Step, in.Attempt = Compensating, j, 1
		if firstCompensation {
			e.metrics.compensating.Add(1)
		}
		return e.advance(w, def, in, KindCompensation, causation)
	}
	if in.State == Running {
		// Nothing was done, so nothing is undone.
		return e.finish(w, def, in, Failed, reason)
	}
	return e.finish(w, def, in, Compensated, reason)
}

// advance stores the saga's new step and attempt and sends the command.
func (e *Engine) advance(w *writes, def *Definition, in *Instance, kind Kind, causation string) error {
	policy := def.Steps[in.Step].Retry
	if kind == KindCompensation {
		policy = def.Steps[in.Step].CompensationRetry
	}
	e.arm(in, policy.timeout(in.Attempt))
	e.update(w, in)
	return e.send(w, def, in, kind, causation)
}

// arm sets the saga's step deadline to d from now: the database's now()
// when the update is written, the host's estimate in in.
func (e *Engine) arm(in *Instance, d time.Duration) {
	dl := time.Now().Add(d)
	in.StepDeadline, in.armFor = &dl, d
}

// send writes the command of the saga's current step and attempt.
func (e *Engine) send(w *writes, def *Definition, in *Instance, kind Kind, causation string) error {
	step := def.Steps[in.Step]
	typ := step.ActionType
	if kind == KindCompensation {
		typ = step.CompensationType
	}
	c := Command{SagaID: in.ID, SagaType: in.Type, Step: step.Name, Kind: kind, Attempt: in.Attempt, Data: in.Data, ReplyTo: def.ReplyTo}
	fitCommand(e.commandVersion, &c)
	payload, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode %s command of saga %s: %w", typ, in.ID, err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("new message id: %w", err)
	}
	m := outbox.Message{ID: id, Topic: step.Topic, Key: in.ID.String(), Payload: payload, Type: typ,
		SchemaVersion: e.commandVersion, CorrelationID: in.ID.String(), CausationID: causation}
	w.command(m)
	e.history(w, in.ID, step.Name, kind, in.Attempt, EventSent, typ, id)
	return nil
}

// finish ends the saga in a terminal state and runs the definition's hook,
// which queues its writes after the saga's.
func (e *Engine) finish(w *writes, def *Definition, in *Instance, state State, reason string) error {
	in.State, in.Reason, in.StepDeadline, in.armFor = state, reason, nil, 0
	e.update(w, in)
	event := EventCompleted
	switch state {
	case Compensated:
		event = EventCompensated
	case Failed:
		event = EventFailed
	}
	e.history(w, in.ID, def.stepName(in.Step), "", 0, event, reason, uuid.Nil)
	telemetry.Observe(w.trace, telemetry.SagaDuration.WithLabelValues(in.Type, string(state)), time.Since(in.CreatedAt))
	hook := def.OnCancelled
	if state == Completed {
		hook = def.OnCompleted
		e.metrics.completed.Add(1)
	} else {
		e.metrics.cancelled.Add(1)
	}
	if hook != nil {
		if err := hook(&w.Batch, in); err != nil {
			return fmt.Errorf("%s hook of saga %s: %w", state, in.ID, err)
		}
	}
	return nil
}

// update queues the saga row's new state.
func (e *Engine) update(w *writes, in *Instance) {
	var armFor *int64
	if in.StepDeadline != nil {
		us := in.armFor.Microseconds()
		armFor = &us
	}
	w.Queue(sqlUpdateInstance, in.ID, string(in.State), in.Step, in.Attempt, in.Completed, in.Reason, armFor)
	in.Version++
}

// history queues a line of the saga's history.
func (e *Engine) history(w *writes, id uuid.UUID, step string, kind Kind, attempt int, event, reason string, msgID uuid.UUID) {
	var mid *uuid.UUID
	if msgID != uuid.Nil {
		mid = &msgID
	}
	if w.trace != nil {
		traceEvent(w.trace, id, step, kind, attempt, event, reason)
	}
	h := &w.hist
	h.ids, h.steps, h.kinds, h.attempts = append(h.ids, id), append(h.steps, step), append(h.kinds, string(kind)), append(h.attempts, int32(attempt))
	h.events, h.reasons, h.msgIDs = append(h.events, event), append(h.reasons, reason), append(h.msgIDs, mid)
	h.participants = append(h.participants, "")
}

// writes collects the writes of one saga transaction. Statements are queued
// on the embedded batch; history lines and commands are gathered and become
// one multi-row insert each when the batch is taken, so a transaction that
// moves many sagas sends few statements.
type writes struct {
	pgx.Batch
	hist struct {
		ids                  []uuid.UUID
		steps, kinds, events []string
		attempts             []int32
		reasons              []string
		msgIDs               []*uuid.UUID
		participants         []string
	}
	cmds []outbox.Message
	// trace is the context whose span the writes belong to (the consumer
	// span of the reply being applied, the saga's root span, a sweep's
	// span); nil while tracing is off.
	trace context.Context
}

// sagaOutbox is the engine's outbox, where its commands go.
var sagaOutbox = outbox.New("saga")

// command gathers a command for the saga outbox (its ID and Topic set).
// With tracing on it carries the trace context of w.trace.
func (w *writes) command(m outbox.Message) {
	if w.trace != nil && telemetry.Enabled() {
		if m.Headers == nil {
			m.Headers = make(map[string]string, 3)
		}
		telemetry.Inject(w.trace, m.Headers)
	}
	w.cmds = append(w.cmds, m)
}

// batch queues the gathered history lines and commands after the
// statements, and returns the batch to send; w is empty afterwards.
func (w *writes) batch() (*pgx.Batch, error) {
	if h := &w.hist; len(h.ids) > 0 {
		w.Queue(sqlInsertHistoryMany, h.ids, h.steps, h.kinds, h.attempts, h.events, h.reasons, h.msgIDs, h.participants)
	}
	if err := sagaOutbox.Queue(&w.Batch, w.cmds...); err != nil {
		return nil, fmt.Errorf("send %d saga command(s): %w", len(w.cmds), err)
	}
	b, tr := w.Batch, w.trace
	*w = writes{trace: tr}
	return &b, nil
}

// SweepOnce handles up to limit sagas of this engine's types whose step
// deadline has passed, in one transaction, and returns how many it handled.
// An overdue action is resent with the next attempt until its attempts (or
// the saga's deadline) are spent; then the step fails and the saga
// compensates, the failed step included, because its action may yet arrive
// or may have happened unseen. An overdue compensation is resent until its
// attempts are spent; then the saga is stuck. While the delivery check
// reports a stall, an overdue step is held instead: same attempt, deadline
// re-armed, nothing resent.
func (e *Engine) SweepOnce(ctx context.Context, limit int) (int, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin deadline sweep: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	rows, err := tx.Query(ctx, sqlOverdue, e.types, limit)
	if err != nil {
		return 0, fmt.Errorf("find overdue sagas: %w", err)
	}
	due, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (overdue, error) {
		var o overdue
		o.Instance = new(Instance)
		var state string
		in := o.Instance
		err := row.Scan(&in.ID, &in.Type, &state, &in.Step, &in.Attempt, &in.Completed, &in.Data, &in.Reason,
			&in.StepDeadline, &in.Deadline, &in.Version, &in.CreatedAt, &in.UpdatedAt, &in.EndedAt, &o.pastDeadline, &o.traceParent)
		in.State = State(state)
		return o, err
	})
	if err != nil {
		return 0, fmt.Errorf("find overdue sagas: %w", err)
	}
	if len(due) == 0 {
		return 0, nil // the deferred rollback ends the read-only transaction
	}
	// Only a sweep that found overdue sagas asks whether delivery flows.
	var stalled string
	if e.delivery != nil {
		if stalled, err = e.delivery(ctx); err != nil {
			return 0, fmt.Errorf("check delivery before the deadline sweep: %w", err)
		}
	}
	var w writes
	for _, o := range due {
		end := sweepSpan(&w, o)
		err := e.timeout(&w, o, stalled)
		end()
		if err != nil {
			return 0, err
		}
	}
	if err := flush(ctx, tx, &w); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit deadline sweep: %w", err)
	}
	return len(due), nil
}

// overdue is a saga the sweeper claimed; pastDeadline is the database's
// verdict on the saga's own deadline.
type overdue struct {
	*Instance
	pastDeadline bool
	// traceParent is the saga's root span (nil: untraced).
	traceParent *string
}

func (e *Engine) timeout(w *writes, o overdue, stalled string) error {
	in := o.Instance
	def := e.defs[in.Type] // the sweep claims only known types
	if in.Step < 0 || in.Step >= len(def.Steps) {
		reason := fmt.Sprintf("saga type %s has no step %d (a deploy removed it?): an operator must resolve it", in.Type, in.Step)
		e.markStuck(w, def, in, KindAction, reason)
		return nil
	}
	step := def.Steps[in.Step]
	kind, policy := KindAction, step.Retry
	if in.State == Compensating {
		kind, policy = KindCompensation, step.CompensationRetry
	}
	if stalled != "" {
		// The command or its answer could not travel: not an attempt.
		e.metrics.held.Add(1)
		e.history(w, in.ID, step.Name, kind, in.Attempt, EventDeadlineHeld, stalled+"; attempt not counted", uuid.Nil)
		e.arm(in, policy.timeout(in.Attempt))
		e.update(w, in)
		return nil
	}
	e.metrics.timeouts.Add(1)
	telemetry.StepTimeouts.WithLabelValues(step.Name, string(kind)).Inc()
	if in.State == Running {
		spent := in.Attempt >= step.Retry.MaxAttempts
		if !spent && !o.pastDeadline {
			e.history(w, in.ID, step.Name, KindAction, in.Attempt, EventTimedOut, "resending", uuid.Nil)
			telemetry.Resends.WithLabelValues(step.Name, string(KindAction)).Inc()
			in.Attempt++
			return e.advance(w, def, in, KindAction, "")
		}
		why := fmt.Sprintf("%s did not answer after %d attempt(s)", step.Name, in.Attempt)
		if o.pastDeadline && !spent {
			why = fmt.Sprintf("%s did not answer before the saga's deadline", step.Name)
		}
		e.history(w, in.ID, step.Name, KindAction, in.Attempt, EventTimedOut, why, uuid.Nil)
		return e.compensate(w, def, in, in.Step, why, "")
	}
	// Compensating.
	if in.Attempt >= step.CompensationRetry.MaxAttempts {
		reason := fmt.Sprintf("compensation of %s unanswered after %d attempts (first failure: %s)", step.Name, in.Attempt, in.Reason)
		e.markStuck(w, def, in, KindCompensation, reason)
		return nil
	}
	e.history(w, in.ID, step.Name, KindCompensation, in.Attempt, EventTimedOut, "resending", uuid.Nil)
	telemetry.Resends.WithLabelValues(step.Name, string(KindCompensation)).Inc()
	in.Attempt++
	return e.advance(w, def, in, KindCompensation, "")
}

// markStuck parks the saga for an operator: no deadline, nothing resent.
// The saga's reason keeps the first failure; why goes to the history.
func (e *Engine) markStuck(w *writes, def *Definition, in *Instance, kind Kind, why string) {
	in.State, in.StepDeadline, in.armFor = Stuck, nil, 0
	if in.Reason == "" {
		in.Reason = why
	}
	e.metrics.stuck.Add(1)
	e.update(w, in)
	e.log.Error("saga stuck: an operator must retry or resolve it", "saga", in.ID, "step", def.stepName(in.Step), "attempts", in.Attempt, "why", why)
	e.history(w, in.ID, def.stepName(in.Step), kind, in.Attempt, EventStuck, why, uuid.Nil)
}

// Retry resumes a stuck saga: its compensation is sent again with a fresh
// set of attempts. note (who retried and why) is kept in the history entry.
func (e *Engine) Retry(ctx context.Context, id uuid.UUID, note string) (*Instance, error) {
	return e.operate(ctx, id, func(tx pgx.Tx, w *writes, def *Definition, in *Instance) error {
		if in.State != Stuck {
			return fmt.Errorf("saga %s is %s, only a stuck saga can be retried: %w", id, in.State, ErrConflict)
		}
		if in.Step < 0 || in.Step >= len(def.Steps) {
			return fmt.Errorf("saga %s is on step %d, which type %s no longer has: resolve it instead: %w", id, in.Step, in.Type, ErrConflict)
		}
		e.history(w, in.ID, def.Steps[in.Step].Name, KindCompensation, in.Attempt, EventOperatorRetry, note, uuid.Nil)
		in.State, in.Attempt = Compensating, 1
		return e.advance(w, def, in, KindCompensation, "")
	})
}

// Resolve ends a stuck saga as compensated after an operator undid the
// remaining steps by hand; note says what they did.
func (e *Engine) Resolve(ctx context.Context, id uuid.UUID, note string) (*Instance, error) {
	return e.operate(ctx, id, func(tx pgx.Tx, w *writes, def *Definition, in *Instance) error {
		if in.State != Stuck {
			return fmt.Errorf("saga %s is %s, only a stuck saga can be resolved: %w", id, in.State, ErrConflict)
		}
		e.history(w, in.ID, def.stepName(in.Step), KindCompensation, in.Attempt, EventOperatorResolved, note, uuid.Nil)
		return e.finish(w, def, in, Compensated, in.Reason)
	})
}

// Abort compensates a running saga now, as if its current step had failed:
// the compensations of the steps done are sent in reverse order, the
// current step's included (its action may be in flight: a participant that
// meets the compensation first leaves a tombstone and refuses the late
// action without effect). note (who aborted and why) is kept in the
// history and becomes the saga's reason.
func (e *Engine) Abort(ctx context.Context, id uuid.UUID, note string) (*Instance, error) {
	return e.operate(ctx, id, func(tx pgx.Tx, w *writes, def *Definition, in *Instance) error {
		if in.State != Running {
			return fmt.Errorf("saga %s is %s, only a running saga can be aborted: %w", id, in.State, ErrConflict)
		}
		if in.Step < 0 || in.Step >= len(def.Steps) {
			return fmt.Errorf("saga %s is on step %d, which type %s no longer has: %w", id, in.Step, in.Type, ErrConflict)
		}
		e.history(w, in.ID, def.Steps[in.Step].Name, KindAction, in.Attempt, EventOperatorAborted, note, uuid.Nil)
		return e.compensate(w, def, in, in.Step, "aborted by operator: "+note, "")
	})
}

// Steps returns the names of the steps of saga type typ, in order (nil for
// a type this engine does not define).
func (e *Engine) Steps(typ string) []string {
	def, ok := e.defs[typ]
	if !ok {
		return nil
	}
	names := make([]string, len(def.Steps))
	for i, s := range def.Steps {
		names[i] = s.Name
	}
	return names
}

// StepIndex returns the index of the step called name in saga type typ,
// or, when typ is empty, in every type that has it (an error when the
// types disagree on its index: give the type). The history names steps,
// an instance holds its step's index: operators' filters use this.
func (e *Engine) StepIndex(typ, name string) (int, error) {
	types := []string{typ}
	if typ == "" {
		types = e.Types()
	} else if _, ok := e.defs[typ]; !ok {
		return 0, fmt.Errorf("no saga type %q (types: %s)", typ, strings.Join(e.Types(), ", "))
	}
	i, in := -1, ""
	var all []string
	for _, t := range types {
		steps := e.Steps(t)
		all = append(all, steps...)
		j := slices.Index(steps, name)
		switch {
		case j < 0:
		case i >= 0 && j != i:
			return 0, fmt.Errorf("step %q is step %d of %s but step %d of %s: give the saga type", name, i+1, in, j+1, t)
		default:
			i, in = j, t
		}
	}
	if i < 0 {
		slices.Sort(all)
		return 0, fmt.Errorf("no saga type has a step %q (steps: %s)", name, strings.Join(slices.Compact(all), ", "))
	}
	return i, nil
}

// Types returns the saga types this engine defines.
func (e *Engine) Types() []string {
	types := make([]string, 0, len(e.defs))
	for t := range e.defs {
		types = append(types, t)
	}
	slices.Sort(types)
	return types
}

// ErrNotFound and ErrConflict classify operator errors.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

func (e *Engine) operate(ctx context.Context, id uuid.UUID, fn func(pgx.Tx, *writes, *Definition, *Instance) error) (*Instance, error) {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	in, err := scanInstance(tx.QueryRow(ctx, sqlLockInstance, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("saga %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("lock saga %s: %w", id, err)
	}
	def, ok := e.defs[in.Type]
	if !ok {
		return nil, fmt.Errorf("saga %s has unknown type %q", id, in.Type)
	}
	var w writes
	if err := fn(tx, &w, def, in); err != nil {
		return nil, err
	}
	if err := flush(ctx, tx, &w); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit saga %s: %w", id, err)
	}
	return in, nil
}
