package api_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/order"
)

// answerBound is how long a test waits for an answer the API must give at
// once: far more than any machine needs, far less than a hang.
const answerBound = 15 * time.Second

// tinyPool gives the API a pool of one connection on the test's database,
// set up as serve sets up the API's pool, and returns it.
func tinyPool(t *testing.T, e *env, cfg *api.Config) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(e.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = 1
	dbpool.Configure(pc)
	if err := dbpool.BoundAcquire(pc); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cfg.Pool, cfg.Orders = pool, order.NewService(pool, e.engine, e.topics.OrderEvents)
	return pool
}

// hold takes the pool's only connection in a transaction, as a long
// statement would, until release is called.
func hold(t *testing.T, pool *pgxpool.Pool) (release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), answerBound)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			_ = tx.Rollback(context.Background())
		}
	}
	t.Cleanup(release)
	return release
}

// answer is the outcome of a request sent in the background.
type answer struct {
	key string
	res *response
	err error
	at  time.Duration // since the burst began
}

// sendAsync sends a request in the background; its answer (or transport
// error) arrives on the channel. The request gives up after a minute, so
// that no goroutine outlives a failed test for long.
func (e *env) sendAsync(start time.Time, key, method, path, body string, header ...string) <-chan answer {
	ch := make(chan answer, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, e.srv.URL+path, strings.NewReader(body))
		if err != nil {
			ch <- answer{key: key, err: err}
			return
		}
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Add(header[i], header[i+1])
		}
		res, err := e.srv.Client().Do(req)
		if err != nil {
			ch <- answer{key: key, err: err, at: time.Since(start)}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		ch <- answer{key: key, res: &response{status: res.StatusCode, header: res.Header, body: b}, err: err, at: time.Since(start)}
	}()
	return ch
}

// within waits for an answer at most d.
func within(t *testing.T, ch <-chan answer, d time.Duration, what string) answer {
	t.Helper()
	select {
	case a := <-ch:
		if a.err != nil {
			t.Fatalf("%s: %v", what, a.err)
		}
		return a
	case <-time.After(d):
		t.Fatalf("%s: no answer within %s", what, d)
		return answer{}
	}
}

// shed checks that a is the answer of an overloaded server: 503, a
// problem, Retry-After: 1.
func shed(t *testing.T, a answer) {
	t.Helper()
	p := a.res.problem(t, http.StatusServiceUnavailable)
	if p.Type != api.TypeUnavailable || p.Detail == "" {
		t.Errorf("%s: problem %+v", a.key, p)
	}
	if strings.Contains(a.key, "burst") && !strings.Contains(p.Detail, "2 requests are in flight") {
		t.Errorf("%s: detail %q", a.key, p.Detail)
	}
	if got := a.res.header.Get("Retry-After"); got != "1" {
		t.Errorf("%s: Retry-After %q, want 1", a.key, got)
	}
}

// Beyond MaxInFlight requests in flight, the API answers 503 at once
// instead of queueing: with the API's only database connection held, two
// placements wait for it and a burst of others is refused with Retry-After
// while they wait; the waiting two complete once the connection is free,
// and every 202 has its order (the refused ones placed nothing, and place
// when sent again).
func TestOverloadIsShed(t *testing.T) {
	t.Parallel()
	var pool *pgxpool.Pool
	e := setup(t, func(e *env, cfg *api.Config) {
		pool = tinyPool(t, e, cfg)
		cfg.MaxInFlight = 2
		cfg.AcquireTimeout = 2 * time.Minute // the held two wait for the connection
		cfg.RequestTimeout = 2 * time.Minute
	})
	release := hold(t, pool)

	start := time.Now()
	const burst = 12
	keys := make([]string, burst)
	answers := make(chan answer, burst)
	for i := range burst {
		keys[i] = fmt.Sprintf("burst-%02d", i)
		ch := e.sendAsync(start, keys[i], http.MethodPost, "/orders", orderJSON(t, set("customer_id", keys[i])),
			"Content-Type", "application/json", api.HeaderIdempotencyKey, keys[i])
		go func() { answers <- <-ch }()
	}
	// All but the two admitted are refused while those two wait.
	var refused []string
	for range burst - 2 {
		a := within(t, answers, answerBound, "a refused placement")
		shed(t, a)
		refused = append(refused, a.key)
		t.Logf("%s refused after %s", a.key, a.at.Round(time.Millisecond))
	}
	// The health checks are not shed: the process is alive, and /readyz
	// runs its checks (and finds no database connection free).
	if res := e.do(http.MethodGet, "/healthz", ""); res.status != http.StatusOK {
		t.Errorf("GET /healthz while overloaded: %d %s", res.status, res.body)
	}
	ready := e.sendAsync(start, "readyz", http.MethodGet, "/readyz", "")
	if a := within(t, ready, answerBound, "GET /readyz"); !strings.Contains(string(a.res.body), `"checks"`) {
		t.Errorf("GET /readyz while overloaded was not checked: %d %s", a.res.status, a.res.body)
	}
	select {
	case a := <-answers:
		t.Fatalf("%s answered %d before the connection came free: %s", a.key, a.res.status, a.res.body)
	default:
	}

	release()
	var accepted []api.PlaceResponse
	for range 2 {
		a := within(t, answers, answerBound, "a held placement after the release")
		if a.res.status != http.StatusAccepted {
			t.Fatalf("%s: %d %s", a.key, a.res.status, a.res.body)
		}
		var p api.PlaceResponse
		a.res.decode(t, &p)
		accepted = append(accepted, p)
	}
	if got := e.counts().orders; got != len(accepted) {
		t.Errorf("%d orders stored, %d accepted", got, len(accepted))
	}
	// The refused clients retry, as Retry-After tells them to.
	for _, key := range refused {
		accepted = append(accepted, e.mustPlace(key, orderJSON(t, set("customer_id", key))))
	}
	for _, p := range accepted {
		if _, err := order.Get(context.Background(), e.pool, p.OrderID); err != nil {
			t.Errorf("accepted order %s: %v", p.OrderID, err)
		}
	}
	if got := e.counts().orders; got != burst {
		t.Errorf("%d orders stored, want %d", got, burst)
	}
}

// A request that cannot get a database connection within AcquireTimeout
// is answered 503 with Retry-After, not 500 and not after a hang, and
// changes nothing.
func TestAcquireTimeout(t *testing.T) {
	t.Parallel()
	var pool *pgxpool.Pool
	e := setup(t, func(e *env, cfg *api.Config) {
		pool = tinyPool(t, e, cfg)
		cfg.AcquireTimeout = 200 * time.Millisecond
	})
	placed := e.mustPlace("before", orderJSON(t))
	release := hold(t, pool)
	start := time.Now()
	for _, req := range []struct{ method, path, body string }{
		{http.MethodPost, "/orders", orderJSON(t, set("customer_id", "during"))},
		{http.MethodGet, "/orders/" + placed.OrderID.String(), ""},
		{http.MethodGet, "/sagas/" + placed.SagaID.String(), ""},
		{http.MethodGet, "/sagas", ""},
	} {
		a := within(t, e.sendAsync(start, req.method+" "+req.path, req.method, req.path, req.body,
			"Content-Type", "application/json", api.HeaderIdempotencyKey, "during"), answerBound, req.method+" "+req.path)
		shed(t, a)
		if p := a.res.problem(t, http.StatusServiceUnavailable); !strings.Contains(p.Detail, "no database connection came free within 200ms") {
			t.Errorf("detail %q", p.Detail)
		}
		t.Logf("%s %s: 503 after %s", req.method, req.path, a.at.Round(time.Millisecond))
	}
	if got := e.counts().orders; got != 1 {
		t.Errorf("%d orders, want 1", got)
	}
	release()
	e.mustPlace("during", orderJSON(t, set("customer_id", "during")))
}

// A handler cannot run for ever: past RequestTimeout its database work is
// cancelled and the request answered 503. Here the saga's row (and the
// orders table) are locked by another transaction.
func TestRequestTimeout(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t), func(_ *env, cfg *api.Config) { cfg.RequestTimeout = 300 * time.Millisecond })
	p := e.stuck("k")
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	if _, err := tx.Exec(ctx, `SELECT 1 FROM saga.instances WHERE id = $1 FOR UPDATE`, p.SagaID); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for _, req := range []struct{ method, path string }{
		{http.MethodPost, "/sagas/" + p.SagaID.String() + "/retry"},
		{http.MethodGet, "/orders/" + p.OrderID.String()},
	} {
		a := within(t, e.sendAsync(start, req.path, req.method, req.path, "", "Authorization", "Bearer "+aliceToken), answerBound, req.method+" "+req.path)
		shed(t, a)
		if p := a.res.problem(t, http.StatusServiceUnavailable); !strings.Contains(p.Detail, "took longer than 300ms") {
			t.Errorf("detail %q", p.Detail)
		}
		t.Logf("%s %s: 503 after %s", req.method, req.path, a.at.Round(time.Millisecond))
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.state(p.SagaID); got != "stuck" {
		t.Errorf("saga %s after a timed-out retry", got)
	}
	// The server serves on.
	if res := e.do(http.MethodGet, "/orders/"+p.OrderID.String(), ""); res.status != http.StatusOK {
		t.Errorf("GET after the lock: %d %s", res.status, res.body)
	}
}
