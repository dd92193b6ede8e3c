package roles_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/saga"
)

// An outage delays sagas, it does not cancel them: with no relay running,
// commands wait in the outbox, and the deadline sweeper holds overdue steps
// instead of spending their attempts. When a relay starts, the order
// completes. (With the hold switched off — DeliveryStallAfter < 0, the
// behaviour before it existed — the saga spends both attempts in a
// couple of seconds and compensates.)
func TestRelayOutageDelaysSagas(t *testing.T) {
	t.Parallel()
	var cfg roles.Config
	e := setup(t, func(c *roles.Config) {
		c.Roles = []string{roles.API, roles.Orchestrator, roles.Inventory, roles.Payment, roles.Shipping}
		c.Saga.StepTimeout = 600 * time.Millisecond
		c.Saga.Attempts = 2
		c.DeliveryStallAfter = 300 * time.Millisecond
		cfg = *c
	})
	p, code := e.place("outage-1", orderBody(oneItem("sku-1", 1), nil, "DE"))
	if code != 201 && code != 202 {
		t.Fatalf("POST /orders: %d", code)
	}
	// Await three holds: several times what two attempts would have taken.
	e.waitHistory(p.SagaID, saga.EventDeadlineHeld, 3, 30*time.Second)
	if in := e.saga(p.SagaID); in.State != saga.Running || in.Attempt != 1 {
		t.Fatalf("saga during the outage: %s attempt %d, want running attempt 1", in.State, in.Attempt)
	}
	// The relay comes back.
	cfg.Roles = []string{roles.Relay}
	cfg.Listener = nil
	relay, err := roles.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay stack: %v", err)
		}
	})
	e.verify(0)
	if in := e.saga(p.SagaID); in.State != saga.Completed {
		t.Fatalf("saga after the outage: %s (%s), want completed", in.State, in.Reason)
	}
}

// waitHistory waits (bounded) until saga id's history has n lines of event.
func (e *env) waitHistory(id uuid.UUID, event string, n int, timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		h, err := saga.History(context.Background(), e.db.Pool, id)
		if err != nil {
			e.t.Fatal(err)
		}
		got := 0
		for _, x := range h {
			if x.Event == event {
				got++
			}
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("saga %s: %d %q events after %s, want %d", id, got, event, timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
