package contract_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// While participants that read only the older version are upgraded, the
// orchestrator writes commands of that version (--command-schema-version)
// and the participants answer in the version asked: every command and
// reply of a whole saga is the older version, valid in it, and the saga
// completes.
func TestRollingUpgradeSpeaksTheOlderVersion(t *testing.T) {
	t.Parallel()
	older := saga.SchemaVersion - 1
	e := setupStack(t, roles.Config{CommandSchemaVersion: older})
	db, topics, stack, sub := e.db, e.topics, e.stack, e.sub
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	seen := map[string]int{} // message type → messages
	for _, topic := range []string{topics.InventoryCommands, topics.PaymentCommands, topics.ShippingCommands, topics.SagaReplies} {
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				typ := m.Metadata.Get(outbox.HeaderType)
				v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
				if v != older {
					t.Errorf("a %s on %s in version %d, want %d", typ, topic, v, older)
				}
				if err := contract.Validate(typ, older, m.Payload); err != nil {
					t.Errorf("not a valid version %d message: %v", older, err)
				}
				mu.Lock()
				seen[typ]++
				mu.Unlock()
				m.Ack()
			}
		}()
	}
	id := stacktest.Place(t, stack.Addr, nil, "").SagaID
	deadline := time.Now().Add(time.Minute)
	for {
		in, err := saga.Get(ctx, db.Pool, id)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		replies := seen[saga.ReplyType]
		mu.Unlock()
		if in.State == saga.Completed && replies == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saga %s is %s with %d replies seen; want completed with 3", id, in.State, replies)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The history upcasts the older replies: answered by the step's
	// participant.
	hist, err := saga.History(ctx, db.Pool, id)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hist {
		if h.Event == saga.EventSucceeded && h.Participant != h.Step {
			t.Errorf("step %s answered by %q", h.Step, h.Participant)
		}
	}
}
