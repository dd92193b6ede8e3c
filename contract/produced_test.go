package contract_test

import (
	"context"
	"encoding/json"
	"slices"
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
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// Every message a whole stack produces (commands, replies, order events,
// for completed and refused orders) validates against its schema, and
// every field the schemas declare is produced: the Go types and the
// schemas agree. Producers write the newest version of each schema. A
// dead letter's headers match the dead-letter schema, and carry each
// header it declares.
func TestProducedMessagesMatchSchemas(t *testing.T) {
	t.Parallel()
	e := setupStack(t, roles.Config{AllowInjection: true})
	kafka, topics, stack, sub := e.kafka, e.topics, e.stack, e.sub
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Watch every topic the stack writes.
	var mu sync.Mutex
	seen := map[string][]string{} // schema → paths produced
	count := map[string]int{}     // message type → messages
	for _, topic := range []string{topics.InventoryCommands, topics.PaymentCommands, topics.ShippingCommands, topics.SagaReplies, topics.OrderEvents,
		topics.DeadLetter("payment")} {
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				typ := m.Metadata.Get(outbox.HeaderType)
				if topic == topics.DeadLetter("payment") {
					// A dead letter's envelope is its headers.
					headers, _ := json.Marshal(m.Metadata)
					if err := contract.Validate(contract.DeadLetterType, 1, headers); err != nil {
						t.Errorf("a dead letter's headers do not match their schema: %v\n%s", err, headers)
					}
					mu.Lock()
					for k := range m.Metadata {
						if !slices.Contains(seen[contract.DeadLetter], k) {
							seen[contract.DeadLetter] = append(seen[contract.DeadLetter], k)
						}
					}
					count[contract.DeadLetterType]++
					mu.Unlock()
					m.Ack()
					continue
				}
				if typ == "payment.explode" { // the test's own bad command
					m.Ack()
					continue
				}
				v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
				if vs := contract.Versions(contract.SchemaOf(typ)); len(vs) == 0 || v != vs[len(vs)-1] {
					t.Errorf("a produced %s on %s has schema version %d; producers write the newest of %v", typ, topic, v, vs)
				}
				if err := contract.Validate(typ, v, m.Payload); err != nil {
					t.Errorf("a produced %s on %s does not match its schema: %v\n%s", typ, topic, err, m.Payload)
				}
				paths, err := contract.PayloadPaths(m.Payload, "data.inject")
				if err != nil {
					t.Errorf("payload of %s: %v", typ, err)
				}
				mu.Lock()
				name := contract.SchemaOf(typ)
				for _, p := range paths {
					if !slices.Contains(seen[name], p) {
						seen[name] = append(seen[name], p)
					}
				}
				count[typ]++
				mu.Unlock()
				m.Ack()
			}
		}()
	}

	// A completed order (with every optional field) and a refused one.
	stacktest.Place(t, stack.Addr, map[string]string{"payment": "none"}, "Floor 2")
	stacktest.Place(t, stack.Addr, map[string]string{"shipping": "refuse"}, "")
	// And a command the payment participant cannot read: dead-lettered.
	pub, err := kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	bad := message.NewMessage(uuid.NewString(), []byte(`{"saga_id": "not a saga"}`))
	bad.Metadata.Set(kafkax.KeyMetadata, "bad")
	bad.Metadata.Set(outbox.HeaderType, "payment.explode")
	bad.Metadata.Set(outbox.HeaderSchemaVersion, "2")
	if err := pub.Publish(topics.PaymentCommands, bad); err != nil {
		t.Fatal(err)
	}
	// Completed: 3 actions, 3 replies, placed and confirmed. Refused at
	// shipping: 3 actions, 2 compensations, 5 replies, placed, cancelled.
	want := map[string]int{"inventory.reserve": 2, "payment.charge": 2, "shipping.ship": 2, "inventory.release": 1, "payment.refund": 1,
		"saga.reply": 8, "OrderPlaced": 2, "OrderConfirmed": 1, "OrderCancelled": 1, contract.DeadLetterType: 1}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		ok := true
		for typ, n := range want {
			ok = ok && count[typ] >= n
		}
		got := maps(count)
		mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages seen %v, want at least %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range contract.Names() {
		declared, err := contract.Paths(name, contract.Versions(name)[len(contract.Versions(name))-1])
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range declared {
			if !slices.Contains(seen[name], p) {
				t.Errorf("schema %s declares %s, which no produced message carries", name, p)
			}
		}
	}
}

func maps(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
