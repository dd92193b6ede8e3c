// Package steps holds the order saga's participants: inventory (reserve and
// release stock), payment (charge and refund) and shipping (ship and cancel a
// shipment).
//
// Each participant consumes its command topic behind an inbox (package
// outbox), so a message redelivered by Kafka changes nothing, and keeps one
// row per (saga, step) in its schema's steps table that makes every order of
// action and compensation safe:
//
//	command       steps row     effect                   new row       reply
//	action        none          apply                    done          Succeeded
//	action        none          business refusal         refused       Refused, reason
//	action        done          none (resend)            done          Succeeded
//	action        refused       none                     refused       Refused, recorded reason
//	action        compensated   none (late action)       compensated   Refused, "already compensated"
//	action        tombstone     none (late action)       tombstone     Refused, "compensated before the action arrived"
//	compensation  done          undo                     compensated   Succeeded
//	compensation  refused       none (nothing to undo)   refused       Succeeded
//	compensation  compensated   none (repeat)            compensated   Succeeded
//	compensation  tombstone     none (repeat)            tombstone     Succeeded
//	compensation  none          none (action not seen)   tombstone     Succeeded
//
// The row is locked first (a transaction-scoped advisory lock on the saga and
// step, then SELECT … FOR UPDATE, sent together), so concurrent deliveries of
// one saga's commands serialise. An effect decides whether it can be done
// before it writes anything (inventory locks its stock rows to decide), and
// its writes, the row and the reply in the participant's outbox go to
// PostgreSQL in one round trip, with the COMMIT when the transaction is the
// inbox's (saga.SendBatch); with the inbox claim they commit in one
// transaction. In a shared transaction, the actions' locks and reads go in
// the round trip of the claim (actionBatch.Prelude).
//
// A fault (bad payload, database error, injected error) is never a reply: the
// handler returns an error, which is retried and then dead-lettered.
//
// Participants can misbehave on purpose for tests and demos (Config.Inject
// and order.Data.Inject), but only when Config.AllowInjection is set; see
// CheckInjection for the modes.
package steps

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// Reasons of the refusals the framework itself gives (participants add
// their business reasons, such as "out of stock: SKU x").
const (
	// ReasonCompensatedFirst refuses an action whose compensation arrived
	// before it (the step had timed out): it has no effect.
	ReasonCompensatedFirst = "compensated before the action arrived"
	// ReasonAlreadyCompensated refuses an action resent after its effect
	// was applied and undone.
	ReasonAlreadyCompensated = "already compensated"
	// ReasonInjected is the reason of an injected refusal.
	ReasonInjected = "injected refusal"
)

// Status values of a steps row.
const (
	statusDone        = "done"
	statusRefused     = "refused"
	statusCompensated = "compensated"
	statusTombstone   = "tombstone"
)

// Config configures a participant. Pool and Topics are required; everything
// else has a default.
type Config struct {
	// Pool connects to the database holding the participant's schema.
	Pool *pgxpool.Pool
	// Topics names the command topic, the replies topic, the consumer
	// group and its dead-letter topic.
	Topics kafkax.Topics

	// AllowInjection switches fault injection on (tests, `sagaflow dev`,
	// `serve --allow-fault-injection`). When it is false, Inject and
	// order.Data.Inject are ignored (with one warning in the log).
	AllowInjection bool
	// Inject is the injection mode of every command of this participant
	// that does not name its own in order.Data.Inject (see CheckInjection).
	Inject string
	// Crash is called at an injected crash point (CrashBeforeCommit or
	// CrashAfterCommit). The default logs and exits the process with
	// status 3. A test passes one that records the point (or panics); when
	// it returns at CrashBeforeCommit, the handler returns an error so the
	// transaction rolls back as if the process had died.
	Crash func(point string)
	// Logger logs refusals, injections and faults (default slog.Default()).
	Logger *slog.Logger

	// MaxRetries, RetryInterval and MaxRetryInterval bound the retries of a
	// failing command before it is dead-lettered (outbox.ConsumerConfig's
	// defaults when zero).
	MaxRetries       int
	RetryInterval    time.Duration
	MaxRetryInterval time.Duration

	// ChargeLimitCents (payment) declines a charge above it, in the
	// order's currency (zero means DefaultChargeLimitCents);
	// CustomerLimits overrides it per customer id (there zero declines
	// every charge).
	ChargeLimitCents int64
	CustomerLimits   map[string]int64
	// BlockedCountries (shipping) are ISO country codes not shipped to.
	// Nil means DefaultBlockedCountries; an empty non-nil slice blocks none.
	BlockedCountries []string
}

// effect is what a participant does to its own tables.
type effect interface {
	// validate checks an action's data; its error makes the command
	// permanent (dead-lettered).
	validate(d *order.Data) error
	// apply decides whether the actions of sagas ids (one, or a batch)
	// with data ds can be done, reading (and locking) on tx what it needs
	// to, and queues their writes on b. A non-empty refusals[i] is a
	// business refusal of action i, which queues nothing (it must not
	// write on tx before it has decided).
	apply(ctx context.Context, tx pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data) (refusals []string, err error)
	// undo reverses the effect apply made for the saga, on tx or queued on
	// b.
	undo(ctx context.Context, tx pgx.Tx, b *pgx.Batch, sagaID uuid.UUID) error
}

// prereader is an effect that locks and reads what apply needs in the round
// trip of the inbox's BEGIN and claim (actionBatch.Prelude), instead of in
// one of its own. prelude runs for every action taken, redeliveries
// included, so it may only lock and read; what it returns is filled in once
// that round trip's results are read, and handed to applyPre.
type prereader interface {
	prelude(b *pgx.Batch, ds []*order.Data) (pre any)
	// applyPre is apply for the actions ds (some of those prelude was
	// given) with what prelude read.
	applyPre(ctx context.Context, tx pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data, pre any) (refusals []string, err error)
}

// Participant is one participant of the order saga: it handles the action
// and compensation commands of its step.
type Participant struct {
	name             string
	topic            string
	actionType       string
	compensationType string
	fx               effect
	cfg              Config
	log              *slog.Logger
	out              *outbox.Outbox
	inbox            *outbox.Inbox
	def              mode // cfg.Inject parsed
	q                stepQueries

	warnOnce sync.Once
}

func newParticipant(name, topic, actionType, compensationType string, fx effect, cfg Config) (*Participant, error) {
	if cfg.Pool == nil {
		return nil, fmt.Errorf("%s participant: no database pool", name)
	}
	if topic == "" || cfg.Topics.SagaReplies == "" {
		return nil, fmt.Errorf("%s participant: its command topic and the replies topic must be named (kafkax.DefaultTopics)", name)
	}
	def, err := parseMode(cfg.Inject)
	if err != nil {
		return nil, fmt.Errorf("%s participant: %w", name, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Participant{
		name:             name,
		topic:            topic,
		actionType:       actionType,
		compensationType: compensationType,
		fx:               fx,
		cfg:              cfg,
		log:              cfg.Logger.With("participant", name),
		out:              outbox.New(name),
		inbox:            outbox.NewInbox(cfg.Pool, name, cfg.Topics.Group(name)),
		def:              def,
		q:                newStepQueries(name),
	}
	if p.cfg.Crash == nil {
		p.cfg.Crash = func(point string) {
			p.log.Error("injected crash: exiting", "point", point)
			os.Exit(3)
		}
	}
	if def.kind != modeNone && !cfg.AllowInjection {
		p.warnOnce.Do(func() {
			p.log.Warn("fault injection is not allowed: ignoring it", "inject", cfg.Inject)
		})
	}
	return p, nil
}

// Name is the participant's name, which is also its step's name and its
// schema: "inventory", "payment" or "shipping".
func (p *Participant) Name() string { return p.name }

// Schema is the PostgreSQL schema holding the participant's tables, outbox
// and inbox.
func (p *Participant) Schema() string { return p.name }

// Topic is the command topic the participant consumes.
func (p *Participant) Topic() string { return p.topic }

// Group is the participant's consumer group (also its inbox consumer name).
func (p *Participant) Group() string { return p.cfg.Topics.Group(p.name) }

// DeadLetterTopic is where commands that failed for good go.
func (p *Participant) DeadLetterTopic() string { return p.cfg.Topics.DeadLetter(p.name) }

// Outbox is the participant's outbox, where its replies are written; the
// relay drains it.
func (p *Participant) Outbox() *outbox.Outbox { return p.out }

// Inbox is the participant's inbox (consumer Group() in its schema), which
// Register uses; its counters tell how many commands were applied and how
// many redeliveries were skipped.
func (p *Participant) Inbox() *outbox.Inbox { return p.inbox }

// Batch is the participant's set-at-a-time handler of action commands,
// which Register gives its inbox's shared transactions.
func (p *Participant) Batch() outbox.BatchHandler { return actionBatch{p} }

// Types are the message types the participant accepts: its action's and
// its compensation's.
func (p *Participant) Types() (action, compensation string) {
	return p.actionType, p.compensationType
}

// Register adds the participant's consumer to router: it consumes Topic()
// with sub (which must be subscribed in consumer group Group()), behind the
// inbox, with bounded retries, and publishes commands that failed for good
// to DeadLetterTopic() with deadLetter. With fault injection allowed it also
// installs the after-commit crash point.
func (p *Participant) Register(router *message.Router, sub message.Subscriber, deadLetter message.Publisher) error {
	if router == nil || sub == nil || deadLetter == nil {
		return fmt.Errorf("register %s participant: router, subscriber and dead-letter publisher are required", p.name)
	}
	var after func(*message.Message)
	if p.cfg.AllowInjection {
		after = p.AfterCommit
	}
	return outbox.AddConsumer(router, outbox.ConsumerConfig{
		Name:             p.Group(),
		Topic:            p.topic,
		Subscriber:       sub,
		Inbox:            p.inbox,
		Handler:          p.Handle,
		Batch:            p.Batch(),
		DeadLetter:       deadLetter,
		DeadLetterTopic:  p.DeadLetterTopic(),
		MaxRetries:       p.cfg.MaxRetries,
		RetryInterval:    p.cfg.RetryInterval,
		MaxRetryInterval: p.cfg.MaxRetryInterval,
		AfterCommit:      after,
		Logger:           p.cfg.Logger,
	})
}

// Handle applies one command inside tx (an outbox.Handler): it checks the
// message, locks the saga's steps row, applies or undoes the effect as the
// package documentation's table says, and writes the reply to the outbox.
// Errors for a message that no retry can fix are outbox.Permanent.
func (p *Participant) Handle(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
	cmd, data, err := p.decode(msg)
	if err != nil {
		return err
	}
	log := p.log.With("saga_id", cmd.SagaID, "kind", cmd.Kind, "attempt", cmd.Attempt, "message_id", msg.UUID)
	m := p.injection(cmd.Kind, &data)
	switch m.kind {
	case modeError:
		log.Warn("injected fault")
		return fmt.Errorf("%s %s of saga %s: injected fault", p.name, cmd.Kind, cmd.SagaID)
	case modeDrop:
		log.Warn("injected drop: the command is consumed without effect or reply")
		return nil
	case modeDelay:
		if outbox.Grouped(ctx) {
			// Sleeping here would hold up every message sharing the
			// transaction.
			return outbox.ErrRunAlone
		}
		log.Warn("injected delay", "delay", m.delay)
		t := time.NewTimer(m.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s %s of saga %s: injected delay interrupted: %w", p.name, cmd.Kind, cmd.SagaID, ctx.Err())
		}
	}

	var (
		outcome saga.Outcome
		reason  string
		b       pgx.Batch
	)
	if cmd.Kind == saga.KindAction {
		outcome, reason, err = p.action(ctx, tx, &b, cmd, &data, m.kind == modeRefuse)
	} else {
		outcome, reason, err = p.compensate(ctx, tx, &b, cmd, m.kind == modeRefuse)
	}
	if err != nil {
		return fmt.Errorf("%s %s of saga %s: %w", p.name, cmd.Kind, cmd.SagaID, err)
	}
	reply, err := saga.NewReply(p.Name(), p.cfg.Topics.SagaReplies, cmd, msg.UUID, outcome, reason)
	if err != nil {
		return err
	}
	if err := p.out.Queue(&b, outbox.Traced(ctx, reply)); err != nil {
		return err
	}
	if err := saga.SendBatch(ctx, tx, &b); err != nil {
		return fmt.Errorf("%s %s of saga %s: write the outcome: %w", p.name, cmd.Kind, cmd.SagaID, err)
	}
	if outcome == saga.Refused {
		log.Info("refused", "reason", reason)
	} else {
		log.Debug("succeeded")
	}

	if m.kind == modeCrashBeforeCommit {
		first, err := p.firstCrash(ctx, CrashBeforeCommit, msg.UUID)
		if err != nil {
			return err
		}
		if first {
			log.Warn("injected crash before commit")
			p.cfg.Crash(CrashBeforeCommit)
			return fmt.Errorf("%s %s of saga %s: injected crash before commit (the transaction rolls back)", p.name, cmd.Kind, cmd.SagaID)
		}
	}
	return nil
}

// AfterCommit is the consumer's after-commit hook: it runs the injected
// crash-after-commit point (the transaction committed, the message is not
// acknowledged yet, so Kafka delivers it again and the inbox skips it).
// Register installs it when injection is allowed.
func (p *Participant) AfterCommit(msg *message.Message) {
	if !p.cfg.AllowInjection {
		return
	}
	cmd, data, err := p.decode(msg)
	if err != nil {
		return
	}
	if p.injection(cmd.Kind, &data).kind != modeCrashAfterCommit {
		return
	}
	first, err := p.firstCrash(context.WithoutCancel(msg.Context()), CrashAfterCommit, msg.UUID)
	if err != nil {
		p.log.Error("injected crash after commit skipped", "message_id", msg.UUID, "err", err)
		return
	}
	if first {
		p.log.Warn("injected crash after commit", "saga_id", cmd.SagaID, "kind", cmd.Kind, "message_id", msg.UUID)
		p.cfg.Crash(CrashAfterCommit)
	}
}

// decode checks the message's type against this participant and decodes the
// command and its data. All its errors are permanent.
func (p *Participant) decode(msg *message.Message) (saga.Command, order.Data, error) {
	var d order.Data
	cmd, err := saga.DecodeCommand(msg)
	if err != nil {
		return cmd, d, err
	}
	var want saga.Kind
	switch typ := msg.Metadata.Get(outbox.HeaderType); typ {
	case p.actionType:
		want = saga.KindAction
	case p.compensationType:
		want = saga.KindCompensation
	default:
		return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s has type %q, want %s or %s", p.name, msg.UUID, typ, p.actionType, p.compensationType))
	}
	if cmd.Kind != want {
		return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s of type %s carries a command of kind %s", p.name, msg.UUID, msg.Metadata.Get(outbox.HeaderType), cmd.Kind))
	}
	if cmd.Step != p.name {
		return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s is for step %q", p.name, msg.UUID, cmd.Step))
	}
	if err := decodeData(cmd.Data, &d); err != nil {
		return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s of saga %s: %w", p.name, msg.UUID, cmd.SagaID, err))
	}
	// A compensation needs only the saga id (the effect is undone from this
	// participant's own rows), so it is not refused for data an action
	// would be: that lets a saga whose action was dead-lettered finish.
	if cmd.Kind == saga.KindAction {
		if field := nulField(&d); field != "" {
			return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s of saga %s: invalid order data: %s holds a NUL character", p.name, msg.UUID, cmd.SagaID, field))
		}
		if err := p.fx.validate(&d); err != nil {
			return cmd, d, outbox.Permanent(fmt.Errorf("%s: message %s of saga %s: invalid order data: %w", p.name, msg.UUID, cmd.SagaID, err))
		}
	}
	return cmd, d, nil
}

func decodeData(raw json.RawMessage, d *order.Data) error {
	if raw = bytes.TrimSpace(raw); len(raw) == 0 || raw[0] != '{' {
		return errors.New("order data is not a JSON object")
	}
	if err := json.Unmarshal(raw, d); err != nil {
		return fmt.Errorf("decode order data: %w", err)
	}
	return nil
}

// nulField names the first text field of d that a participant stores (the
// SKUs, customer id, currency, shipping address) holding a NUL character,
// or "": PostgreSQL can store a NUL neither in text (SQLSTATE 22021) nor in
// jsonb (22P05), so such an action would fail on every delivery.
func nulField(d *order.Data) string {
	for i, it := range d.Items {
		if strings.ContainsRune(it.SKU, 0) {
			return fmt.Sprintf("items[%d].sku", i)
		}
	}
	a := d.ShippingAddress
	for _, f := range []struct{ name, v string }{
		{"customer_id", d.CustomerID}, {"currency", d.Currency},
		{"shipping_address.name", a.Name}, {"shipping_address.line1", a.Line1}, {"shipping_address.line2", a.Line2},
		{"shipping_address.city", a.City}, {"shipping_address.postal_code", a.PostalCode}, {"shipping_address.country", a.Country},
	} {
		if strings.ContainsRune(f.v, 0) {
			return f.name
		}
	}
	return ""
}

// action runs an action command (see the package documentation's table);
// its writes are queued on b.
func (p *Participant) action(ctx context.Context, tx pgx.Tx, b *pgx.Batch, cmd saga.Command, d *order.Data, refuse bool) (saga.Outcome, string, error) {
	status, reason, found, err := p.lockStep(ctx, tx, cmd)
	if err != nil {
		return "", "", err
	}
	if found {
		return answerAgain(status, reason)
	}
	refusal := ReasonInjected
	if !refuse {
		refusals, err := p.fx.apply(ctx, tx, b, []uuid.UUID{cmd.SagaID}, []*order.Data{d})
		if err != nil {
			return "", "", err
		}
		refusal = refusals[0]
	}
	if refusal != "" {
		// Should the effect have queued anything before it found the
		// refusal, it is dropped: a refusal has no effect.
		*b = pgx.Batch{}
		b.Queue(p.q.insert, cmd.SagaID, cmd.Step, statusRefused, refusal)
		return saga.Refused, refusal, nil
	}
	b.Queue(p.q.insert, cmd.SagaID, cmd.Step, statusDone, nil)
	return saga.Succeeded, "", nil
}

// answerAgain is the answer to an action whose steps row exists (status,
// with its refusal reason): the action is not applied again.
func answerAgain(status, reason string) (saga.Outcome, string, error) {
	switch status {
	case statusDone:
		return saga.Succeeded, "", nil
	case statusRefused:
		return saga.Refused, reason, nil
	case statusCompensated:
		return saga.Refused, ReasonAlreadyCompensated, nil
	case statusTombstone:
		return saga.Refused, ReasonCompensatedFirst, nil
	default:
		return "", "", fmt.Errorf("unknown step status %q", status)
	}
}

// compensate runs a compensation command (see the package documentation's
// table); its writes are queued on b.
func (p *Participant) compensate(ctx context.Context, tx pgx.Tx, b *pgx.Batch, cmd saga.Command, refuse bool) (saga.Outcome, string, error) {
	if refuse {
		return saga.Refused, ReasonInjected, nil
	}
	status, _, found, err := p.lockStep(ctx, tx, cmd)
	if err != nil {
		return "", "", err
	}
	if !found {
		b.Queue(p.q.insert, cmd.SagaID, cmd.Step, statusTombstone, nil)
		return saga.Succeeded, "", nil
	}
	switch status {
	case statusDone:
		if err := p.fx.undo(ctx, tx, b, cmd.SagaID); err != nil {
			return "", "", err
		}
		b.Queue(p.q.update, cmd.SagaID, cmd.Step, statusCompensated)
	case statusRefused, statusCompensated, statusTombstone:
		// Nothing to undo (a refused action had no effect), or undone already.
	default:
		return "", "", fmt.Errorf("unknown step status %q", status)
	}
	return saga.Succeeded, "", nil
}

// lockStep serialises the commands of one (saga, step) and reads its row.
// The advisory lock covers the case where the row does not exist yet, which
// SELECT … FOR UPDATE alone cannot lock.
func (p *Participant) lockStep(ctx context.Context, tx pgx.Tx, cmd saga.Command) (status, reason string, found bool, err error) {
	// One round trip: the read is a statement of its own, so its snapshot
	// is taken after the lock is granted.
	var b pgx.Batch
	b.Queue(p.q.lock, p.name, cmd.SagaID.String()+"/"+cmd.Step)
	b.Queue(p.q.read, cmd.SagaID, cmd.Step)
	br := tx.SendBatch(ctx, &b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return "", "", false, fmt.Errorf("lock step row: %w", err)
	}
	var r *string
	err = br.QueryRow().Scan(&status, &r)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, br.Close()
	}
	if err != nil {
		return "", "", false, fmt.Errorf("read step row: %w", err)
	}
	if err := br.Close(); err != nil {
		return "", "", false, fmt.Errorf("read step row: %w", err)
	}
	if r != nil {
		reason = *r
	}
	return status, reason, true, nil
}

// firstCrash records, on its own connection (so that it survives the
// rollback and the crash), that the message reached an injected crash point,
// and reports whether this is the first time. Crashing once per message and
// point lets a restarted process get past it instead of crashing forever.
// The record is a row of the schema's inbox under the consumer name
// "<group>#<point>", purged by inbox retention like any other. It needs a
// second connection while the handler holds one: the wait for it is
// bounded, so a pool exhausted by handlers all at this point fails them
// (they are retried) instead of deadlocking.
func (p *Participant) firstCrash(ctx context.Context, point, msgID string) (bool, error) {
	id, err := uuid.Parse(msgID)
	if err != nil {
		return false, outbox.Permanent(fmt.Errorf("message id %q is not a UUID: %w", msgID, err))
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tag, err := p.cfg.Pool.Exec(ctx, p.q.crashMark, p.Group()+"#"+point, id)
	if err != nil {
		return false, fmt.Errorf("record injected crash point %s of message %s: %w", point, msgID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// stepQueries is the SQL of one schema's steps table.
type stepQueries struct {
	lock, read, insert, update, crashMark string
	// lockMany, readMany and insertMany are lock, read and insert for a
	// batch of actions. readOne is readMany for one saga: PostgreSQL
	// keeps its generic plan, where it plans "saga_id = ANY($2)" afresh at
	// every call (0.11 ms a call, measured with
	// pg_stat_statements.track_planning, against 0.015 ms to run it).
	lockMany, readMany, readOne, insertMany string
}

func newStepQueries(schema string) stepQueries {
	steps := pgx.Identifier{schema, "steps"}.Sanitize()
	return stepQueries{
		// Two int4 keys: a lock space apart from the outbox writer's
		// single-bigint advisory locks.
		lock:   `SELECT pg_advisory_xact_lock(hashtext($1::text || '.steps'), hashtext($2::text))`,
		read:   `SELECT status, reason FROM ` + steps + ` WHERE saga_id = $1 AND step = $2 FOR UPDATE`,
		insert: `INSERT INTO ` + steps + ` (saga_id, step, status, reason) VALUES ($1, $2, $3, $4)`,
		update: `UPDATE ` + steps + ` SET status = $3, updated_at = now() WHERE saga_id = $1 AND step = $2`,
		// The keys are sorted first, so two batches lock in one order.
		lockMany: `SELECT count(pg_advisory_xact_lock(hashtext($1::text || '.steps'), hashtext(k)))
FROM (SELECT k FROM unnest($2::text[]) AS k ORDER BY k) AS keys`,
		readMany:   `SELECT saga_id, status, reason FROM ` + steps + ` WHERE step = $1 AND saga_id = ANY($2)`,
		readOne:    `SELECT saga_id, status, reason FROM ` + steps + ` WHERE step = $1 AND saga_id = $2`,
		insertMany: `INSERT INTO ` + steps + ` (saga_id, step, status, reason) SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])`,
		crashMark:  `INSERT INTO ` + pgx.Identifier{schema, "inbox"}.Sanitize() + ` (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
	}
}
