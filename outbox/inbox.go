package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/telemetry"
)

// Handler applies one message's effect inside tx and writes the messages it
// causes through an Outbox on the same tx. It must not commit or roll back.
type Handler func(ctx context.Context, tx pgx.Tx, msg *message.Message) error

// Inbox deduplicates the messages of one consumer.
type Inbox struct {
	pool     *pgxpool.Pool
	q        queries
	consumer string
	group    group
	batch    BatchHandler

	handled    atomic.Int64
	duplicates atomic.Int64
	batches    atomic.Int64
}

// DefaultMaxBatch is how many messages Wrap commits in one transaction at
// most.
const DefaultMaxBatch = 64

// DefaultParallel is how many shared transactions an inbox's Wrap has in
// flight at once. One leaves a consumer's messages waiting on a single
// transaction's round trips; many make the batches small. Two measured best
// on two cores (sagaflow bench: 1 → 347, 2 → 364, 4 → 306 sagas/s).
const DefaultParallel = 2

// NewInbox returns the inbox of consumer (a consumer group name) in the
// given schema's inbox table. Its Wrap commits up to DefaultMaxBatch
// messages handled at once in one transaction (see SetMaxBatch).
func NewInbox(pool *pgxpool.Pool, schema, consumer string) *Inbox {
	in := &Inbox{pool: pool, q: newQueries(schema), consumer: consumer}
	in.group.max = DefaultMaxBatch
	in.group.par = DefaultParallel
	return in
}

// SetBatchHandler gives Wrap's shared transactions a set-at-a-time handler
// for the messages it takes. Call it before the inbox handles messages.
func (in *Inbox) SetBatchHandler(b BatchHandler) { in.batch = b }

// SetMaxBatch sets how many messages Wrap commits in one transaction at
// most; 1 gives every message a transaction of its own. Call it before the
// inbox handles messages.
func (in *Inbox) SetMaxBatch(n int) {
	in.group.max = max(n, 1)
}

// Consumer is the consumer name recorded with each message.
func (in *Inbox) Consumer() string { return in.consumer }

// Handled and Duplicates count, since the process started, messages applied
// and redeliveries skipped.
func (in *Inbox) Handled() int64    { return in.handled.Load() }
func (in *Inbox) Duplicates() int64 { return in.duplicates.Load() }

// Transactions counts the transactions Wrap committed (a batch of messages
// each); Handled()/Transactions() is the mean batch size.
func (in *Inbox) Transactions() int64 { return in.batches.Load() }

// Wrap returns a watermill handler that runs h exactly once per message id:
// it claims (consumer, message id) in the inbox, runs h and commits in one
// transaction; the caller acks after it returns nil. A message already
// claimed by a committed transaction is skipped (and acked); one claimed by
// a transaction still in flight waits for it.
//
// Messages handled at the same time (one per partition the consumer holds)
// share a transaction: group commit. The first to arrive runs at once;
// those that arrive while a transaction is in flight wait for it and then
// go together, up to the inbox's batch size, in the next: one claim
// statement, their handlers in turn, one commit. Each returns only after
// that commit, so nothing is acked before its effect is durable. A handler
// that fails fails only its own message, with its own error (the others go
// again, each in a transaction of its own), and so does a panic.
func (in *Inbox) Wrap(h Handler) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		id, err := uuid.Parse(msg.UUID)
		if err != nil {
			return Permanent(fmt.Errorf("message id %q is not a UUID: %w", msg.UUID, err))
		}
		ctx := telemetry.WithSagaID(msg.Context(), msg.Metadata.Get(HeaderCorrelationID))
		var span trace.Span
		if telemetry.Enabled() {
			ctx, span = in.startProcess(ctx, msg)
			msg.SetContext(ctx) // a batch handler finds the span there
		}
		dup, err := in.handleGrouped(ctx, id, msg, func(ctx context.Context, tx pgx.Tx) error { return h(ctx, tx, msg) })
		if span != nil {
			errorType := ""
			switch {
			case err == nil:
			case IsPermanent(err):
				errorType = "permanent"
			case IsTransient(err):
				errorType = "transient"
			default:
				errorType = "handler"
			}
			telemetry.Processed(span, dup, err, errorType)
		}
		if err != nil {
			return err
		}
		if dup {
			in.duplicates.Add(1)
			telemetry.Duplicates.WithLabelValues(in.consumer).Inc()
		} else {
			in.handled.Add(1)
		}
		return nil
	}
}

// startProcess starts msg's consumer span, the child of the producer's.
func (in *Inbox) startProcess(ctx context.Context, msg *message.Message) (context.Context, trace.Span) {
	m := telemetry.Message{Topic: message.SubscribeTopicFromCtx(ctx), Key: msg.Metadata.Get(kafkax.KeyMetadata), ID: msg.UUID,
		SagaID: msg.Metadata.Get(HeaderCorrelationID), Group: in.consumer, Partition: -1, Offset: -1}
	if p, ok := kafka.MessagePartitionFromCtx(ctx); ok {
		m.Partition = p
	}
	if o, ok := kafka.MessagePartitionOffsetFromCtx(ctx); ok {
		m.Offset = o
	}
	if m.Topic == "" {
		m.Topic = in.consumer
	}
	return telemetry.StartProcess(ctx, msg.Metadata, m)
}

// Handle runs fn in a transaction that first claims message id for this
// consumer; duplicate reports that the message was already applied (fn was
// not run).
func (in *Inbox) Handle(ctx context.Context, id uuid.UUID, fn func(ctx context.Context, tx pgx.Tx) error) (duplicate bool, err error) {
	var (
		dups int
		xid  uint32
	)
	tx, err := beginClaim(ctx, in.pool, func(rows pgx.Rows) error {
		n, err := pgx.ForEachRow(rows, []any{&dups, &xid}, func() error { return nil })
		if err == nil && n.RowsAffected() != 1 {
			err = fmt.Errorf("the claim returned %d rows", n.RowsAffected())
		}
		return err
	}, nil, in.q.inboxClaim, in.consumer, id)
	if err != nil {
		return false, fmt.Errorf("claim message %s in %s inbox: %w", id, in.q.schema, err)
	}
	tx.xid = xid
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if dups == 0 {
		if err := fn(ctx, tx); err != nil {
			return false, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("commit message %s of %s: %w", id, in.consumer, err)
	}
	return dups > 0, nil
}

// Duplicates sums, over every consumer of the schema's inbox, the
// redeliveries absorbed: the count survives process restarts.
func DuplicatesAbsorbed(ctx context.Context, pool *pgxpool.Pool, schema string) (int64, error) {
	var n int64
	if err := pool.QueryRow(ctx, newQueries(schema).duplicates).Scan(&n); err != nil {
		return 0, fmt.Errorf("count duplicates in %s inbox: %w", schema, err)
	}
	return n, nil
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that no retry can fix (an undecodable payload,
// an unknown message type, a future schema version): the message goes to the
// dead-letter topic at once.
func Permanent(err error) error { return permanentError{err} }

// VersionOf reads msg's schema_version header for a consumer that reads
// versions newest-1 and newest (the newest it knows and the one before it,
// which it upcasts). A missing or malformed header, or a version outside
// that window (a future version, or one too old to upcast), is a Permanent
// error that says which: the message is dead-lettered at once, never half
// understood.
func VersionOf(msg *message.Message, newest int) (int, error) {
	v := msg.Metadata.Get(HeaderSchemaVersion)
	if v == "" {
		return 0, Permanent(fmt.Errorf("message %s has no %s header", msg.UUID, HeaderSchemaVersion))
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, Permanent(fmt.Errorf("message %s: bad schema version %q", msg.UUID, v))
	}
	if n > newest {
		return 0, Permanent(fmt.Errorf("message %s has schema version %d, this build understands up to %d", msg.UUID, n, newest))
	}
	if n < newest-1 {
		return 0, Permanent(fmt.Errorf("message %s has schema version %d, this build reads versions %d and %d", msg.UUID, n, newest-1, newest))
	}
	return n, nil
}

// IsPermanent reports whether err was marked Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// IsTransient reports whether err comes from the infrastructure being
// unreachable (database down or restarting, connection lost, context
// cancelled) rather than from the message: such a message is retried until
// the infrastructure is back, never dead-lettered.
func IsTransient(err error) bool {
	if err == nil || IsPermanent(err) {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code[:2] {
		case "08", "53", "57": // connection exception, insufficient resources, operator intervention
			return true
		case "40": // serialization failure, deadlock: retrying helps
			return true
		}
		// Read-only transaction: connected to a primary that was demoted;
		// the pool's next connection finds the new one.
		return pe.Code == "25006"
	}
	// Errors from a connection that broke mid-query.
	return errors.Is(err, pgx.ErrTxClosed) || errors.Is(err, net.ErrClosed) || isConnClosed(err)
}

// messageBound reports whether a transient err may be the message's own
// doing rather than the infrastructure's: the database answered, but this
// message's statement was cancelled (57014: its statement timeout) or lost
// a race (class 40). Such an error is retried, but not forever.
func messageBound(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "57014" || pe.Code[:2] == "40")
}

// transientGiveUps counts messages dead-lettered after
// MaxTransientDeliveries deliveries that each failed with a message-bound
// transient error.
var transientGiveUps atomic.Int64

// TransientGiveUps is how many messages this process dead-lettered because
// every one of MaxTransientDeliveries deliveries failed with the same kind
// of transient error (a statement timeout, a lost race).
func TransientGiveUps() int64 { return transientGiveUps.Load() }

// transientGiveUp marks the error of a message dead-lettered by
// transientCap (for the dead-letter metric's reason class).
type transientGiveUp struct{ error }

func (e transientGiveUp) Unwrap() error { return e.error }

// deadLetterReason classes the error that dead-lettered a message.
func deadLetterReason(err error) string {
	var g transientGiveUp
	switch {
	case errors.As(err, &g):
		return "transient_giveup"
	case IsPermanent(err):
		return "permanent"
	}
	return "retries_exhausted"
}

// transientCap counts, per message id, the deliveries that failed with a
// message-bound transient error, and turns the last allowed one into a
// permanent error. Ids leave the map when their message succeeds or gives
// up; the map is cleared if it grows past a bound (messages that moved to
// another consumer), which only restarts their counts.
type transientCap struct {
	max  int
	mu   sync.Mutex
	seen map[string]int
}

func (c *transientCap) middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err == nil || !IsTransient(err) || !messageBound(err) {
			if err == nil {
				c.mu.Lock()
				delete(c.seen, msg.UUID)
				c.mu.Unlock()
			}
			return out, err
		}
		c.mu.Lock()
		if len(c.seen) > 10_000 {
			clear(c.seen)
		}
		c.seen[msg.UUID]++
		n := c.seen[msg.UUID]
		if n >= c.max {
			delete(c.seen, msg.UUID)
		}
		c.mu.Unlock()
		if n < c.max {
			return out, err
		}
		transientGiveUps.Add(1)
		return out, Permanent(transientGiveUp{fmt.Errorf("gave up after %d deliveries that each failed with a transient error: %w", n, err)})
	}
}

func isConnClosed(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	msg := err.Error()
	for _, s := range []string{"conn closed", "connection reset", "broken pipe", "unexpected EOF", "failed to deallocate", "conn busy"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// ConsumerConfig describes one consumer: a handler behind an inbox,
// subscribed in a consumer group, with bounded retries and a dead-letter
// topic.
type ConsumerConfig struct {
	// Name is the consumer group and the inbox consumer name.
	Name string
	// Topic to consume.
	Topic string
	// Subscriber is subscribed in group Name.
	Subscriber message.Subscriber
	// Inbox deduplicates and owns the transaction.
	Inbox *Inbox
	// Handler applies each message.
	Handler Handler
	// Batch, when set, applies together the messages of a shared
	// transaction that it takes (see BatchHandler); Handler the others.
	Batch BatchHandler
	// DeadLetter publishes messages that failed for good to DeadLetterTopic
	// (default Name + ".dlq").
	DeadLetter      message.Publisher
	DeadLetterTopic string
	// MaxRetries of a failing message before it is dead-lettered (default 5),
	// with exponential backoff from RetryInterval (default 50 ms) up to
	// MaxRetryInterval (default 2 s).
	MaxRetries       int
	RetryInterval    time.Duration
	MaxRetryInterval time.Duration
	// MaxTransientDeliveries bounds the deliveries of a message whose
	// retries all fail with a transient error that may be its own (a
	// statement timeout, a serialization failure): after that many it is
	// dead-lettered (default 10). Errors of an unreachable database are
	// retried without bound: the message is fine.
	MaxTransientDeliveries int
	// AfterCommit, when set, runs after a message's transaction committed
	// and before it is acked (fault injection uses it to crash there).
	AfterCommit func(msg *message.Message)
	Logger      *slog.Logger
}

// DeadLetterTopicOf is the dead-letter topic of a consumer group.
func DeadLetterTopicOf(group string) string { return group + ".dlq" }

// AddConsumer registers c on router. The middleware order is: dead-letter
// (outermost; the dead letter keeps the message's origin partition, offset,
// key, consumer group and attempts as headers), then bounded retries, then
// panic recovery, then the inbox.
// A permanent error skips the retries. A transient error (database down) is
// retried and then nacked, so Kafka redelivers it; it is never dead-lettered,
// because the message is fine and the dead-letter topics must only hold bad
// messages. The exception is a transient error that may be the message's
// own (its statement times out, it keeps losing a race): after
// MaxTransientDeliveries deliveries it is dead-lettered with that reason,
// so that it cannot block its partition for good.
func AddConsumer(router *message.Router, c ConsumerConfig) error {
	if c.DeadLetterTopic == "" {
		c.DeadLetterTopic = DeadLetterTopicOf(c.Name)
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = 5
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 50 * time.Millisecond
	}
	if c.MaxRetryInterval == 0 {
		c.MaxRetryInterval = 2 * time.Second
	}
	if c.MaxTransientDeliveries <= 0 {
		c.MaxTransientDeliveries = 10
	}
	capped := &transientCap{max: c.MaxTransientDeliveries, seen: map[string]int{}}
	// The consumer's counters exist from the start, at 0, so that rates
	// and alerts see them before the first event.
	telemetry.Duplicates.WithLabelValues(c.Name)
	telemetry.TransientRetries.WithLabelValues(c.Name)
	for _, reason := range []string{"permanent", "retries_exhausted", "transient_giveup"} {
		telemetry.DeadLetters.WithLabelValues(c.Name, reason)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	log := c.Logger.With("consumer", c.Name)
	poison, err := middleware.PoisonQueueWithFilter(c.DeadLetter, c.DeadLetterTopic, func(err error) bool {
		if IsTransient(err) {
			return false
		}
		log.Error("message dead-lettered", "topic", c.DeadLetterTopic, "err", err)
		telemetry.DeadLetters.WithLabelValues(c.Name, deadLetterReason(err)).Inc()
		return true
	})
	if err != nil {
		return fmt.Errorf("dead-letter middleware for %s: %w", c.Name, err)
	}
	retry := middleware.Retry{
		MaxRetries:          c.MaxRetries,
		InitialInterval:     c.RetryInterval,
		MaxInterval:         c.MaxRetryInterval,
		Multiplier:          2,
		RandomizationFactor: 0.2,
		ShouldRetry: func(p middleware.RetryParams) bool {
			if IsTransient(p.Err) {
				telemetry.TransientRetries.WithLabelValues(c.Name).Inc()
			}
			return !IsPermanent(p.Err)
		},
	}
	if c.Batch != nil {
		c.Inbox.SetBatchHandler(c.Batch)
	}
	handle := c.Inbox.Wrap(c.Handler)
	if c.AfterCommit != nil {
		inner := handle
		handle = func(msg *message.Message) error {
			if err := inner(msg); err != nil {
				return err
			}
			c.AfterCommit(msg)
			return nil
		}
	}
	h := router.AddConsumerHandler(c.Name, c.Topic, c.Subscriber, handle)
	h.AddMiddleware(unframe, poison, stampOrigin(c.Name, c.DeadLetterTopic), capped.middleware, retry.Middleware, middleware.Recoverer, countAttempts)
	return nil
}
