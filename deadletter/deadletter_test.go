package deadletter_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is one test's database, topics and consumer group.
type env struct {
	t      *testing.T
	db     *testenv.Database
	kafka  kafkax.Config
	topic  string
	group  string
	store  *deadletter.Store
	pub    message.Publisher
	broken atomic.Bool
}

func setup(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, db: testenv.DB(t), kafka: testenv.Kafka(t),
		topic: testenv.Name(t, "orders"), group: testenv.Name(t, "group")}
	ctx := context.Background()
	if err := e.kafka.EnsureTopics(ctx, e.topic, outbox.DeadLetterTopicOf(e.group)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool.Exec(ctx, `CREATE TABLE applied (message_id text PRIMARY KEY, replayed_from text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	e.store = deadletter.NewStore(e.db.Pool)
	pub, err := e.kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	e.pub = pub
	return e
}

// consume runs the test's consumer: while e.broken is set it refuses
// messages of type test.fragile with a permanent error (they are
// dead-lettered); otherwise it records each message it applies.
func (e *env) consume(ctx context.Context) *outbox.Inbox {
	e.t.Helper()
	sub, err := e.kafka.NewSubscriber(e.group, watermill.NopLogger{})
	if err != nil {
		e.t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		e.t.Fatal(err)
	}
	inbox := outbox.NewInbox(e.db.Pool, "inventory", e.group)
	err = outbox.AddConsumer(router, outbox.ConsumerConfig{
		Name: e.group, Topic: e.topic, Subscriber: sub, Inbox: inbox, DeadLetter: e.pub,
		MaxRetries: 2, RetryInterval: time.Millisecond,
		Handler: func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
			if e.broken.Load() && msg.Metadata.Get(outbox.HeaderType) == "test.fragile" {
				var body struct {
					SagaID string `json:"saga_id"`
					Qty    int    `json:"qty"`
				}
				_ = json.Unmarshal(msg.Payload, &body)
				return outbox.Permanent(fmt.Errorf("reserve stock for saga %s: quantity %d is not allowed", body.SagaID, body.Qty))
			}
			_, err := tx.Exec(ctx, `INSERT INTO applied VALUES ($1, $2)`, msg.UUID, msg.Metadata.Get(outbox.HeaderReplayedFrom))
			return err
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.run(ctx, router)
	return inbox
}

// run runs router until the test ends.
func (e *env) run(ctx context.Context, router *message.Router) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := router.Run(ctx); err != nil {
			e.t.Errorf("router: %v", err)
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		e.t.Fatal("router did not start")
	}
}

// ingest runs an ingester on the test group's dead-letter topic.
func (e *env) ingest(ctx context.Context) {
	e.t.Helper()
	in := deadletter.NewIngester(deadletter.IngesterConfig{Kafka: e.kafka, Group: e.group + ".ingest",
		Topics: []string{outbox.DeadLetterTopicOf(e.group)}, Store: e.store})
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := in.Run(ctx); err != nil {
			e.t.Errorf("ingester: %v", err)
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	select {
	case <-in.Running():
	case <-time.After(30 * time.Second):
		e.t.Fatal("ingester did not start")
	}
}

// publish sends a message of type typ keyed by key, as a producer would.
func (e *env) publish(typ, key string, body any) string {
	e.t.Helper()
	payload, _ := json.Marshal(body)
	msg := message.NewMessage(uuid.NewString(), payload)
	msg.Metadata.Set(kafkax.KeyMetadata, key)
	msg.Metadata.Set(outbox.HeaderType, typ)
	msg.Metadata.Set(outbox.HeaderSchemaVersion, "1")
	if err := e.pub.Publish(e.topic, msg); err != nil {
		e.t.Fatal(err)
	}
	return msg.UUID
}

// waitFor polls cond every 20 ms for at most a minute.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (e *env) applied(ctx context.Context) map[string]string {
	e.t.Helper()
	rows, err := e.db.Pool.Query(ctx, `SELECT message_id, replayed_from FROM applied`)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]string{}
	var id, from string
	if _, err := pgx.ForEachRow(rows, []any{&id, &from}, func() error { out[id] = from; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// Messages a consumer gives up on are recorded once each, with where they
// came from and what failed; those of one cause share a fingerprint; after
// the cause is fixed, a replay of the group reaches the consumer under new
// message ids naming the dead letter, and each is applied once.
func TestDeadLettersRecordedGroupedReplayed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	e.broken.Store(true)
	e.consume(ctx)
	e.ingest(ctx)

	sagas := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	bad := map[string]uuid.UUID{}
	for i, s := range sagas {
		bad[e.publish("test.fragile", s.String(), map[string]any{"saga_id": s, "step": "inventory", "qty": -i - 1})] = s
	}
	good := e.publish("test.ok", "k-good", map[string]any{"n": 1})
	group := deadletter.Filter{ConsumerGroup: e.group}
	waitFor(t, "three dead letters recorded", func() (bool, error) {
		n, err := e.store.Count(ctx, group)
		return n == 3, err
	})
	waitFor(t, "the good message applied", func() (bool, error) { _, ok := e.applied(ctx)[good]; return ok, nil })

	ds, err := e.store.List(ctx, group, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		saga, ok := bad[d.MessageID]
		switch {
		case !ok:
			t.Errorf("dead letter %d is message %s, not one of the bad ones", d.ID, d.MessageID)
		case d.OriginTopic != e.topic || d.ConsumerGroup != e.group || d.DLQTopic != outbox.DeadLetterTopicOf(e.group):
			t.Errorf("dead letter %d: origin %s, group %s, dlq %s", d.ID, d.OriginTopic, d.ConsumerGroup, d.DLQTopic)
		case d.Key != saga.String() || d.Type != "test.fragile" || d.SagaID == nil || *d.SagaID != saga || d.Step != "inventory":
			t.Errorf("dead letter %d: key %q, type %q, saga %v, step %q; want key and saga %s", d.ID, d.Key, d.Type, d.SagaID, d.Step, saga)
		case d.OriginPartition == nil || d.OriginOffset == nil:
			t.Errorf("dead letter %d lost its origin partition/offset", d.ID)
		case d.Attempts == nil || *d.Attempts != 1:
			t.Errorf("dead letter %d: attempts %v, want 1 (a permanent error is not retried)", d.ID, d.Attempts)
		case !strings.Contains(d.Error, "is not allowed") || d.ErrorPattern != "reserve stock for saga <id>: quantity -<n> is not allowed":
			t.Errorf("dead letter %d: error %q, pattern %q", d.ID, d.Error, d.ErrorPattern)
		case d.Headers[outbox.HeaderSchemaVersion] != "1":
			t.Errorf("dead letter %d: headers %v lack the original's", d.ID, d.Headers)
		}
	}
	groups, err := e.store.Groups(ctx, group, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].Count != 3 || groups[0].Type != "test.fragile" {
		t.Fatalf("groups %+v, want one of 3 test.fragile", groups)
	}

	// A redelivery of a recorded dead letter records nothing.
	if again, err := e.store.Record(ctx, ds[0]); err != nil || again {
		t.Fatalf("recording dead letter %d again: recorded %v, %v", ds[0].ID, again, err)
	}

	// The cause fixed, the group is replayed (a dry run counts it first).
	byPrint := deadletter.Filter{Fingerprint: groups[0].Fingerprint}
	if n, err := e.store.Count(ctx, byPrint); err != nil || n != 3 {
		t.Fatalf("dry run: %d, %v; want 3", n, err)
	}
	e.broken.Store(false)
	rp := deadletter.NewReplayer(e.store, e.pub)
	replayed, err := rp.Replay(ctx, byPrint, 100)
	if err != nil || len(replayed) != 3 {
		t.Fatalf("replay: %v, %v", replayed, err)
	}
	want := map[string]string{good: ""}
	for _, r := range replayed {
		if r.Replay != 1 || r.MessageID != deadletter.ReplayID(r.DeadLetter, 1) || r.Topic != e.topic {
			t.Errorf("replayed %+v", r)
		}
		want[r.MessageID.String()] = fmt.Sprint(r.DeadLetter)
	}
	waitFor(t, "the replayed messages applied", func() (bool, error) { return len(e.applied(ctx)) == len(want), nil })
	got := e.applied(ctx)
	for id, from := range want {
		if got[id] != from {
			t.Errorf("message %s applied with replayed_from %q, want %q (applied: %v)", id, got[id], from, got)
		}
	}
	d, err := e.store.Get(ctx, replayed[0].DeadLetter)
	if err != nil || d.Replays != 1 || d.LastReplayedAt == nil {
		t.Fatalf("after the replay: %+v, %v", d, err)
	}

	// Purge: refused without a filter; one by id; the retention window
	// spares what is recent.
	if _, err := e.store.Purge(ctx, deadletter.Filter{}); err == nil {
		t.Fatal("a purge without a filter was accepted")
	}
	if n, err := e.store.Purge(ctx, deadletter.Filter{IDs: []int64{d.ID}}); err != nil || n != 1 {
		t.Fatalf("purge one: %d, %v", n, err)
	}
	if n, err := e.store.PurgeOlder(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("retention purged %d recent dead letters, %v", n, err)
	}
	if n, err := e.store.Count(ctx, group); err != nil || n != 2 {
		t.Fatalf("%d dead letters left, %v; want 2", n, err)
	}
	if _, err := e.store.Get(ctx, d.ID); err == nil {
		t.Fatal("the purged dead letter is still there")
	}
}

func TestPattern(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"reserve stock for saga 0193b5a2-7c1e-7d3f-9a4b-1c2d3e4f5a6b: quantity 12 is negative", "reserve stock for saga <id>: quantity <n> is negative"},
		{`unknown message type "inventory.explode"`, "unknown message type <value>"},
		{"decode command: invalid character 'x' looking for beginning of value", "decode command: invalid character <value> looking for beginning of value"},
		{"  a\n\tb  ", "a b"},
	} {
		if got := deadletter.Pattern(tc.in); got != tc.want {
			t.Errorf("Pattern(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	first, again := deadletter.ReplayID(7, 1), deadletter.ReplayID(7, 1)
	if first != again || first == deadletter.ReplayID(7, 2) || first == deadletter.ReplayID(8, 1) {
		t.Error("ReplayID is not a function of (dead letter, replay number)")
	}
}
