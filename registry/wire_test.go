package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/registry"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// With the contract registered, whole sagas run in the Confluent wire
// format: every message on every topic is a zero byte, the registry's id
// of its topic's schema, then JSON that schema accepts; the consumers read
// it, so a completed and a refused order end as they should.
func TestSagasInWireFormat(t *testing.T) {
	t.Parallel()
	c, topics := setup(t)
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	regs, err := registry.RegisterContract(ctx, c, topics, registry.DefaultCompatibility)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	for _, r := range regs {
		ids[r.Topic] = r.ID
	}
	stack, sub := startWire(ctx, t, db, kafka, topics, ids)
	var mu sync.Mutex
	framed := map[string]int{}
	for _, ts := range contract.TopicSchemas(topics) {
		msgs, err := sub.Subscribe(ctx, ts.Topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				body, id, ok := outbox.Unframe(m.Payload)
				v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
				switch {
				case !ok:
					t.Errorf("a message on %s is not in the wire format: %q", ts.Topic, m.Payload)
				case id != ids[ts.Topic]:
					t.Errorf("a message on %s names schema %d, the registry's is %d", ts.Topic, id, ids[ts.Topic])
				default:
					if err := contract.Validate(m.Metadata.Get(outbox.HeaderType), v, body); err != nil {
						t.Errorf("on %s: %v", ts.Topic, err)
					}
				}
				mu.Lock()
				framed[ts.Topic]++
				mu.Unlock()
				m.Ack()
			}
		}()
	}
	sagas := []uuid.UUID{stacktest.Place(t, stack.Addr, nil, "").SagaID, stacktest.Place(t, stack.Addr, map[string]string{"payment": "refuse"}, "").SagaID}
	deadline := time.Now().Add(time.Minute)
	for i, want := range []saga.State{saga.Completed, saga.Compensated} {
		for {
			in, err := saga.Get(ctx, db.Pool, sagas[i])
			if err != nil {
				t.Fatal(err)
			}
			if in.State == want {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("saga %s is %s, want %s", sagas[i], in.State, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for {
		mu.Lock()
		n := len(framed)
		mu.Unlock()
		if n == len(contract.TopicSchemas(topics)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("framed messages seen per topic: %v", framed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The id in the frame names our schema in the registry.
	got, err := c.Schema(ctx, ids[topics.SagaReplies])
	if err != nil {
		t.Fatal(err)
	}
	vs := contract.Versions(contract.SagaReply)
	want, _ := contract.Source(contract.SagaReply, vs[len(vs)-1])
	var a, b any
	_ = json.Unmarshal(got, &a)
	_ = json.Unmarshal(want, &b)
	if ja, _ := json.Marshal(a); !bytes.Equal(ja, mustJSON(b)) {
		t.Errorf("schema %d in the registry is not the newest saga-reply:\n%s", ids[topics.SagaReplies], got)
	}
}

// startWire starts a whole stack that sends in the wire format with the
// schema ids ids, and a subscriber (closed when t ends) to read its topics
// raw.
func startWire(ctx context.Context, t *testing.T, db *testenv.Database, kafka kafkax.Config, topics kafkax.Topics, ids map[string]int) (*roles.Stack, message.Subscriber) {
	t.Helper()
	if err := steps.SeedStock(ctx, db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	stack := stacktest.Start(t, roles.Config{Pool: db.Pool, Kafka: kafka, Topics: topics, Roles: []string{roles.All},
		AllowInjection: true, SweepInterval: 50 * time.Millisecond, SchemaIDs: ids})
	sub, err := kafka.NewSubscriber(testenv.Name(t, "raw"), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return stack, sub
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
