package steps_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var testLog = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

// participants names the three participants, for tests that run on each.
var participants = []string{order.StepInventory, order.StepPayment, order.StepShipping}

// env is one test's database, topic names and crash recorder.
type env struct {
	t      *testing.T
	ctx    context.Context
	db     *testenv.Database
	topics kafkax.Topics

	mu      sync.Mutex
	crashes []string
}

// setup gives the test a fresh database with stock A=10, B=5, C=0.
func setup(t *testing.T) *env {
	t.Helper()
	e := &env{
		t:      t,
		ctx:    context.Background(),
		db:     testenv.DB(t),
		topics: kafkax.PrefixedTopics(testenv.Name(t, "t") + "."),
	}
	if err := steps.SeedStock(e.ctx, e.db.Pool, map[string]int{"A": 10, "B": 5, "C": 0}); err != nil {
		t.Fatal(err)
	}
	return e
}

// config is the configuration tests start from: injection allowed, crashes
// recorded instead of exiting.
func (e *env) config() steps.Config {
	return steps.Config{
		Pool:           e.db.Pool,
		Topics:         e.topics,
		AllowInjection: true,
		Crash:          e.recordCrash,
		Logger:         testLog,
	}
}

func (e *env) recordCrash(point string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.crashes = append(e.crashes, point)
}

// crashPoints returns the crash points reached so far.
func (e *env) crashPoints() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.crashes)
}

// participant builds the named participant from e.config(), changed by tweak.
func (e *env) participant(name string, tweak func(*steps.Config)) *steps.Participant {
	e.t.Helper()
	cfg := e.config()
	if tweak != nil {
		tweak(&cfg)
	}
	var (
		p   *steps.Participant
		err error
	)
	switch name {
	case order.StepInventory:
		p, err = steps.NewInventory(cfg)
	case order.StepPayment:
		p, err = steps.NewPayment(cfg)
	case order.StepShipping:
		p, err = steps.NewShipping(cfg)
	default:
		e.t.Fatalf("unknown participant %q", name)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// newOrder is an order every participant accepts with the seeded stock.
func newOrder() order.Data {
	return order.Data{
		OrderID:     uuid.Must(uuid.NewV7()),
		CustomerID:  "c-1",
		Items:       []order.Item{{SKU: "A", Quantity: 2}, {SKU: "B", Quantity: 1}},
		AmountCents: 12345,
		Currency:    "EUR",
		ShippingAddress: order.Address{
			Name: "Ada", Line1: "1 Main St", City: "Berlin", PostalCode: "10115", Country: "DE",
		},
	}
}

func newSaga() uuid.UUID { return uuid.Must(uuid.NewV7()) }

// command builds the message of one of p's commands, as the orchestrator
// publishes it.
func command(t testing.TB, p *steps.Participant, kind saga.Kind, sagaID uuid.UUID, attempt int, d order.Data) *message.Message {
	t.Helper()
	raw, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(saga.Command{SagaID: sagaID, SagaType: "order", Step: p.Name(), Kind: kind, Attempt: attempt, Data: raw})
	if err != nil {
		t.Fatal(err)
	}
	action, compensation := p.Types()
	typ := action
	if kind == saga.KindCompensation {
		typ = compensation
	}
	msg := message.NewMessage(uuid.Must(uuid.NewV7()).String(), payload)
	msg.Metadata.Set(outbox.HeaderType, typ)
	msg.Metadata.Set(outbox.HeaderSchemaVersion, "1")
	return msg
}

// deliver hands msg to p through p's inbox, as its consumer does.
func (e *env) deliver(p *steps.Participant, msg *message.Message) (duplicate bool, err error) {
	return e.deliverCtx(e.ctx, p, msg)
}

func (e *env) deliverCtx(ctx context.Context, p *steps.Participant, msg *message.Message) (duplicate bool, err error) {
	return p.Inbox().Handle(ctx, uuid.MustParse(msg.UUID), func(ctx context.Context, tx pgx.Tx) error {
		return p.Handle(ctx, tx, msg)
	})
}

// mustDeliver delivers msg, which must be new and succeed.
func (e *env) mustDeliver(p *steps.Participant, msg *message.Message) {
	e.t.Helper()
	dup, err := e.deliver(p, msg)
	if err != nil {
		e.t.Fatalf("deliver %s: %v", msg.Metadata.Get(outbox.HeaderType), err)
	}
	if dup {
		e.t.Fatalf("deliver %s: skipped as a duplicate", msg.Metadata.Get(outbox.HeaderType))
	}
}

// replies decodes the replies p wrote for sagaID, in outbox order, checking
// their topic, key and headers on the way.
func (e *env) replies(p *steps.Participant, sagaID uuid.UUID) []saga.Reply {
	e.t.Helper()
	rows, err := e.db.Pool.Query(e.ctx, `SELECT id, topic, key, payload, headers FROM `+
		pgx.Identifier{p.Schema(), "outbox"}.Sanitize()+` WHERE key = $1 ORDER BY seq`, sagaID.String())
	if err != nil {
		e.t.Fatal(err)
	}
	var out []saga.Reply
	var (
		id         uuid.UUID
		topic, key string
		payload    []byte
		headers    map[string]string
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &topic, &key, &payload, &headers}, func() error {
		if topic != e.topics.SagaReplies {
			e.t.Errorf("reply %s went to topic %q, want %q", id, topic, e.topics.SagaReplies)
		}
		msg := message.NewMessage(id.String(), payload)
		for k, v := range headers {
			msg.Metadata.Set(k, v)
		}
		if msg.Metadata.Get(outbox.HeaderCausationID) == "" || msg.Metadata.Get(outbox.HeaderCorrelationID) != sagaID.String() {
			e.t.Errorf("reply %s: causation %q, correlation %q", id, msg.Metadata.Get(outbox.HeaderCausationID), msg.Metadata.Get(outbox.HeaderCorrelationID))
		}
		r, err := saga.DecodeReply(msg)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// reply is the expected content of a reply of saga s.
func reply(s uuid.UUID, step string, kind saga.Kind, attempt int, outcome saga.Outcome, reason string) saga.Reply {
	return saga.Reply{SagaID: s, Step: step, Kind: kind, Attempt: attempt, Outcome: outcome, Reason: reason, Participant: step}
}

// wantReplies asserts p's replies for sagaID.
func (e *env) wantReplies(p *steps.Participant, sagaID uuid.UUID, want ...saga.Reply) {
	e.t.Helper()
	got := e.replies(p, sagaID)
	if !slices.Equal(got, want) {
		e.t.Fatalf("%s replies of saga %s:\n got  %+v\n want %+v", p.Name(), sagaID, got, want)
	}
}

// status is the steps row of sagaID at p ("" when there is none).
func (e *env) status(p *steps.Participant, sagaID uuid.UUID) (status, reason string) {
	e.t.Helper()
	var r *string
	err := e.db.Pool.QueryRow(e.ctx, `SELECT status, reason FROM `+pgx.Identifier{p.Schema(), "steps"}.Sanitize()+
		` WHERE saga_id = $1 AND step = $2`, sagaID, p.Name()).Scan(&status, &r)
	if err == pgx.ErrNoRows {
		return "", ""
	}
	if err != nil {
		e.t.Fatal(err)
	}
	if r != nil {
		reason = *r
	}
	return status, reason
}

func (e *env) wantStatus(p *steps.Participant, sagaID uuid.UUID, status, reason string) {
	e.t.Helper()
	if s, r := e.status(p, sagaID); s != status || r != reason {
		e.t.Fatalf("%s steps row of saga %s: status %q reason %q, want %q %q", p.Name(), sagaID, s, r, status, reason)
	}
}

// Effect states of a saga at a participant.
const (
	none    = "none"    // no effect row
	applied = "applied" // reserved, charged or shipped
	undone  = "undone"  // released, refunded or cancelled
)

// effect says what p's business tables hold for sagaID.
func (e *env) effect(p *steps.Participant, sagaID uuid.UUID) string {
	e.t.Helper()
	var q string
	switch p.Name() {
	case order.StepInventory:
		q = `SELECT count(*), count(released_at) FROM inventory.reservations WHERE saga_id = $1`
	case order.StepPayment:
		q = `SELECT count(*), count(refunded_at) FROM payment.charges WHERE saga_id = $1`
	case order.StepShipping:
		q = `SELECT count(*), count(cancelled_at) FROM shipping.shipments WHERE saga_id = $1`
	}
	var rows, undoneRows int
	if err := e.db.Pool.QueryRow(e.ctx, q, sagaID).Scan(&rows, &undoneRows); err != nil {
		e.t.Fatal(err)
	}
	switch {
	case rows == 0:
		return none
	case undoneRows == 0:
		return applied
	case undoneRows == rows:
		return undone
	}
	return "partly undone"
}

func (e *env) wantEffect(p *steps.Participant, sagaID uuid.UUID, want string) {
	e.t.Helper()
	if got := e.effect(p, sagaID); got != want {
		e.t.Fatalf("%s effect of saga %s: %s, want %s", p.Name(), sagaID, got, want)
	}
}

// stock is the available units of each SKU.
func (e *env) stock() map[string]int {
	e.t.Helper()
	rows, err := e.db.Pool.Query(e.ctx, `SELECT sku, available FROM inventory.stock`)
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]int{}
	var (
		sku string
		n   int
	)
	if _, err := pgx.ForEachRow(rows, []any{&sku, &n}, func() error { out[sku] = n; return nil }); err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) wantStock(want map[string]int) {
	e.t.Helper()
	got := e.stock()
	for sku, n := range want {
		if got[sku] != n {
			e.t.Fatalf("stock %v, want %v", got, want)
		}
	}
}

// inboxRows counts what p's inbox recorded for its consumer.
func (e *env) inboxRows(p *steps.Participant) int {
	e.t.Helper()
	var n int
	if err := e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM `+pgx.Identifier{p.Schema(), "inbox"}.Sanitize()+
		` WHERE consumer = $1`, p.Group()).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// waitFor polls cond every 20 ms for at most a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
