package steps_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// The three participants registered on a watermill router over Kafka:
// commands written to the saga outbox reach them through the relay (which
// publishes every row twice, so each command arrives twice), their replies
// arrive on the replies topic once per command, and a poison command lands
// in the participant's dead-letter topic.
func TestKafkaRoundTrip(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	kafka := testenv.Kafka(t)
	if err := kafka.EnsureTopics(ctx, e.topics.All()...); err != nil {
		t.Fatal(err)
	}
	wlog := watermill.NopLogger{}

	// Participants on one router, each in its consumer group.
	ps := make([]*steps.Participant, len(participants))
	for i, name := range participants {
		ps[i] = e.participant(name, func(c *steps.Config) {
			c.MaxRetries = 1
			c.RetryInterval = 10 * time.Millisecond
		})
	}
	inv, pay, ship := ps[0], ps[1], ps[2]
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		t.Fatal(err)
	}
	dlqPub, err := kafka.NewPublisher(wlog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dlqPub.Close() })
	for _, p := range ps {
		sub, err := kafka.NewSubscriber(p.Group(), wlog)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		if err := p.Register(router, sub, dlqPub); err != nil {
			t.Fatal(err)
		}
	}
	routerDone := make(chan struct{})
	go func() {
		defer close(routerDone)
		if err := router.Run(ctx); err != nil {
			t.Errorf("router: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-routerDone })
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("router did not start")
	}

	// The relay over the saga outbox (the commands) and the participants'.
	producer, err := kafka.NewRelayProducer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = producer.Close() })
	sagaOutbox := outbox.New("saga")
	relay, err := outbox.NewRelay(outbox.RelayConfig{
		Pool:            e.db.Pool,
		Outboxes:        []*outbox.Outbox{sagaOutbox, inv.Outbox(), pay.Outbox(), ship.Outbox()},
		Producer:        producer,
		DuplicateEach:   true,
		PollInterval:    200 * time.Millisecond,
		StandbyInterval: 100 * time.Millisecond,
		Logger:          testLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	relayDone := make(chan struct{})
	go func() { defer close(relayDone); _ = relay.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-relayDone })

	// Three sagas: one that goes through, one whose payment is declined and
	// its reservation released, one whose shipping compensation overtakes
	// its action. Then a poison command.
	ok, declined, overtaken := newSaga(), newSaga(), newSaga()
	blocked := newOrder()
	blocked.CustomerID = "blocked-1"
	type cmd struct {
		p    *steps.Participant
		s    uuid.UUID
		kind saga.Kind
		d    order.Data
	}
	cmds := []cmd{
		{inv, ok, saga.KindAction, newOrder()},
		{pay, ok, saga.KindAction, newOrder()},
		{ship, ok, saga.KindAction, newOrder()},
		{inv, declined, saga.KindAction, blocked},
		{pay, declined, saga.KindAction, blocked},
		{inv, declined, saga.KindCompensation, blocked},
		{ship, overtaken, saga.KindCompensation, newOrder()},
		{ship, overtaken, saga.KindAction, newOrder()},
	}
	poisonID := uuid.Must(uuid.NewV7())
	tx, err := e.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	for _, c := range cmds {
		msg := command(t, c.p, c.kind, c.s, 1, c.d)
		if err := sagaOutbox.Write(ctx, tx, outbox.Message{
			ID: uuid.MustParse(msg.UUID), Topic: c.p.Topic(), Key: c.s.String(), Payload: msg.Payload,
			Type: msg.Metadata.Get(outbox.HeaderType), SchemaVersion: saga.SchemaVersion, CorrelationID: c.s.String(),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sagaOutbox.Write(ctx, tx, outbox.Message{
		ID: poisonID, Topic: pay.Topic(), Key: "poison", Payload: []byte("not json"),
		Type: order.TypeCharge, SchemaVersion: saga.SchemaVersion,
	}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Replies, deduplicated by message id (the relay sends each twice).
	replies := subscribe(ctx, t, kafka, e.topics.SagaReplies)
	dead := subscribe(ctx, t, kafka, pay.DeadLetterTopic())
	got := map[string]saga.Reply{}
	seen := map[string]bool{}
	timeout := time.After(2 * time.Minute)
	for len(seen) < len(cmds) {
		select {
		case m := <-replies:
			r, err := saga.DecodeReply(m)
			m.Ack()
			if err != nil {
				t.Fatal(err)
			}
			seen[m.UUID] = true
			k := fmt.Sprintf("%s/%s/%s", r.SagaID, r.Step, r.Kind)
			if prev, dup := got[k]; dup && prev != r {
				t.Fatalf("two different replies to %s: %+v and %+v", k, prev, r)
			}
			got[k] = r
		case <-timeout:
			t.Fatalf("got %d of %d replies: %+v", len(seen), len(cmds), got)
		}
	}
	want := []saga.Reply{
		reply(ok, order.StepInventory, saga.KindAction, 1, saga.Succeeded, ""),
		reply(ok, order.StepPayment, saga.KindAction, 1, saga.Succeeded, ""),
		reply(ok, order.StepShipping, saga.KindAction, 1, saga.Succeeded, ""),
		reply(declined, order.StepInventory, saga.KindAction, 1, saga.Succeeded, ""),
		reply(declined, order.StepPayment, saga.KindAction, 1, saga.Refused, "card declined: customer blocked-1 is blocked"),
		reply(declined, order.StepInventory, saga.KindCompensation, 1, saga.Succeeded, ""),
		reply(overtaken, order.StepShipping, saga.KindCompensation, 1, saga.Succeeded, ""),
		reply(overtaken, order.StepShipping, saga.KindAction, 1, saga.Refused, steps.ReasonCompensatedFirst),
	}
	for _, w := range want {
		k := fmt.Sprintf("%s/%s/%s", w.SagaID, w.Step, w.Kind)
		if got[k] != w {
			t.Errorf("reply to %s: %+v, want %+v", k, got[k], w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct replies, want %d: %+v", len(got), len(want), got)
	}

	select {
	case m := <-dead:
		m.Ack()
		if m.UUID != poisonID.String() {
			t.Fatalf("dead-letter topic got message %s, want the poison %s", m.UUID, poisonID)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the poison command never reached the dead-letter topic")
	}

	// Every command arrived twice; the inboxes applied each once.
	waitFor(t, "every duplicate absorbed", func() bool {
		return inv.Inbox().Duplicates()+pay.Inbox().Duplicates()+ship.Inbox().Duplicates() >= int64(len(cmds))
	})
	e.wantEffect(inv, ok, applied)
	e.wantEffect(pay, ok, applied)
	e.wantEffect(ship, ok, applied)
	e.wantEffect(inv, declined, undone)
	e.wantEffect(pay, declined, none)
	e.wantEffect(ship, overtaken, none)
	e.wantStock(map[string]int{"A": 8, "B": 4})
}

// subscribe reads topic from the start in a consumer group of its own.
func subscribe(ctx context.Context, t *testing.T, kafka kafkax.Config, topic string) <-chan *message.Message {
	t.Helper()
	sub, err := kafka.NewSubscriber(testenv.Name(t, "reader"), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ch, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}
