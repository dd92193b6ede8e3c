package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// unknownTopicTries is how many sends in a row may fail with "unknown topic
// or partition" (sarama already retried each) before the row is parked: a
// topic being created appears within a few tries, a deleted one never does.
const unknownTopicTries = 15

// sendOutcome is what one try of a batch came to.
type sendOutcome struct {
	// sent were acknowledged by Kafka; retry failed in a way that may pass
	// (a partition without leader, the broker unreachable); parked will
	// never be accepted as they are (too large, topic gone, not
	// authorised), with the error of each in parkErrs.
	sent, retry, parked []row
	parkErrs            []string
	// err is the first error of the try, for the log.
	err error
}

// sendOnce tries every row of batch once (sarama retries retriable errors
// itself first) and sorts the rows by outcome, keeping their order.
// unknownTopic counts, per row id, the tries that failed with an unknown
// topic; sendOnce updates it.
func (r *Relay) sendOnce(batch []row, unknownTopic map[uuid.UUID]int) sendOutcome {
	msgs := r.messages(batch)
	spans := traceSends(batch, msgs)
	err := r.cfg.Producer.SendMessages(msgs)
	if err == nil {
		endSends(spans, msgs, nil, nil)
		return sendOutcome{sent: batch}
	}
	var perrs sarama.ProducerErrors
	if !errors.As(err, &perrs) {
		// The whole call failed (the producer is closed, …): retry all.
		endSends(spans, msgs, nil, err)
		return sendOutcome{retry: batch, err: err}
	}
	failed := make(map[int]error, len(perrs))
	for _, pe := range perrs {
		if i, ok := pe.Msg.Metadata.(int); ok {
			if _, seen := failed[i]; !seen { // a duplicate's error counts once
				failed[i] = pe.Err
			}
		}
	}
	endSends(spans, msgs, failed, nil)
	out := sendOutcome{err: firstProducerError(err)}
	for i, rw := range batch {
		ferr, bad := failed[i]
		switch {
		case !bad:
			out.sent = append(out.sent, rw)
			delete(unknownTopic, rw.id)
		case neverAccepted(ferr):
			out.parked = append(out.parked, rw)
			out.parkErrs = append(out.parkErrs, ferr.Error())
		case errors.Is(ferr, sarama.ErrUnknownTopicOrPartition):
			unknownTopic[rw.id]++
			if unknownTopic[rw.id] >= unknownTopicTries {
				delete(unknownTopic, rw.id)
				out.parked = append(out.parked, rw)
				out.parkErrs = append(out.parkErrs, fmt.Sprintf("%v (%d tries)", ferr, unknownTopicTries))
				continue
			}
			out.retry = append(out.retry, rw)
		default:
			out.retry = append(out.retry, rw)
		}
	}
	return out
}

// neverAccepted reports whether Kafka will refuse the message however often
// it is sent: too large (for the producer's or the broker's limit), an
// invalid record or topic name, a policy, no authorisation.
func neverAccepted(err error) bool {
	var ce sarama.ConfigurationError
	if errors.As(err, &ce) {
		return true // e.g. larger than Producer.MaxMessageBytes
	}
	var ke sarama.KError
	if !errors.As(err, &ke) {
		return false
	}
	switch ke {
	case sarama.ErrMessageSizeTooLarge, sarama.ErrInvalidMessageSize, sarama.ErrInvalidMessage, sarama.ErrInvalidRecord,
		sarama.ErrInvalidTopic, sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed,
		sarama.ErrPolicyViolation, sarama.ErrInvalidRequiredAcks:
		return true
	}
	return false
}

// onePerKey splits rows into the first row of each partition key and the
// rest, both in order. While the relay probes (its last try failed), a call
// carries one row per key: at a partition's recovery sarama may fail the
// first messages of a call and deliver later ones (its circuit breaker
// closes, its metadata refreshes), which with two rows of a key in the call
// would reorder the key.
func onePerKey(rows []row) (first, rest []row) {
	seen := make(map[partitionKey]bool, len(rows))
	for _, rw := range rows {
		if k := rw.partitionKey(); !seen[k] {
			seen[k] = true
			first = append(first, rw)
			continue
		}
		rest = append(rest, rw)
	}
	return first, rest
}

// try sends rows once: all of them, or while the relay probes one per key
// (the others come back in wait, in order). It records whether the relay
// probes next.
func (r *Relay) try(rows []row, unknown map[uuid.UUID]int) (out sendOutcome, wait []row) {
	if r.probing.Load() {
		rows, wait = onePerKey(rows)
	}
	out = r.sendOnce(rows, unknown)
	r.probing.Store(len(out.retry) > 0)
	return out, wait
}

// sendAll sends batch until every row is sent or parked (parking those
// that can never be sent), backing off between tries; keepalive, when set,
// runs between tries. It returns the sent rows and false when ctx ended
// first.
func (r *Relay) sendAll(ctx context.Context, log *slog.Logger, batch []row, keepalive func(context.Context) error) ([]row, bool) {
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	unknown := map[uuid.UUID]int{}
	var sent []row
	for len(batch) > 0 {
		out, wait := r.try(batch, unknown)
		sent = append(sent, out.sent...)
		if err := r.park(ctx, out.parked, out.parkErrs); err != nil {
			log.Warn("park outbox rows Kafka will never accept; retrying them", "rows", len(out.parked), "err", err)
			out.retry = append(out.retry, out.parked...)
		}
		// Per key, a row to retry is older than the key's waiting rows.
		batch = append(out.retry, wait...)
		if len(out.retry) == 0 {
			backoff.reset()
			continue
		}
		log.Warn("publish outbox rows to Kafka failed; retrying them", "rows", len(batch), "sent", len(out.sent), "err", out.err)
		if !backoff.wait(ctx) {
			return sent, false
		}
		if keepalive != nil {
			if err := keepalive(ctx); err != nil && ctx.Err() == nil {
				log.Warn("keep the relay's database session alive while Kafka fails", "err", err)
			}
		}
	}
	return sent, true
}

// park moves rows from their outbox to its parked table, with why, in one
// statement per schema, and counts them.
func (r *Relay) park(ctx context.Context, rows []row, why []string) error {
	if len(rows) == 0 {
		return nil
	}
	bySchema := map[string]struct {
		seqs []int64
		errs []string
	}{}
	for i, rw := range rows {
		s := bySchema[rw.schema]
		s.seqs, s.errs = append(s.seqs, rw.seq), append(s.errs, why[i])
		bySchema[rw.schema] = s
	}
	for schema, s := range bySchema {
		o := r.outbox(schema)
		if o == nil {
			return fmt.Errorf("park rows of unknown outbox %s", schema)
		}
		tag, err := r.cfg.Pool.Exec(ctx, o.q.park, s.seqs, s.errs)
		if err != nil {
			return fmt.Errorf("park %d rows of outbox %s: %w", len(s.seqs), schema, err)
		}
		r.parked.Add(tag.RowsAffected())
		r.log.Error("outbox rows parked: Kafka will never accept them; `sagaflow parked` lists, retries or discards them",
			"outbox", schema, "rows", tag.RowsAffected(), "first_error", s.errs[0])
	}
	return nil
}

// outbox returns the relay's outbox of schema.
func (r *Relay) outbox(schema string) *Outbox {
	for _, o := range r.cfg.Outboxes {
		if o.Schema() == schema {
			return o
		}
	}
	return nil
}

// Parked returns how many rows this relay parked since it started.
func (r *Relay) Parked() int64 { return r.parked.Load() }

// ParkedRow is an outbox row the relay could not publish, kept with the
// error until an operator retries or discards it.
type ParkedRow struct {
	Seq       int64             `json:"seq"`
	ID        uuid.UUID         `json:"id"`
	Topic     string            `json:"topic"`
	Key       string            `json:"key"`
	Size      int               `json:"size"`
	Headers   map[string]string `json:"headers"`
	CreatedAt time.Time         `json:"created_at"`
	ParkedAt  time.Time         `json:"parked_at"`
	Error     string            `json:"error"`
}

// execer is what changing parked rows needs: a pool, a connection or a
// transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// ListParked returns up to limit parked rows of outbox o, oldest first.
func (o *Outbox) ListParked(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, limit int) ([]ParkedRow, error) {
	rows, err := db.Query(ctx, o.q.listParked, limit)
	if err != nil {
		return nil, fmt.Errorf("list parked rows of outbox %s: %w", o.Schema(), err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ParkedRow, error) {
		var p ParkedRow
		var headers []byte
		if err := row.Scan(&p.Seq, &p.ID, &p.Topic, &p.Key, &p.Size, &headers, &p.CreatedAt, &p.ParkedAt, &p.Error); err != nil {
			return p, err
		}
		return p, json.Unmarshal(headers, &p.Headers)
	})
	if err != nil {
		return nil, fmt.Errorf("list parked rows of outbox %s: %w", o.Schema(), err)
	}
	return out, nil
}

// CountParked returns how many rows of outbox o are parked.
func (o *Outbox) CountParked(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int64, error) {
	var n int64
	if err := db.QueryRow(ctx, o.q.countParked).Scan(&n); err != nil {
		return 0, fmt.Errorf("count parked rows of outbox %s: %w", o.Schema(), err)
	}
	return n, nil
}

// RetryParked moves the parked rows seqs (all of them when seqs is empty)
// back into the outbox, in their order, for the relay to publish again (after
// the operator fixed the cause: raised the broker's limit, created the topic,
// granted the ACL). It returns how many moved.
func (o *Outbox) RetryParked(ctx context.Context, db execer, seqs []int64) (int64, error) {
	tag, err := db.Exec(ctx, o.q.retryParked, seqs)
	if err != nil {
		return 0, fmt.Errorf("retry parked rows of outbox %s: %w", o.Schema(), err)
	}
	return tag.RowsAffected(), nil
}

// DiscardParked deletes the parked rows seqs (all of them when seqs is
// empty) and returns how many it deleted.
func (o *Outbox) DiscardParked(ctx context.Context, db execer, seqs []int64) (int64, error) {
	tag, err := db.Exec(ctx, o.q.discardParked, seqs)
	if err != nil {
		return 0, fmt.Errorf("discard parked rows of outbox %s: %w", o.Schema(), err)
	}
	return tag.RowsAffected(), nil
}
