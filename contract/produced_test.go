package contract_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/steps"
)

func testenvMain(m *testing.M) { testenv.Main(m) }

// Every message a whole stack produces (commands, replies, order events,
// for completed and refused orders) validates against its schema, and
// every field the schemas declare is produced: the Go types and the
// schemas agree.
func TestProducedMessagesMatchSchemas(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	topics := kafkax.PrefixedTopics(testenv.Name(t, "ct") + ".")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := steps.SeedStock(ctx, db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	stack := stacktest.Start(t, roles.Config{Pool: db.Pool, Kafka: kafka, Topics: topics, Roles: []string{roles.All},
		AllowInjection: true, SweepInterval: 50 * time.Millisecond})

	// Watch every topic the stack writes.
	sub, err := kafka.NewSubscriber(testenv.Name(t, "watch"), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var mu sync.Mutex
	seen := map[string][]string{} // schema → paths produced
	count := map[string]int{}     // message type → messages
	for _, topic := range []string{topics.InventoryCommands, topics.PaymentCommands, topics.ShippingCommands, topics.SagaReplies, topics.OrderEvents} {
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				typ := m.Metadata.Get(outbox.HeaderType)
				v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
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
	// Completed: 3 actions, 3 replies, placed and confirmed. Refused at
	// shipping: 3 actions, 2 compensations, 5 replies, placed, cancelled.
	want := map[string]int{"inventory.reserve": 2, "payment.charge": 2, "shipping.ship": 2, "inventory.release": 1, "payment.refund": 1,
		"saga.reply": 8, "OrderPlaced": 2, "OrderConfirmed": 1, "OrderCancelled": 1}
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
