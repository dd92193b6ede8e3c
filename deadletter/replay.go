package deadletter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// Replayer publishes dead letters again to their origin topics.
type Replayer struct {
	store *Store
	pub   message.Publisher
}

// NewReplayer returns a replayer that publishes with pub, a publisher that
// keys messages by their kafkax.KeyMetadata entry (kafkax.Config's
// NewPublisher).
func NewReplayer(store *Store, pub message.Publisher) *Replayer {
	return &Replayer{store: store, pub: pub}
}

// Replayed is one dead letter published again.
type Replayed struct {
	DeadLetter int64     `json:"dead_letter"`
	Topic      string    `json:"topic"`
	MessageID  uuid.UUID `json:"message_id"`
	// Replay numbers the dead letter's replays (from 1).
	Replay int `json:"replay"`
}

// Replay publishes up to limit dead letters matching f, oldest first, each
// to its origin topic with its key, its headers (without what the
// dead-letter path added), header outbox.HeaderReplayedFrom naming it, and a
// new message id (ReplayID). Each is marked replayed in the transaction
// that locked it, committed after Kafka acknowledged it: a crash in between
// replays it again under the same id, which the consumer's inbox absorbs.
// It stops at the first dead letter that fails and returns those replayed
// before it with the error.
func (r *Replayer) Replay(ctx context.Context, f Filter, limit int) ([]Replayed, error) {
	if f.IsZero() {
		return nil, errors.New("replay needs a filter (ids, consumer group, type, fingerprint, saga or a time)")
	}
	picked, err := r.store.List(ctx, f, limit)
	if err != nil {
		return nil, err
	}
	slices.Reverse(picked) // oldest first, as they failed
	var done []Replayed
	for _, d := range picked {
		rp, err := r.replayOne(ctx, d.ID)
		if err != nil {
			return done, err
		}
		done = append(done, rp)
	}
	return done, nil
}

func (r *Replayer) replayOne(ctx context.Context, id int64) (Replayed, error) {
	tx, err := r.store.pool.Begin(ctx)
	if err != nil {
		return Replayed{}, fmt.Errorf("replay dead letter %d: %w", id, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	ds, err := r.store.query(ctx, tx, sqlPick, Filter{IDs: []int64{id}}, 1)
	if err != nil {
		return Replayed{}, err
	}
	if len(ds) == 0 {
		return Replayed{}, fmt.Errorf("replay dead letter %d: %w (purged meanwhile?)", id, ErrNotFound)
	}
	d := ds[0]
	if d.OriginTopic == "" {
		return Replayed{}, fmt.Errorf("replay dead letter %d: its origin topic is unknown (the consumer that dead-lettered it did not say)", id)
	}
	rp := Replayed{DeadLetter: id, Topic: d.OriginTopic, Replay: d.Replays + 1}
	rp.MessageID = ReplayID(id, rp.Replay)
	msg := message.NewMessage(rp.MessageID.String(), d.Payload)
	for k, v := range d.Headers {
		if !slices.Contains(headersNotReplayed, k) {
			msg.Metadata.Set(k, v)
		}
	}
	msg.Metadata.Set(kafkax.KeyMetadata, d.Key)
	msg.Metadata.Set(outbox.HeaderReplayedFrom, strconv.FormatInt(id, 10))
	if err := r.pub.Publish(d.OriginTopic, msg); err != nil {
		return Replayed{}, fmt.Errorf("replay dead letter %d to %s: %w", id, d.OriginTopic, err)
	}
	if _, err := tx.Exec(ctx, sqlMarkReplayed, id); err != nil {
		return Replayed{}, fmt.Errorf("mark dead letter %d replayed: %w", id, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return Replayed{}, fmt.Errorf("mark dead letter %d replayed: %w", id, err)
	}
	return rp, nil
}
