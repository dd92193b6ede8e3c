package kafkax_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
)

func TestMain(m *testing.M) { testenv.Main(m) }

type env struct {
	cfg   kafkax.Config
	topic string
	group string
}

func setup(t *testing.T) env {
	t.Helper()
	cfg := testenv.Kafka(t)
	e := env{cfg: cfg, topic: testenv.Name(t, "smoke"), group: testenv.Name(t, "group")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cfg.EnsureTopics(ctx, e.topic); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestSmokeOrderPerKey publishes 1,000 messages over 50 keys with
// watermill-kafka (idempotent, acks=all) and consumes them in a new consumer
// group: every message arrives, and each key's messages arrive in order.
func TestSmokeOrderPerKey(t *testing.T) {
	t.Parallel()
	const keys, perKey = 50, 20
	e := setup(t)
	logger := watermill.NopLogger{}

	pub, err := e.cfg.NewPublisher(logger)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()

	// One goroutine per key publishes that key's messages in order; keys go
	// in parallel, as they would from many sagas.
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perKey {
				msg := message.NewMessage(uuid.NewString(), []byte(strconv.Itoa(i)))
				msg.Metadata.Set(kafkax.KeyMetadata, fmt.Sprintf("key-%d", k))
				if err := pub.Publish(e.topic, msg); err != nil {
					errs <- fmt.Errorf("publish key %d message %d: %w", k, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// The group is created after everything was published: it must start at
	// the oldest offset to see any of it.
	sub, err := e.cfg.NewSubscriber(e.group, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	msgs, err := sub.Subscribe(ctx, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]int{}
	for n := 0; n < keys*perKey; {
		select {
		case msg := <-msgs:
			key := msg.Metadata.Get(kafkax.KeyMetadata)
			i, err := strconv.Atoi(string(msg.Payload))
			if err != nil {
				t.Fatalf("payload %q: %v", msg.Payload, err)
			}
			got[key] = append(got[key], i)
			msg.Ack()
			n++
		case <-ctx.Done():
			t.Fatalf("received %d of %d messages before the deadline", n, keys*perKey)
		}
	}
	if len(got) != keys {
		t.Fatalf("messages of %d keys arrived, want %d", len(got), keys)
	}
	for key, seq := range got {
		for i, v := range seq {
			if v != i {
				t.Fatalf("key %s: message %d arrived at position %d (order %v)", key, v, i, seq)
			}
		}
	}
}

// TestPingUnreachable gives one clear error naming the brokers.
func TestPingUnreachable(t *testing.T) {
	t.Parallel()
	err := kafkax.Config{Brokers: []string{"127.0.0.1:1"}}.Ping(context.Background())
	if err == nil {
		t.Fatal("ping of a closed port succeeded")
	}
	if want := "kafka unreachable at 127.0.0.1:1"; !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	if err := (kafkax.Config{}).Ping(context.Background()); err == nil || !strings.Contains(err.Error(), "KAFKA_BROKERS") {
		t.Fatalf("empty broker list: error %v does not name KAFKA_BROKERS", err)
	}
}

// EnsureTopics returns only once every partition of the new topics has a
// leader, as a fresh client's metadata shows: a producer started right
// after it never meets "unknown topic or partition" or "not the leader".
func TestEnsureTopicsWaitsForLeaders(t *testing.T) {
	t.Parallel()
	cfg := testenv.Kafka(t)
	cfg.Partitions = 12
	topics := []string{testenv.Name(t, "a"), testenv.Name(t, "b"), testenv.Name(t, "c")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := cfg.EnsureTopics(ctx, topics...); err != nil {
		t.Fatal(err)
	}
	// One metadata request, no retries: what a producer meets first.
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, cfg.ProducerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	md, err := admin.DescribeTopics(topics)
	if err != nil {
		t.Fatal(err)
	}
	if len(md) != len(topics) {
		t.Fatalf("metadata names %d topics, want %d", len(md), len(topics))
	}
	for _, tm := range md {
		if tm.Err != sarama.ErrNoError {
			t.Fatalf("topic %s right after EnsureTopics: %v", tm.Name, tm.Err)
		}
		if len(tm.Partitions) != 12 {
			t.Fatalf("%s has %d partitions, want 12", tm.Name, len(tm.Partitions))
		}
		for _, p := range tm.Partitions {
			if p.Err != sarama.ErrNoError || p.Leader < 0 {
				t.Errorf("%s/%d has no leader right after EnsureTopics (leader %d, %v)", tm.Name, p.ID, p.Leader, p.Err)
			}
		}
	}
}
