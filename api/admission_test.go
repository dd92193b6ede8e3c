package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/api"
)

// Placements beyond MaxSagasInFlight sagas running or compensating are
// answered 503 with Retry-After and write nothing: the pipeline already
// holds more than it finishes within its step timeouts, and accepting more
// would make every saga slower until their deadlines cancel them. (Before:
// at three times the capacity bench measured, every placement was
// accepted, the consumers fell tens of seconds behind, steps timed out and
// thousands of orders that would have succeeded were compensated.)
func TestPlacementsShedBeyondSagasInFlight(t *testing.T) {
	t.Parallel()
	e := setup(t, func(_ *env, cfg *api.Config) {
		cfg.MaxSagasInFlight = 2
		cfg.SagaCountInterval = -1 // count on every placement
	})
	for i := range 2 {
		if res := e.place(fmt.Sprintf("admit-%d", i), orderJSON(t)); res.status != http.StatusAccepted {
			t.Fatalf("placement %d: %d %s", i, res.status, res.body)
		}
	}
	res := e.place("admit-2", orderJSON(t))
	p := res.problem(t, http.StatusServiceUnavailable)
	if p.Type != api.TypeUnavailable || res.header.Get("Retry-After") == "" || !strings.Contains(p.Detail, "2 sagas in flight") {
		t.Fatalf("third placement: %+v, Retry-After %q", p, res.header.Get("Retry-After"))
	}
	// Refused clients are told to come back at different times (1 to
	// AdmissionRetryAfterMax s), so that they do not all return at once;
	// a refusal does not even read the body.
	seen := map[int]bool{}
	for i := range 20 {
		res := e.place(fmt.Sprintf("refused-%d", i), `{"not":"an order"}`)
		after, err := strconv.Atoi(res.header.Get("Retry-After"))
		if res.status != http.StatusServiceUnavailable || err != nil || after < 1 || after > api.AdmissionRetryAfterMax {
			t.Fatalf("refusal %d: %d, Retry-After %q", i, res.status, res.header.Get("Retry-After"))
		}
		seen[after] = true
	}
	if len(seen) < 2 {
		t.Fatalf("20 refusals all said Retry-After %v: refused clients would come back together", seen)
	}
	if c := e.counts(); c.orders != 2 {
		t.Fatalf("%d orders written, want 2", c.orders)
	}
	// A replay of an accepted placement is refused too, without a lookup
	// (TestRefusalsDoNotWaitForTheDatabase), and told its order stands.
	res = e.place("admit-0", orderJSON(t))
	if p := res.problem(t, http.StatusServiceUnavailable); !strings.Contains(p.Detail, "an order it placed before stands") {
		t.Fatalf("replay of an accepted placement while full: %+v", p)
	}
}

// A refusal never waits for the database: the count of sagas in flight is
// refreshed in the background while placements go on with the count at
// hand, and a refused request is refused before any lookup, a replay of a
// placed order included (it is answered once there is room). Before: a
// placement that found the count stale counted itself under a lock every
// other placement queued on, and every refusal looked its key up, so with
// the database saturated by the pipeline (sagaflow bench --api … at three
// times capacity) refusals took p99 317 ms; here, with the tables locked,
// they were not answered at all.
func TestRefusalsDoNotWaitForTheDatabase(t *testing.T) {
	t.Parallel()
	e := setup(t, func(_ *env, cfg *api.Config) {
		cfg.MaxSagasInFlight = 1
		cfg.SagaCountInterval = time.Millisecond
		cfg.RequestTimeout = 2 * time.Minute // today's code would wait on the locks, not time out
	})
	placed := e.mustPlace("placed-0", orderJSON(t))
	// Until the count sees that saga, probes are admitted (400: not an
	// order, nothing written); then they are refused.
	refused := false
	for i := 0; i < 500 && !refused; i++ {
		res := e.place(fmt.Sprintf("probe-%d", i), `{"not":"an order"}`)
		switch res.status {
		case http.StatusServiceUnavailable:
			refused = true
		case http.StatusBadRequest:
			time.Sleep(2 * time.Millisecond) // the background count is under way
		default:
			t.Fatalf("probe %d: %d %s", i, res.status, res.body)
		}
	}
	if !refused {
		t.Fatal("500 probes admitted with 1 saga in flight and a limit of 1")
	}

	// Lock both tables admission could read: a placement that waited for
	// the database would wait until the lock goes.
	ctx := context.Background()
	lock, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx) //nolint:errcheck // released at the end
	if _, err := lock.Exec(ctx, `LOCK TABLE saga.instances, orders.orders IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 15 * time.Second}
	for _, key := range []string{"new-while-locked", "placed-0"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.srv.URL+"/orders", strings.NewReader(orderJSON(t)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(api.HeaderIdempotencyKey, key)
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("placement %q while the tables were locked: %v: it waited for the database", key, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" || !strings.Contains(string(body), "sagas in flight") {
			t.Fatalf("placement %q while the tables were locked: %d %s", key, res.StatusCode, body)
		}
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// Once there is room, the replay returns the order its key placed.
	e.exec(`UPDATE saga.instances SET state = 'completed', ended_at = now() WHERE id = $1`, placed.SagaID)
	for i := 0; ; i++ {
		res := e.place("placed-0", orderJSON(t))
		if res.status == http.StatusServiceUnavailable && i < 500 {
			time.Sleep(2 * time.Millisecond) // the background count is under way
			continue
		}
		var p api.PlaceResponse
		if res.status != http.StatusOK && res.status != http.StatusAccepted {
			t.Fatalf("replay once there is room: %d %s", res.status, res.body)
		}
		res.decode(t, &p)
		if p.OrderID != placed.OrderID || res.header.Get(api.HeaderIdempotentReplayed) != "true" {
			t.Fatalf("replay once there is room: %+v (replayed %q), want order %s", p, res.header.Get(api.HeaderIdempotentReplayed), placed.OrderID)
		}
		break
	}
	if c := e.counts(); c.orders != 1 {
		t.Fatalf("%d orders written, want 1", c.orders)
	}
}
