package api_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

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
	// A replay of an accepted placement is still answered.
	if res := e.place("admit-0", orderJSON(t)); res.status != http.StatusAccepted {
		t.Fatalf("replay of an accepted placement: %d %s", res.status, res.body)
	}
}
