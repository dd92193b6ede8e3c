// Package overview takes the figures of a Sagaflow deployment at a glance:
// sagas per state, the last hour's completions and durations per minute,
// each outbox's backlog and parked rows, every consumer group's lag from
// the broker's committed offsets, and dead letters per consumer. The
// console's overview page, GET /overview and `sagaflow overview` all show
// what Take returns, so the three never disagree.
package overview

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// LagTimeout bounds the broker's answer about consumer lag: an overview
// taken during a broker outage shows the rest, and the lag's error.
const LagTimeout = 3 * time.Second

// States are the saga states in the order an overview shows them.
var States = []saga.State{saga.Running, saga.Compensating, saga.Stuck, saga.Completed, saga.Compensated, saga.Failed}

// Sources are where the figures come from.
type Sources struct {
	Pool *pgxpool.Pool
	// Kafka, when set, is asked for the consumer groups' lag.
	Kafka  *kafkax.Config
	Topics kafkax.Topics
	// DeadLetters, when set, counts dead letters.
	DeadLetters *deadletter.Store
}

// Overview is a deployment at one moment.
type Overview struct {
	Taken  time.Time    `json:"taken"`
	States []StateCount `json:"states"`
	// Minutes are the last hour's minutes in which sagas ended, oldest
	// first; EndedLastHour sums them.
	Minutes       []Minute `json:"minutes"`
	EndedLastHour int64    `json:"ended_last_hour"`
	Outboxes      []Outbox `json:"outboxes"`
	// Lag is every Sagaflow consumer group's lag (absent without Kafka);
	// LagError says why it is missing when the broker did not answer.
	Lag      []GroupLag `json:"lag,omitempty"`
	LagError string     `json:"lag_error,omitempty"`
	// DeadLetters counts dead letters per consumer group that has any
	// (absent without a dead-letter store).
	DeadLetters      []deadletter.ConsumerCount `json:"dead_letters,omitempty"`
	DeadLettersTotal int64                      `json:"dead_letters_total"`
}

// StateCount is the number of sagas in one state.
type StateCount struct {
	State saga.State `json:"state"`
	Count int64      `json:"count"`
}

// Minute is one minute's ended sagas and their durations (placement to
// end) in milliseconds.
type Minute struct {
	At        time.Time `json:"at"`
	Ended     int64     `json:"ended"`
	Completed int64     `json:"completed"`
	P50ms     float64   `json:"p50_ms"`
	P99ms     float64   `json:"p99_ms"`
}

// Outbox is one outbox's backlog: rows waiting to be published, the
// oldest one's age, and rows parked because they can never be sent.
type Outbox struct {
	Schema      string        `json:"schema"`
	Rows        int64         `json:"rows"`
	OldestAge   time.Duration `json:"-"`
	OldestAgeMs int64         `json:"oldest_age_ms"`
	Parked      int64         `json:"parked"`
}

// GroupLag is the lag of one consumer group on the topic it consumes.
type GroupLag struct {
	Group string `json:"group"`
	Topic string `json:"topic"`
	Lag   int64  `json:"lag"`
}

// Take reads the overview now.
func Take(ctx context.Context, src Sources, now time.Time) (*Overview, error) {
	o := &Overview{Taken: now.UTC(), States: []StateCount{}, Minutes: []Minute{}, Outboxes: []Outbox{}}
	counts, err := saga.CountByState(ctx, src.Pool)
	if err != nil {
		return nil, fmt.Errorf("overview: %w", err)
	}
	for _, st := range States {
		o.States = append(o.States, StateCount{st, counts[st]})
	}
	minutes, err := saga.Throughput(ctx, src.Pool, now.Add(-time.Hour))
	if err != nil {
		return nil, fmt.Errorf("overview: %w", err)
	}
	for _, m := range minutes {
		o.Minutes = append(o.Minutes, Minute{At: m.At, Ended: m.Ended, Completed: m.Completed, P50ms: m.P50, P99ms: m.P99})
		o.EndedLastHour += m.Ended
	}
	for _, schema := range outbox.ServiceSchemas {
		ob := outbox.New(schema)
		b, err := ob.Backlog(ctx, src.Pool)
		if err != nil {
			return nil, fmt.Errorf("overview: %w", err)
		}
		parked, err := ob.CountParked(ctx, src.Pool)
		if err != nil {
			return nil, fmt.Errorf("overview: %w", err)
		}
		o.Outboxes = append(o.Outboxes, Outbox{Schema: schema, Rows: b.Rows, OldestAge: b.OldestAge,
			OldestAgeMs: b.OldestAge.Milliseconds(), Parked: parked})
	}
	if src.Kafka != nil {
		if o.Lag, err = Lag(ctx, src.Kafka, src.Topics); err != nil {
			o.LagError = err.Error()
		}
	}
	if src.DeadLetters != nil {
		if o.DeadLetters, err = src.DeadLetters.CountByConsumer(ctx); err != nil {
			return nil, fmt.Errorf("overview: %w", err)
		}
		for _, c := range o.DeadLetters {
			o.DeadLettersTotal += c.Count
		}
	}
	return o, nil
}

// Lag asks the broker for every Sagaflow consumer group's lag on the
// topics named by topics, within LagTimeout, on one connection.
func Lag(ctx context.Context, k *kafkax.Config, topics kafkax.Topics) ([]GroupLag, error) {
	ctx, cancel := context.WithTimeout(ctx, LagTimeout)
	defer cancel()
	groups := make(map[string][]string, len(kafkax.Consumers))
	for _, c := range kafkax.Consumers {
		groups[topics.Group(c)] = []string{topics.ConsumedBy(c)}
	}
	lags, err := k.GroupLags(ctx, groups)
	if err != nil {
		return nil, fmt.Errorf("consumer lag: %w", err)
	}
	rows := make([]GroupLag, 0, len(kafkax.Consumers))
	for _, c := range kafkax.Consumers {
		group := topics.Group(c)
		var n int64
		for _, p := range lags[group] {
			n += p.Lag
		}
		rows = append(rows, GroupLag{Group: group, Topic: topics.ConsumedBy(c), Lag: n})
	}
	return rows, nil
}
