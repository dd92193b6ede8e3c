package conformance_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/conformance"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func report(t *testing.T, rs []conformance.Result) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, r := range rs {
		out[r.Rule] = r.Pass
		verdict := "pass"
		if !r.Pass {
			verdict = "FAIL"
		}
		t.Logf("%-4s %-60s %s", verdict, r.Rule, r.Detail)
	}
	if len(rs) != len(conformance.Rules) {
		t.Errorf("%d verdicts, want one per rule (%d)", len(rs), len(conformance.Rules))
	}
	return out
}

// Sagaflow's three participants pass every rule.
func TestOurParticipantsConform(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	topics := kafkax.PrefixedTopics(testenv.Name(t, "cf") + ".")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := steps.SeedStock(ctx, db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	// The participants and the relay; the kit plays the orchestrator.
	stacktest.Start(t, roles.Config{Pool: db.Pool, Kafka: kafka, Topics: topics,
		Roles: []string{roles.Inventory, roles.Payment, roles.Shipping, roles.Relay}})
	for _, p := range conformance.Participants {
		t.Run(p, func(t *testing.T) {
			rs, err := conformance.Run(ctx, conformance.Config{Kafka: kafka, Topics: topics, Participant: p,
				Effects: conformance.SQLEffects(db.Pool, conformance.OurEffects[p]), Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for rule, pass := range report(t, rs) {
				if !pass {
					t.Errorf("%s fails %q", p, rule)
				}
			}
		})
	}
}

// fake is a deliberately broken payment participant written against the
// wire alone (no Sagaflow code but the message names): a Kafka consumer
// and producer with in-memory effects served over HTTP for the kit.
type fake struct {
	noDedup, noTombstone, wrongSchema, newestOnly bool

	mu      sync.Mutex
	effects map[uuid.UUID]int
	answers map[string]saga.Outcome // saga/kind → outcome
	tomb    map[uuid.UUID]bool
}

func (f *fake) serveEffects(w http.ResponseWriter, r *http.Request) {
	id, err := uuid.Parse(r.URL.Query().Get("saga_id"))
	if err != nil {
		http.Error(w, "saga_id", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fmt.Fprintf(w, `{"effects": %d}`, f.effects[id])
}

func (f *fake) handle(m *message.Message, pub message.Publisher, topics kafkax.Topics) error {
	typ := m.Metadata.Get(outbox.HeaderType)
	v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
	// It reads commands of both versions a consumer must read, and answers
	// in the version asked, on saga.replies.
	if (typ != "payment.charge" && typ != "payment.refund") || v < saga.SchemaVersion-1 || v > saga.SchemaVersion {
		return pub.Publish(topics.DeadLetter("payment"), m) // what it cannot read
	}
	var cmd saga.Command
	if err := json.Unmarshal(m.Payload, &cmd); err != nil {
		return pub.Publish(topics.DeadLetter("payment"), m)
	}
	f.mu.Lock()
	outcome := saga.Succeeded
	reason := ""
	key := cmd.SagaID.String() + "/" + string(cmd.Kind)
	prev, answered := f.answers[key]
	switch {
	case answered && !f.noDedup:
		outcome = prev
	case cmd.Kind == saga.KindAction && f.tomb[cmd.SagaID]:
		outcome, reason = saga.Refused, "compensated before it arrived"
	case cmd.Kind == saga.KindAction:
		f.effects[cmd.SagaID]++
	default: // compensation
		if f.effects[cmd.SagaID] == 0 && !f.noTombstone {
			f.tomb[cmd.SagaID] = true
		}
		f.effects[cmd.SagaID] = 0
	}
	f.answers[key] = outcome
	f.mu.Unlock()
	var payload []byte
	if f.wrongSchema {
		payload, _ = json.Marshal(map[string]any{"saga_id": cmd.SagaID, "step": cmd.Step, "kind": cmd.Kind,
			"attempt": cmd.Attempt, "outcome": outcome, "status": "ok"}) // status: not in the schema
	} else {
		r := saga.Reply{SagaID: cmd.SagaID, Step: cmd.Step, Kind: cmd.Kind, Attempt: cmd.Attempt, Outcome: outcome, Reason: reason}
		if v >= 2 || f.newestOnly {
			r.Participant = "billing"
		}
		payload, _ = json.Marshal(r)
	}
	r := message.NewMessage(uuid.NewString(), payload)
	r.Metadata.Set(kafkax.KeyMetadata, cmd.SagaID.String())
	r.Metadata.Set(outbox.HeaderType, saga.ReplyType)
	if f.newestOnly {
		v = saga.SchemaVersion
	}
	r.Metadata.Set(outbox.HeaderSchemaVersion, strconv.Itoa(v))
	r.Metadata.Set(outbox.HeaderCorrelationID, cmd.SagaID.String())
	r.Metadata.Set(outbox.HeaderCausationID, m.UUID)
	return pub.Publish(topics.SagaReplies, r)
}

// Each broken participant fails the rule it breaks, and only that one.
func TestBrokenParticipantsFail(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		fake  *fake
		fails string
	}{
		{"without deduplication", &fake{noDedup: true}, "same action twice: same reply, one effect"},
		{"without tombstones", &fake{noTombstone: true}, "compensation before action: tombstone, late action refused"},
		{"replying with a wrong schema", &fake{wrongSchema: true}, "reply headers and schema valid"},
		{"answering in the newest version only", &fake{newestOnly: true}, "answers in the schema version asked"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kafka := testenv.Kafka(t)
			topics := kafkax.PrefixedTopics(testenv.Name(t, "bk") + ".")
			if err := kafka.EnsureTopics(context.Background(), topics.All()...); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			f := tc.fake
			f.effects, f.answers, f.tomb = map[uuid.UUID]int{}, map[string]saga.Outcome{}, map[uuid.UUID]bool{}
			srv := httptest.NewServer(http.HandlerFunc(f.serveEffects))
			defer srv.Close()
			pub, err := kafka.NewPublisher(watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			sub, err := kafka.NewSubscriber(topics.Group("payment"), watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			cmds, err := sub.Subscribe(ctx, topics.PaymentCommands)
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				for m := range cmds {
					if err := f.handle(m, pub, topics); err != nil {
						m.Nack()
						continue
					}
					m.Ack()
				}
			}()
			rs, err := conformance.Run(ctx, conformance.Config{Kafka: kafka, Topics: topics, Participant: "payment",
				Effects: conformance.HTTPEffects(srv.URL), Timeout: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			verdicts := report(t, rs)
			for _, rule := range conformance.Rules {
				if broken := rule == tc.fails; verdicts[rule] == broken {
					t.Errorf("the participant %s: %q passed %v, want %v (it fails the rule it breaks, and only that one)", tc.name, rule, verdicts[rule], !broken)
				}
			}
		})
	}
}
