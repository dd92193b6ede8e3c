package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is one test's database, Kafka topic and consumer group.
type env struct {
	t     *testing.T
	db    *testenv.Database
	kafka kafkax.Config
	topic string
	group string
	ob    *outbox.Outbox
	// mode is how the test's relays run (ModeWAL unless a test says).
	mode outbox.Mode
}

// effect is the payload of test messages: key and its per-key number.
type effect struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func setup(t *testing.T) *env {
	t.Helper()
	e := &env{
		t:     t,
		db:    testenv.DB(t),
		kafka: testenv.Kafka(t),
		topic: testenv.Name(t, "outbox"),
		group: testenv.Name(t, "group"),
		ob:    outbox.New("inventory"),
		mode:  outbox.ModeWAL,
	}
	ctx := context.Background()
	if err := e.kafka.EnsureTopics(ctx, e.topic, outbox.DeadLetterTopicOf(e.group)); err != nil {
		t.Fatal(err)
	}
	// effects counts how often each message's effect was applied (seq
	// numbers first applications in the order they committed: a key's next
	// message is handled only after the last one's transaction committed),
	// and counters number each key's messages in commit order.
	if _, err := e.db.Pool.Exec(ctx, `
		CREATE SEQUENCE effect_order;
		CREATE TABLE effects (key text, n int, applied int NOT NULL,
			seq bigint NOT NULL DEFAULT nextval('effect_order'), PRIMARY KEY (key, n));
		CREATE TABLE counters (key text PRIMARY KEY, n int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return e
}

// write commits one message for key, numbered after the key's last
// committed one (the counter row lock orders same-key writers).
func (e *env) write(ctx context.Context, key string) error {
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var n int
	if err := tx.QueryRow(ctx, `INSERT INTO counters (key, n) VALUES ($1, 1)
		ON CONFLICT (key) DO UPDATE SET n = counters.n + 1 RETURNING n`, key).Scan(&n); err != nil {
		return err
	}
	payload, _ := json.Marshal(effect{Key: key, N: n})
	if err := e.ob.Write(ctx, tx, outbox.Message{Topic: e.topic, Key: key, Payload: payload, Type: "test.effect", SchemaVersion: 1}); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// writeMany runs writers goroutines, each committing perWriter messages over
// keys keys, and returns the number each key got.
func (e *env) writeMany(ctx context.Context, writers, perWriter, keys int) {
	e.t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range perWriter {
				if err := e.write(ctx, fmt.Sprintf("k%03d", r.IntN(keys))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		e.t.Fatal(err)
	}
}

// relay starts a relay on the test's outbox with producer p (a new one when
// nil) and returns a function that stops it and waits for it.
func (e *env) relay(ctx context.Context, p outbox.Producer, tweak func(*outbox.RelayConfig)) (stop func()) {
	e.t.Helper()
	_, stop = e.startRelay(ctx, p, tweak)
	return stop
}

// startRelay is relay, returning the relay too.
func (e *env) startRelay(ctx context.Context, p outbox.Producer, tweak func(*outbox.RelayConfig)) (r *outbox.Relay, stop func()) {
	e.t.Helper()
	if p == nil {
		sp, err := e.kafka.NewRelayProducer()
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { sp.Close() })
		p = sp
	}
	cfg := outbox.RelayConfig{Pool: e.db.Pool, Outboxes: []*outbox.Outbox{e.ob}, Producer: p, Logger: testLog, Mode: e.mode,
		PollInterval: 200 * time.Millisecond, StandbyInterval: 100 * time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	r, err := outbox.NewRelay(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			e.t.Errorf("relay: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	e.t.Cleanup(stop)
	return r, stop
}

// consumer is a running consumer behind the inbox that applies effects.
type consumer struct {
	// deliveries counts handler runs, a transaction rolled back included.
	deliveries atomic.Int64
	inbox      *outbox.Inbox
	stop       func()
}

// consume starts a consumer in the test's group. handle, when set, runs in
// the inbox transaction before the effect is applied.
func (e *env) consume(ctx context.Context, handle outbox.Handler) *consumer {
	e.t.Helper()
	c := &consumer{inbox: outbox.NewInbox(e.db.Pool, "inventory", e.group)}
	wlog := watermill.NewSlogLogger(testLog)
	sub, err := e.kafka.NewSubscriber(e.group, wlog)
	if err != nil {
		e.t.Fatal(err)
	}
	pub, err := e.kafka.NewPublisher(wlog)
	if err != nil {
		e.t.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		e.t.Fatal(err)
	}
	err = outbox.AddConsumer(router, outbox.ConsumerConfig{
		Name:          e.group,
		Topic:         e.topic,
		Subscriber:    sub,
		Inbox:         c.inbox,
		DeadLetter:    pub,
		MaxRetries:    3,
		RetryInterval: 10 * time.Millisecond,
		Logger:        testLog,
		Handler: func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
			c.deliveries.Add(1)
			if handle != nil {
				if err := handle(ctx, tx, msg); err != nil {
					return err
				}
			}
			var ef effect
			if err := json.Unmarshal(msg.Payload, &ef); err != nil {
				return outbox.Permanent(fmt.Errorf("decode test effect: %w", err))
			}
			if _, err := tx.Exec(ctx, `INSERT INTO effects (key, n, applied) VALUES ($1, $2, 1)
				ON CONFLICT (key, n) DO UPDATE SET applied = effects.applied + 1`, ef.Key, ef.N); err != nil {
				return err
			}
			return nil
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := router.Run(ctx); err != nil {
			e.t.Errorf("router: %v", err)
		}
	}()
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		e.t.Fatal("router did not start")
	}
	var once sync.Once
	c.stop = func() {
		once.Do(func() {
			cancel()
			<-done
			_ = sub.Close()
			_ = pub.Close()
		})
	}
	e.t.Cleanup(c.stop)
	return c
}

// waitEffects waits until want distinct effects are committed.
func (e *env) waitEffects(ctx context.Context, want int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var n int
	for {
		if err := e.db.Pool.QueryRow(ctx, "SELECT count(*) FROM effects").Scan(&n); err != nil {
			e.t.Fatalf("count effects (%d of %d so far): %v", n, want, err)
		}
		if n >= want {
			return
		}
		select {
		case <-ctx.Done():
			e.t.Fatalf("only %d of %d effects applied before the deadline", n, want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// checkExactlyOnce asserts that every committed message's effect was applied
// exactly once, that nothing else was applied, and that the outbox is empty.
func (e *env) checkExactlyOnce(ctx context.Context, want int) {
	e.t.Helper()
	var total, applied, twice, unknown int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(*), COALESCE(sum(applied), 0), count(*) FILTER (WHERE applied > 1),
		(SELECT count(*) FROM effects f WHERE NOT EXISTS (SELECT 1 FROM counters c WHERE c.key = f.key AND f.n BETWEEN 1 AND c.n))
		FROM effects`).Scan(&total, &applied, &twice, &unknown); err != nil {
		e.t.Fatal(err)
	}
	if total != want || applied != want || twice != 0 || unknown != 0 {
		e.t.Fatalf("effects: %d distinct (want %d), %d applications, %d applied more than once, %d never written", total, want, applied, twice, unknown)
	}
	var committed int
	if err := e.db.Pool.QueryRow(ctx, "SELECT COALESCE(sum(n), 0) FROM counters").Scan(&committed); err != nil {
		e.t.Fatal(err)
	}
	if committed != want {
		e.t.Fatalf("%d messages committed, want %d", committed, want)
	}
	b, err := e.ob.Backlog(ctx, e.db.Pool)
	if err != nil {
		e.t.Fatal(err)
	}
	if b.Rows != 0 {
		e.t.Fatalf("outbox still holds %d rows", b.Rows)
	}
}

// checkOrder asserts every key's effects were applied in commit order (1,
// 2, …), as committed: a handler run whose transaction rolled back (its
// group commit failed with another message) and ran again is not an
// application, and a redelivery is skipped by the inbox.
func (e *env) checkOrder(ctx context.Context) {
	e.t.Helper()
	rows, err := e.db.Pool.Query(ctx, `SELECT key, array_agg(n ORDER BY seq) FROM effects GROUP BY key`)
	if err != nil {
		e.t.Fatal(err)
	}
	var (
		key string
		seq []int32
	)
	_, err = pgx.ForEachRow(rows, []any{&key, &seq}, func() error {
		for i, n := range seq {
			if int(n) != i+1 {
				return fmt.Errorf("key %s: effect %d applied at position %d: %v", key, n, i+1, seq)
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// forModes runs test as parallel subtests, once with each relay mode, each
// with its own env.
func forModes(t *testing.T, test func(t *testing.T, e *env)) {
	t.Parallel()
	for _, mode := range []outbox.Mode{outbox.ModeWAL, outbox.ModePoll} {
		t.Run(string(mode), func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			e.mode = mode
			test(t, e)
		})
	}
}

// killAfterAck lets a batch reach Kafka, then "kills" the relay (cancels its
// context) before it can delete the rows.
type killAfterAck struct {
	inner  outbox.Producer
	kill   func()
	killed atomic.Bool
	sent   atomic.Int64
}

func (k *killAfterAck) SendMessages(msgs []*sarama.ProducerMessage) error {
	if k.killed.Load() {
		return fmt.Errorf("relay is dead")
	}
	err := k.inner.SendMessages(msgs)
	if err == nil {
		k.sent.Add(int64(len(msgs)))
		k.killed.Store(true)
		k.kill()
	}
	return err
}

// Test 1: a relay killed after Kafka acknowledged a batch but before it
// deleted the rows publishes them again; the inbox applies each effect once.
func TestRelayKilledBeforeDeleteRepublishes(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		const n = 300
		e.writeMany(ctx, 3, n/3, 10)

		sp, err := e.kafka.NewRelayProducer()
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Close()
		killCtx, kill := context.WithCancel(ctx)
		killer := &killAfterAck{inner: sp, kill: kill}
		stop := e.relay(killCtx, killer, func(c *outbox.RelayConfig) { c.BatchSize = 500 })
		<-killCtx.Done()
		stop()
		if killer.sent.Load() != n {
			t.Fatalf("first relay sent %d messages before it died, want the whole backlog %d", killer.sent.Load(), n)
		}
		b, err := e.ob.Backlog(ctx, e.db.Pool)
		if err != nil {
			t.Fatal(err)
		}
		if b.Rows != n {
			t.Fatalf("after the kill the outbox holds %d rows, want all %d (published, not deleted)", b.Rows, n)
		}

		c := e.consume(ctx, nil)
		e.relay(ctx, nil, nil) // the restarted relay publishes the rows again
		e.waitEffects(ctx, n)
		waitFor(t, "every copy delivered", func() bool { return c.deliveries.Load()+c.inbox.Duplicates() >= 2*n })
		e.checkExactlyOnce(ctx, n)
		e.checkOrder(ctx)
		if c.inbox.Duplicates() != n {
			t.Fatalf("the inbox absorbed %d duplicates, want %d", c.inbox.Duplicates(), n)
		}
		dups, err := outbox.DuplicatesAbsorbed(ctx, e.db.Pool, "inventory")
		if err != nil {
			t.Fatal(err)
		}
		if dups != n {
			t.Fatalf("the inbox table recorded %d duplicates, want %d", dups, n)
		}
	})
}

// Test 2: 20 concurrent writers × 1,000 messages over 100 keys: the
// consumer receives every message, each key in commit order.
func TestConcurrentWritersOrderPerKey(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.consume(ctx, nil)
		e.relay(ctx, nil, nil)
		const writers, per, keys = 20, 1000, 100
		e.writeMany(ctx, writers, per, keys)
		e.waitEffects(ctx, writers*per)
		waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
		e.checkExactlyOnce(ctx, writers*per)
		e.checkOrder(ctx)
	})
}

// A message whose handler fails once takes the group commit transaction
// it shared with other messages down with it; those run again, alone. Each
// effect is still applied once and every key in commit order. (Before, the
// check recorded the order in which handlers ran, not the order in which
// effects committed: a group-mate run again counted twice, and the order
// check failed on a correct run.)
func TestGroupMateFailureKeepsOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	var failed sync.Map
	var failures atomic.Int64
	c := e.consume(ctx, func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
		var ef effect
		if err := json.Unmarshal(msg.Payload, &ef); err == nil && ef.N%5 == 0 {
			if _, again := failed.LoadOrStore(msg.UUID, true); !again {
				failures.Add(1)
				return fmt.Errorf("injected first-delivery failure of %s #%d", ef.Key, ef.N)
			}
		}
		return nil
	})
	e.relay(ctx, nil, nil)
	const writers, per, keys = 8, 100, 40
	e.writeMany(ctx, writers, per, keys)
	e.waitEffects(ctx, writers*per)
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, writers*per)
	e.checkOrder(ctx)
	if failures.Load() == 0 {
		t.Fatal("no handler failed: the test injected nothing")
	}
	// Every handler run beyond one per message and one per injected
	// failure is a group-mate run again: the case under test.
	if again := c.deliveries.Load() - int64(writers*per) - failures.Load(); again <= 0 {
		t.Fatalf("%d handler runs for %d messages and %d failures: no group-mate ran again", c.deliveries.Load(), writers*per, failures.Load())
	}
}

// Test 4: two relays on one outbox at the same time, the leader killed
// halfway: nothing lost, per-key order holds.
func TestTwoRelays(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.consume(ctx, nil)
		var relays [2]*outbox.Relay
		stops := [2]func(){}
		for i := range relays {
			stops[i] = e.relay(ctx, nil, func(cfg *outbox.RelayConfig) {
				cfg.BatchSize = 50
				cfg.Logger = testLog.With("relay", i)
			})
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); e.writeMany(ctx, 4, 1000, 50) }()
		e.waitEffects(ctx, 1000)
		// Kill one relay (whichever leads or stands by); the other carries on.
		stops[0]()
		wg.Wait()
		e.waitEffects(ctx, 4000)
		waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
		e.checkExactlyOnce(ctx, 4000)
		e.checkOrder(ctx)
	})
}

// A relay whose database connections are cut (the server terminates them)
// reconnects and carries on: nothing lost, nothing applied twice.
func TestRelayReconnectsAfterConnectionLoss(t *testing.T) {
	forModes(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.consume(ctx, nil)
		e.relay(ctx, nil, nil)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); e.writeMany(ctx, 4, 500, 20) }()
		e.waitEffects(ctx, 200)
		// Terminate the relay's leader connection.
		var killed int
		if err := e.db.Pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'sagaflow-relay-%'`).Scan(&killed); err != nil {
			t.Fatal(err)
		}
		if killed != 1 {
			t.Fatalf("terminated %d relay connections, want 1 (the leader's)", killed)
		}
		wg.Wait()
		e.waitEffects(ctx, 2000)
		waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
		e.checkExactlyOnce(ctx, 2000)
		e.checkOrder(ctx)
	})
}

// Test 5: the same message delivered to two consumer instances at the same
// moment: one effect. The second delivery blocks on the first's inbox row
// until the first commits, then is skipped.
func TestSameMessageTwoConsumersAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	payload, _ := json.Marshal(effect{Key: "k", N: 1})
	if _, err := e.db.Pool.Exec(ctx, "INSERT INTO counters VALUES ('k', 1)"); err != nil {
		t.Fatal(err)
	}
	id := uuid.Must(uuid.NewV7())
	release := make(chan struct{})
	var entered atomic.Int64
	handler := func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
		if entered.Add(1) == 1 {
			<-release // hold the first transaction open
		}
		_, err := tx.Exec(ctx, `INSERT INTO effects (key, n, applied) VALUES ('k', 1, 1)
			ON CONFLICT (key, n) DO UPDATE SET applied = effects.applied + 1`)
		return err
	}
	// Two instances of one consumer, as two processes would have.
	a := outbox.NewInbox(e.db.Pool, "inventory", e.group).Wrap(handler)
	b := outbox.NewInbox(e.db.Pool, "inventory", e.group).Wrap(handler)
	errs := make(chan error, 2)
	go func() { errs <- a(message.NewMessage(id.String(), payload)) }()
	waitFor(t, "first delivery inside its handler", func() bool { return entered.Load() == 1 })
	go func() { errs <- b(message.NewMessage(id.String(), payload)) }()
	// Wait until the second delivery is blocked on the first's inbox row.
	waitFor(t, "second delivery waiting on the inbox row lock", func() bool {
		var waiting int
		_ = e.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		return waiting == 1
	})
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var applied int
	if err := e.db.Pool.QueryRow(ctx, "SELECT applied FROM effects WHERE key = 'k' AND n = 1").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != 1 || entered.Load() != 1 {
		t.Fatalf("effect applied %d times, handler entered %d times; want 1 and 1", applied, entered.Load())
	}
}

// Test 6: a poison message (a payload the handler cannot decode) lands in
// the dead-letter topic with the reason in its metadata, and the messages
// behind it on the same partition are processed. A message whose handler
// keeps failing is retried a bounded number of times, then dead-lettered too.
func TestPoisonMessageDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	var faultAttempts atomic.Int64
	e.consume(ctx, func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
		if msg.Metadata.Get("fault") == "yes" {
			faultAttempts.Add(1)
			return fmt.Errorf("injected fault")
		}
		return nil
	})
	pub, err := e.kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	garbageID, faultID := uuid.NewString(), uuid.NewString()
	garbage := message.NewMessage(garbageID, []byte{0xff, 0x00, 'x'})
	garbage.Metadata.Set(kafkax.KeyMetadata, "k")
	fault := message.NewMessage(faultID, []byte(`{"key":"k","n":99}`))
	fault.Metadata.Set(kafkax.KeyMetadata, "k")
	fault.Metadata.Set("fault", "yes")
	if err := pub.Publish(e.topic, garbage, fault); err != nil {
		t.Fatal(err)
	}
	// Then good messages on the same key, so the same partition.
	for range 5 {
		if err := e.write(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	e.relay(ctx, nil, nil)

	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	dead := e.deadLetters(dctx)
	got := map[string]string{}
	for len(got) < 2 {
		select {
		case m := <-dead:
			got[m.UUID] = m.Metadata.Get(middleware.ReasonForPoisonedKey)
			m.Ack()
		case <-dctx.Done():
			t.Fatalf("dead-letter topic got %d of 2 messages", len(got))
		}
	}
	if reason := got[garbageID]; reason == "" || !strings.Contains(reason, "decode test effect") {
		t.Fatalf("garbage message reason %q does not say it could not be decoded", reason)
	}
	if reason := got[faultID]; !strings.Contains(reason, "injected fault") {
		t.Fatalf("faulty message reason %q does not carry the handler's error", reason)
	}
	if n := faultAttempts.Load(); n != 4 {
		t.Fatalf("the faulty message was tried %d times, want 1 + 3 retries", n)
	}
	e.waitEffects(ctx, 5)
	e.checkExactlyOnce(ctx, 5)
	e.checkOrder(ctx)
}

// deadLetters subscribes to the test consumer group's dead-letter topic
// until ctx ends.
func (e *env) deadLetters(ctx context.Context) <-chan *message.Message {
	e.t.Helper()
	sub, err := e.kafka.NewSubscriber(testenv.Name(e.t, "dlq-reader"), watermill.NopLogger{})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { sub.Close() })
	dead, err := sub.Subscribe(ctx, outbox.DeadLetterTopicOf(e.group))
	if err != nil {
		e.t.Fatal(err)
	}
	return dead
}

// Retention purges inbox rows older than the window, in batches, and keeps
// the newer ones.
func TestRetentionPurgesOldInboxRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO inventory.inbox (consumer, message_id, received_at)
		SELECT 'c', gen_random_uuid(), now() - make_interval(days => CASE WHEN i <= 2500 THEN 8 ELSE 1 END)
		FROM generate_series(1, 3000) AS i`); err != nil {
		t.Fatal(err)
	}
	r := outbox.NewRetention(outbox.RetentionConfig{Pool: e.db.Pool, Schemas: []string{"inventory"}, BatchSize: 100})
	n, err := r.PurgeOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2500 {
		t.Fatalf("purged %d rows, want the 2500 older than 7 days", n)
	}
	var left int
	if err := e.db.Pool.QueryRow(ctx, "SELECT count(*) FROM inventory.inbox").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 500 {
		t.Fatalf("%d rows left, want 500", left)
	}
}

func TestTransientAndPermanentErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name                 string
		err                  error
		transient, permanent bool
	}{
		{"context cancelled", fmt.Errorf("claim: %w", context.Canceled), true, false},
		{"permanent", outbox.Permanent(fmt.Errorf("bad payload")), false, true},
		{"plain fault", fmt.Errorf("injected"), false, false},
		{"closed conn", fmt.Errorf("commit: conn closed"), true, false},
	}
	for _, tt := range tests {
		if got := outbox.IsTransient(tt.err); got != tt.transient {
			t.Errorf("%s: IsTransient = %v, want %v", tt.name, got, tt.transient)
		}
		if got := outbox.IsPermanent(tt.err); got != tt.permanent {
			t.Errorf("%s: IsPermanent = %v, want %v", tt.name, got, tt.permanent)
		}
	}
}

// waitFor polls cond every 20 ms for at most a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Test 3: the broker stopped for 10 s in the middle of a stream and started
// again on the same data: nothing lost, nothing applied twice, order kept.
// It runs on a broker of its own (a real Apache Kafka broker under the
// README's test command), so stopping it disturbs no other test.
func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	broker := testenv.StartPrivateKafka(t)
	e.kafka = broker.Config()
	if err := e.kafka.EnsureTopics(ctx, e.topic, outbox.DeadLetterTopicOf(e.group)); err != nil {
		t.Fatal(err)
	}
	e.consume(ctx, nil)
	e.relay(ctx, nil, nil)
	// A steady stream of writes (one every 2 ms over 30 keys) runs across
	// the outage, until stop is closed.
	stop := make(chan struct{})
	var written atomic.Int64
	writeErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				writeErr <- nil
				return
			case <-tick.C:
			}
			if err := e.write(ctx, fmt.Sprintf("k%02d", i%30)); err != nil {
				writeErr <- err
				return
			}
			written.Add(1)
		}
	}()
	e.waitEffects(ctx, 300)
	broker.Stop()
	stoppedAt := written.Load()
	// The outage itself lasts 10 s: writers keep committing into the outbox
	// meanwhile, and the relay keeps its rows until Kafka is back.
	time.Sleep(10 * time.Second)
	b, err := e.ob.Backlog(ctx, e.db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	if b.Rows == 0 || written.Load() == stoppedAt {
		t.Fatalf("nothing waited in the outbox during the outage (%d rows, %d writes before, %d after)", b.Rows, stoppedAt, written.Load())
	}
	broker.Start()
	restartedAt := written.Load()
	waitFor(t, "writes after the restart", func() bool { return written.Load() > restartedAt+500 })
	close(stop)
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	total := int(written.Load())
	e.waitEffects(ctx, total)
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, total)
	e.checkOrder(ctx)
}

// A write of one message and a write of several take the same lock on a
// key: whichever comes second waits for the first's transaction, so
// same-key messages commit in the order of their seq numbers, as the
// polling relay needs. The second's wait is read from pg_locks.
func TestOneAndManyWritesLockTheKey(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	msg := func(key string) outbox.Message {
		return outbox.Message{Topic: e.topic, Key: key, Payload: []byte(`{}`), Type: "test.effect", SchemaVersion: 1}
	}
	one := []outbox.Message{msg("k")}
	many := []outbox.Message{msg("a"), msg("k"), msg("z")}
	for _, tc := range []struct {
		name          string
		first, second []outbox.Message
	}{
		{"one then many", one, many},
		{"many then one", many, one},
		{"one then one", one, one},
	} {
		t.Run(tc.name, func(t *testing.T) {
			first, err := e.db.Pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Rollback(ctx) //nolint:errcheck
			if err := e.ob.Write(ctx, first, slices.Clone(tc.first)...); err != nil {
				t.Fatalf("first write: %v", err)
			}
			second := make(chan error, 1)
			go func() {
				tx, err := e.db.Pool.Begin(ctx)
				if err != nil {
					second <- err
					return
				}
				defer tx.Rollback(ctx) //nolint:errcheck
				if err := e.ob.Write(ctx, tx, slices.Clone(tc.second)...); err != nil {
					second <- err
					return
				}
				second <- tx.Commit(ctx)
			}()
			waitFor(t, "the second write to wait for the key's lock", func() bool {
				var waiting bool
				err := e.db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))`).Scan(&waiting)
				return err == nil && waiting
			})
			select {
			case err := <-second:
				t.Fatalf("the second write ended (%v) while the first held the key", err)
			default:
			}
			if err := first.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-second; err != nil {
				t.Fatalf("second write: %v", err)
			}
		})
	}
}
