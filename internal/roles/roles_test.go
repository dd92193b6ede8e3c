package roles_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
	"github.com/sagaflow/sagaflow/verify"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is a whole Sagaflow stack in this process (every role) on the test's
// own database, topics and consumer groups.
type env struct {
	t      *testing.T
	db     *testenv.Database
	kafka  kafkax.Config
	topics kafkax.Topics
	stack  *roles.Stack
	base   string
	// cfg is the stack's configuration (start runs one); stop stops the
	// one running.
	cfg  roles.Config
	stop func()
}

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

func setup(t *testing.T, tweak func(*roles.Config)) *env {
	t.Helper()
	e := &env{t: t, db: testenv.DB(t), kafka: testenv.Kafka(t), topics: kafkax.PrefixedTopics(testenv.Name(t, "t") + ".")}
	ctx := context.Background()
	if err := steps.SeedStock(ctx, e.db.Pool, map[string]int{"sku-1": 1000, "sku-2": 1000, "hot": 100}); err != nil {
		t.Fatal(err)
	}
	cfg := roles.Config{
		Pool: e.db.Pool, Kafka: e.kafka, Topics: e.topics, Roles: []string{roles.All},
		AllowInjection: true, SweepInterval: 50 * time.Millisecond, Logger: testLog,
		Crash: func(point string) { t.Errorf("unexpected injected crash at %s", point) },
	}
	// Long enough that no command is resent while consumers join their
	// groups, so each test sees exactly the commands its outcome needs.
	cfg.Saga.StepTimeout = 30 * time.Second
	if tweak != nil {
		tweak(&cfg)
	}
	e.cfg = cfg
	e.start()
	return e
}

// start runs a stack of e.cfg on a new listener until the test ends or
// the returned function stops it.
func (e *env) start() (stop func()) {
	e.t.Helper()
	cfg := e.cfg
	if cfg.Listener == nil {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			e.t.Fatal(err)
		}
		cfg.Listener = ln
	}
	var err error
	e.stack, err = roles.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.stack.Run(runCtx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("stack: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	e.stop = stop
	select {
	case <-e.stack.Ready():
	case err := <-done:
		e.t.Fatalf("stack did not start: %v", err)
	}
	e.base = "http://" + e.stack.Addr
	return stop
}

// orderBody is a valid order; inject and items vary per test.
func orderBody(items []map[string]any, inject map[string]string, country string) []byte {
	body := map[string]any{
		"customer_id": "c-1",
		"items":       items,
		"amount":      map[string]any{"value": "25.50", "currency": "EUR"},
		"shipping_address": map[string]any{
			"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": country,
		},
	}
	if inject != nil {
		body["inject"] = inject
	}
	b, _ := json.Marshal(body)
	return b
}

func oneItem(sku string, q int) []map[string]any {
	return []map[string]any{{"sku": sku, "quantity": q}}
}

type placed struct {
	OrderID uuid.UUID `json:"order_id"`
	SagaID  uuid.UUID `json:"saga_id"`
}

// place posts an order and returns its ids.
func (e *env) place(key string, body []byte) (placed, int) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.base+"/orders", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("POST /orders: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var p placed
	if resp.StatusCode < 300 {
		if err := json.Unmarshal(b, &p); err != nil {
			e.t.Fatalf("decode %s: %v", b, err)
		}
	}
	return p, resp.StatusCode
}

// waitTerminal waits until no saga is in flight (a bounded wait).
func (e *env) waitTerminal(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var inflight int
		if err := e.db.Pool.QueryRow(context.Background(),
			`SELECT count(*) FROM saga.instances WHERE state IN ('running', 'compensating')`).Scan(&inflight); err != nil {
			e.t.Fatal(err)
		}
		if inflight == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d sagas still in flight after %s", inflight, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDrained waits until every outbox is empty (the relay published the
// last events), so verify sees a settled system.
func (e *env) waitDrained() {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		if err := e.db.Pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM saga.outbox)
			+ (SELECT count(*) FROM inventory.outbox) + (SELECT count(*) FROM payment.outbox) + (SELECT count(*) FROM shipping.outbox)`).Scan(&n); err != nil {
			e.t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("outboxes still hold %d rows", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verify runs every invariant (dead-letter topics included) and fails the
// test on any broken one.
func (e *env) verify(allowedDeadLetters int64) {
	e.t.Helper()
	e.waitTerminal(time.Minute)
	e.waitDrained()
	rep, err := verify.Run(context.Background(), e.db.Pool, verify.Options{
		AllowedDeadLetters: allowedDeadLetters,
		DeadLetters: func(ctx context.Context) (map[string]int64, error) {
			return e.kafka.CountMessages(ctx, e.topics.DeadLetterTopics()...)
		},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	if !rep.OK() {
		var b strings.Builder
		rep.Print(&b)
		e.t.Fatalf("verify failed:\n%s", b.String())
	}
}

func (e *env) saga(id uuid.UUID) *saga.Instance {
	e.t.Helper()
	in, err := saga.Get(context.Background(), e.db.Pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

// sent lists the command types the saga sent, in order.
func (e *env) sent(id uuid.UUID) []string {
	e.t.Helper()
	h, err := saga.History(context.Background(), e.db.Pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, x := range h {
		if x.Event == saga.EventSent {
			out = append(out, x.Reason)
		}
	}
	return out
}

func (e *env) orderStatus(id uuid.UUID) (status, reason string) {
	e.t.Helper()
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT status, COALESCE(reason, '') FROM orders.orders WHERE id = $1`, id).Scan(&status, &reason); err != nil {
		e.t.Fatal(err)
	}
	return status, reason
}

// The happy path and a refusal at each step, each with exactly the right
// compensations in reverse order.
func TestOrderOutcomes(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	tests := []struct {
		name    string
		body    []byte
		state   saga.State
		status  string
		reason  string
		sent    []string
		charged bool
	}{
		{"happy path", orderBody(oneItem("sku-1", 2), nil, "DE"), saga.Completed, "confirmed", "",
			[]string{"inventory.reserve", "payment.charge", "shipping.ship"}, true},
		{"out of stock", orderBody(oneItem("sku-2", 5000), nil, "DE"), saga.Failed, "cancelled", "inventory refused",
			[]string{"inventory.reserve"}, false},
		{"card declined", orderBody(oneItem("sku-1", 1), map[string]string{"payment": "refuse"}, "DE"), saga.Compensated, "cancelled", "payment refused",
			[]string{"inventory.reserve", "payment.charge", "inventory.release"}, false},
		{"address not deliverable", orderBody(oneItem("sku-1", 1), nil, "XX"), saga.Compensated, "cancelled", "shipping refused",
			[]string{"inventory.reserve", "payment.charge", "shipping.ship", "payment.refund", "inventory.release"}, false},
	}
	ids := make([]placed, len(tests))
	for i, tt := range tests {
		p, code := e.place(uuid.NewString(), tt.body)
		if code != http.StatusAccepted {
			t.Fatalf("%s: POST /orders answered %d", tt.name, code)
		}
		ids[i] = p
	}
	e.waitTerminal(time.Minute)
	for i, tt := range tests {
		in := e.saga(ids[i].SagaID)
		if in.State != tt.state {
			t.Errorf("%s: saga %s, want %s (%s)", tt.name, in.State, tt.state, in.Reason)
		}
		if got := e.sent(ids[i].SagaID); !slices.Equal(got, tt.sent) {
			t.Errorf("%s: commands %v, want %v", tt.name, got, tt.sent)
		}
		status, reason := e.orderStatus(ids[i].OrderID)
		if status != tt.status || !strings.Contains(reason, tt.reason) {
			t.Errorf("%s: order %s (%q), want %s (%q)", tt.name, status, reason, tt.status, tt.reason)
		}
	}
	e.verify(0)
}

// A step that never answers (drop): the orchestrator resends, then fails the
// step and compensates it too: the payment compensation arrives before any
// charge and leaves a tombstone. When the action is released late, it is
// refused without effect, and its reply is recorded as stale.
func TestDroppedStepCompensatesAndLateActionRefused(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) {
		c.Saga.StepTimeout = 2 * time.Second
		c.Saga.Attempts = 2
	})
	// Warm up: a first order completes once every consumer has joined its
	// group (a real broker takes a few seconds to assign partitions), so
	// the short step timeout below only ever fires for the dropped step.
	warm, _ := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), nil, "DE"))
	e.waitTerminal(time.Minute)
	if in := e.saga(warm.SagaID); in.State != saga.Completed {
		t.Fatalf("warm-up saga %s (%s)", in.State, in.Reason)
	}
	p, code := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 3), map[string]string{"payment": "drop"}, "DE"))
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders answered %d", code)
	}
	e.waitTerminal(time.Minute)
	in := e.saga(p.SagaID)
	if in.State != saga.Compensated || !strings.Contains(in.Reason, "payment did not answer after 2 attempt(s)") {
		t.Fatalf("saga %s (%s), want compensated because payment did not answer", in.State, in.Reason)
	}
	want := []string{"inventory.reserve", "payment.charge", "payment.charge", "payment.refund", "inventory.release"}
	if got := e.sent(p.SagaID); !slices.Equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
	var status string
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT status FROM payment.steps WHERE saga_id = $1`, p.SagaID).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if status != "tombstone" {
		t.Fatalf("payment step row is %q, want a tombstone (compensation before action)", status)
	}

	// Release the late action: the original charge command, delivered now
	// (without the drop injection) as a new message.
	data, _ := json.Marshal(map[string]any{
		"order_id": uuid.New(), "customer_id": "c-1", "items": oneItem("sku-1", 3), "amount_cents": 2550, "currency": "EUR",
		"shipping_address": map[string]any{"country": "DE"},
	})
	payload, _ := json.Marshal(saga.Command{SagaID: p.SagaID, SagaType: "order", Step: "payment", Kind: saga.KindAction, Attempt: 1, Data: data})
	tx, err := e.db.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.New("saga").Write(context.Background(), tx, outbox.Message{Topic: e.topics.PaymentCommands, Key: p.SagaID.String(),
		Payload: payload, Type: "payment.charge", SchemaVersion: 1}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Its refusal comes back to the orchestrator as a stale reply.
	deadline := time.Now().Add(time.Minute)
	for {
		h, err := saga.History(context.Background(), e.db.Pool, p.SagaID)
		if err != nil {
			t.Fatal(err)
		}
		var staleRefusal bool
		for _, x := range h {
			staleRefusal = staleRefusal || (x.Event == saga.EventStaleReply && strings.Contains(x.Reason, "refused"))
		}
		if staleRefusal {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the late action's refusal never reached the saga's history: %+v", h)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var charges int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM payment.charges WHERE saga_id = $1`, p.SagaID).Scan(&charges); err != nil {
		t.Fatal(err)
	}
	if charges != 0 {
		t.Fatalf("the late action charged %d time(s)", charges)
	}
	if in := e.saga(p.SagaID); in.State != saga.Compensated {
		t.Fatalf("the late reply moved the saga to %s", in.State)
	}
	e.verify(0)
}

// Every command and reply is published twice (the relay's test switch): the
// inboxes absorb every copy and verify passes.
func TestEveryMessageDuplicated(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) { c.DuplicateRelay = true })
	var ids []placed
	for i := range 20 {
		inject := map[string]string(nil)
		if i%4 == 0 {
			inject = map[string]string{"shipping": "refuse"}
		}
		p, code := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), inject, "DE"))
		if code != http.StatusAccepted {
			t.Fatalf("POST /orders answered %d", code)
		}
		ids = append(ids, p)
	}
	e.verify(0)
	for i, p := range ids {
		want := saga.Completed
		if i%4 == 0 {
			want = saga.Compensated
		}
		if in := e.saga(p.SagaID); in.State != want {
			t.Errorf("saga %d is %s, want %s: duplicates changed an outcome", i, in.State, want)
		}
	}
	var dups int64
	for _, schema := range []string{"saga", "inventory", "payment", "shipping"} {
		n, err := outbox.DuplicatesAbsorbed(context.Background(), e.db.Pool, schema)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("the %s inbox absorbed no duplicate", schema)
		}
		dups += n
	}
	// 15 happy sagas: 3 commands + 3 replies; 5 refused at shipping: 5 + 5.
	if want := int64(15*6 + 5*10); dups != want {
		t.Errorf("inboxes absorbed %d duplicates, want %d (one per message)", dups, want)
	}
}

// The same Idempotency-Key ten times at once: one order, one saga.
func TestSameKeyTenTimesAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	key := uuid.NewString()
	body := orderBody(oneItem("sku-1", 1), nil, "DE")
	var wg sync.WaitGroup
	results := make(chan placed, 10)
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, code := e.place(key, body)
			if code >= 300 {
				t.Errorf("POST /orders answered %d", code)
			}
			results <- p
		}()
	}
	wg.Wait()
	close(results)
	var first placed
	for p := range results {
		if first.OrderID == uuid.Nil {
			first = p
		}
		if p != first {
			t.Fatalf("answers differ: %+v vs %+v", p, first)
		}
	}
	var orders, sagas int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM orders.orders), (SELECT count(*) FROM saga.instances)`).Scan(&orders, &sagas); err != nil {
		t.Fatal(err)
	}
	if orders != 1 || sagas != 1 {
		t.Fatalf("%d orders and %d sagas, want 1 and 1", orders, sagas)
	}
	if _, code := e.place(key, orderBody(oneItem("sku-1", 2), nil, "DE")); code != http.StatusConflict {
		t.Fatalf("same key, other body: %d, want 409", code)
	}
	e.verify(0)
}

// A hot SKU: 500 concurrent orders for 100 units: exactly 100 confirmed,
// stock never negative (a CHECK constraint), the rest cancelled.
func TestHotSKU(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	const orders = 500
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range orders {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, code := e.place(fmt.Sprintf("hot-%d", i), orderBody(oneItem("hot", 1), nil, "DE")); code != http.StatusAccepted {
				t.Errorf("order %d: POST answered %d", i, code)
			}
		}()
	}
	wg.Wait()
	e.waitTerminal(3 * time.Minute)
	var confirmed, cancelled, available int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM orders.orders WHERE status = 'confirmed'),
		(SELECT count(*) FROM orders.orders WHERE status = 'cancelled'),
		(SELECT available FROM inventory.stock WHERE sku = 'hot')`).Scan(&confirmed, &cancelled, &available); err != nil {
		t.Fatal(err)
	}
	if confirmed != 100 || cancelled != orders-100 || available != 0 {
		t.Fatalf("%d confirmed, %d cancelled, %d left; want 100, %d, 0", confirmed, cancelled, available, orders-100)
	}
	e.verify(0)
}

// verify fails on a database a test corrupts, naming what is at fault.
func TestVerifyCatchesCorruption(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	p, _ := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), nil, "DE"))
	e.verify(0)
	ctx := context.Background()
	stray := uuid.New()
	if _, err := e.db.Pool.Exec(ctx, `INSERT INTO payment.charges (saga_id, customer_id, amount_cents, currency) VALUES ($1, 'x', 100, 'EUR')`, stray); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool.Exec(ctx, `UPDATE inventory.stock SET available = available + 1 WHERE sku = 'sku-2'`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.db.Pool.Exec(ctx, `UPDATE shipping.shipments SET cancelled_at = now() WHERE saga_id = $1`, p.SagaID); err != nil {
		t.Fatal(err)
	}
	rep, err := verify.Run(ctx, e.db.Pool, verify.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("verify passed a corrupted database")
	}
	var out strings.Builder
	rep.Print(&out)
	for _, want := range []string{"charge of saga " + stray.String() + " has no order", "SKU sku-2", "order " + p.OrderID.String() + " is confirmed but its shipment is cancelled"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report does not name %q:\n%s", want, out.String())
		}
	}
}

// With MetricsAddr set, /metrics serves the outbox backlog and the engine's
// counters in the Prometheus text format.
func TestMetricsEndpoint(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e := setup(t, func(c *roles.Config) { c.MetricsAddr = addr })
	if _, code := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), nil, "DE")); code != http.StatusAccepted {
		t.Fatalf("POST /orders answered %d", code)
	}
	e.waitTerminal(time.Minute)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`sagaflow_outbox_backlog_rows{outbox="saga"}`,
		`sagaflow_outbox_oldest_age_seconds{outbox="orders"}`,
		"sagaflow_saga_started_total 1",
		"sagaflow_saga_completed_total 1",
		`sagaflow_relay_published_total{outbox="inventory"}`,
		"sagaflow_outbox_slot_lag_bytes{slot=\"sagaflow_",
		"sagaflow_outbox_slot_active{slot=\"sagaflow_",
		"sagaflow_relay_slots_recreated_total 0",
		`sagaflow_relay_visibility_checks_total{by="commit_log"}`,
		`sagaflow_relay_visibility_checks_total{by="snapshot"}`,
		`sagaflow_outbox_parked_rows{outbox="payment"} 0`,
		"sagaflow_relay_parked_total 0",
		"sagaflow_saga_deadlines_held_total",
		"sagaflow_consumer_transient_giveups_total",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
