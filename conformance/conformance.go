// Package conformance plays Sagaflow's participant protocol against a
// running participant, ours or another team's in any language, over Kafka,
// and reports pass or fail per rule: an action is answered, with a valid
// reply; the same action twice gets the same reply and one effect; a
// compensation undoes, twice as once; a compensation before its action
// leaves a tombstone and the late action is refused; an unknown message
// type and a future schema version are dead-lettered, not crashed on; and
// every answer comes within a timeout. Effects are observed through a hook
// the participant's owner supplies (a SQL query or an HTTP endpoint).
package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// Participants are the participants the kit knows the commands of.
var Participants = []string{order.StepInventory, order.StepPayment, order.StepShipping}

// Effects counts the live effects of a saga at the participant: 1 after
// an applied action, 0 after its compensation (or none).
type Effects func(ctx context.Context, sagaID uuid.UUID) (int, error)

// Config is a run of the kit.
type Config struct {
	Kafka  kafkax.Config
	Topics kafkax.Topics
	// Participant is inventory, payment or shipping: whose commands to send.
	Participant string
	// Effects observes effects; nil leaves the effect rules unchecked.
	Effects Effects
	// Timeout bounds each answer (default 30 s).
	Timeout time.Duration
	// SKU is the item the orders ask for (default sku-1): the participant
	// must have it in stock.
	SKU string
}

// Result is one rule's verdict.
type Result struct {
	Rule   string `json:"rule"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// Rules are the rules the kit checks, in order.
var Rules = []string{
	"action answered",
	"reply headers and schema valid",
	"same action twice: same reply, one effect",
	"compensation undoes",
	"duplicate compensation: same reply, no effect",
	"compensation before action: tombstone, late action refused",
	"unknown message type dead-lettered, not crashed on",
	"future schema version dead-lettered, not crashed on",
	"answers in the schema version asked",
	"answers within the timeout",
}

type reply struct {
	msg   *message.Message
	r     saga.Reply
	at    time.Time
	valid error
}

type kit struct {
	cfg     Config
	pub     message.Publisher
	mu      sync.Mutex
	replies map[uuid.UUID][]reply
	dead    map[string]bool // message ids seen on the dead-letter topic
	slowest time.Duration
	late    int // answers that did not come within the timeout
	results []Result
}

// Run plays every rule once and returns the verdicts.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.SKU == "" {
		cfg.SKU = "sku-1"
	}
	if _, err := commandsTopic(cfg.Topics, cfg.Participant); err != nil {
		return nil, err
	}
	k := &kit{cfg: cfg, replies: map[uuid.UUID][]reply{}, dead: map[string]bool{}}
	pub, err := cfg.Kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	defer pub.Close()
	k.pub = pub
	sub, err := cfg.Kafka.NewSubscriber("sagaflow.conformance."+uuid.NewString()[:8], watermill.NopLogger{})
	if err != nil {
		return nil, err
	}
	defer sub.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	replies, err := sub.Subscribe(ctx, cfg.Topics.SagaReplies)
	if err != nil {
		return nil, err
	}
	dead, err := sub.Subscribe(ctx, cfg.Topics.DeadLetter(cfg.Participant))
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for m := range replies {
			k.onReply(m)
			m.Ack()
		}
	}()
	go func() {
		defer wg.Done()
		for m := range dead {
			k.mu.Lock()
			k.dead[m.UUID] = true
			k.mu.Unlock()
			m.Ack()
		}
	}()
	k.play(ctx)
	cancel()
	_ = sub.Close()
	wg.Wait()
	return k.results, nil
}

func commandsTopic(t kafkax.Topics, participant string) (string, error) {
	switch participant {
	case order.StepInventory:
		return t.InventoryCommands, nil
	case order.StepPayment:
		return t.PaymentCommands, nil
	case order.StepShipping:
		return t.ShippingCommands, nil
	}
	return "", fmt.Errorf("participant %q: the kit plays inventory, payment or shipping", participant)
}

func commandType(participant string, kind saga.Kind) string {
	types := map[string][2]string{
		order.StepInventory: {order.TypeReserve, order.TypeRelease},
		order.StepPayment:   {order.TypeCharge, order.TypeRefund},
		order.StepShipping:  {order.TypeShip, order.TypeCancel},
	}[participant]
	if kind == saga.KindCompensation {
		return types[1]
	}
	return types[0]
}

func (k *kit) onReply(m *message.Message) {
	body, _, _ := outbox.Unframe(m.Payload)
	// Read what can be read of it, leniently: a reply that breaks its
	// schema is still an answer, and fails the schema rule alone.
	var loose map[string]any
	if err := json.Unmarshal(body, &loose); err != nil {
		return
	}
	str := func(k string) string { s, _ := loose[k].(string); return s }
	id, err := uuid.Parse(str("saga_id"))
	if err != nil {
		return
	}
	r := saga.Reply{SagaID: id, Step: str("step"), Kind: saga.Kind(str("kind")), Outcome: saga.Outcome(str("outcome")), Reason: str("reason"),
		Participant: str("participant")}
	if a, ok := loose["attempt"].(float64); ok {
		r.Attempt = int(a)
	}
	v, _ := strconv.Atoi(m.Metadata.Get(outbox.HeaderSchemaVersion))
	valid := contract.Validate(m.Metadata.Get(outbox.HeaderType), v, body)
	if valid == nil && m.Metadata.Get(outbox.HeaderCorrelationID) != r.SagaID.String() {
		valid = fmt.Errorf("correlation_id %q is not the saga id %s", m.Metadata.Get(outbox.HeaderCorrelationID), r.SagaID)
	}
	if valid == nil && m.Metadata.Get(outbox.HeaderCausationID) == "" {
		valid = fmt.Errorf("no causation_id header")
	}
	k.mu.Lock()
	k.replies[r.SagaID] = append(k.replies[r.SagaID], reply{msg: m, r: r, at: time.Now(), valid: valid})
	k.mu.Unlock()
}

// send publishes a command of kind (or of type typ when not empty) at
// attempt for saga id, with schema version v, and returns its message id.
func (k *kit) send(id uuid.UUID, kind saga.Kind, attempt int, typ string, v int) (string, time.Time, error) {
	topic, _ := commandsTopic(k.cfg.Topics, k.cfg.Participant)
	data, _ := json.Marshal(order.Data{OrderID: uuid.New(), CustomerID: "conformance", Items: []order.Item{{SKU: k.cfg.SKU, Quantity: 1}},
		AmountCents: 100, Currency: "EUR", ShippingAddress: order.Address{Name: "Conformance", Line1: "1 Main St", City: "Berlin", PostalCode: "10115", Country: "DE"}})
	cmd := saga.Command{SagaID: id, SagaType: order.SagaType, Step: k.cfg.Participant, Kind: kind, Attempt: attempt, Data: data}
	if v >= 2 { // version 1 has no reply_to
		cmd.ReplyTo = k.cfg.Topics.SagaReplies
	}
	payload, _ := json.Marshal(cmd)
	if typ == "" {
		typ = commandType(k.cfg.Participant, kind)
	}
	m := message.NewMessage(uuid.NewString(), payload)
	m.Metadata.Set(kafkax.KeyMetadata, id.String())
	m.Metadata.Set(outbox.HeaderType, typ)
	m.Metadata.Set(outbox.HeaderSchemaVersion, strconv.Itoa(v))
	m.Metadata.Set(outbox.HeaderCorrelationID, id.String())
	m.Metadata.Set(outbox.HeaderCausationID, "conformance")
	at := time.Now()
	return m.UUID, at, k.pub.Publish(topic, m)
}

// await waits for the n-th reply of saga id (from 1).
func (k *kit) await(ctx context.Context, id uuid.UUID, n int, sent time.Time) (reply, error) {
	deadline := time.Now().Add(k.cfg.Timeout)
	for {
		k.mu.Lock()
		rs := k.replies[id]
		k.mu.Unlock()
		if len(rs) >= n {
			r := rs[n-1]
			k.mu.Lock()
			k.slowest = max(k.slowest, r.at.Sub(sent))
			k.mu.Unlock()
			return r, nil
		}
		if time.Now().After(deadline) {
			k.mu.Lock()
			k.late++
			k.mu.Unlock()
			return reply{}, fmt.Errorf("no reply %d for saga %s within %s", n, id, k.cfg.Timeout)
		}
		select {
		case <-ctx.Done():
			return reply{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// dead waits for message id on the dead-letter topic.
func (k *kit) deadLettered(ctx context.Context, msgID string) bool {
	deadline := time.Now().Add(k.cfg.Timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		k.mu.Lock()
		ok := k.dead[msgID]
		k.mu.Unlock()
		if ok {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

func (k *kit) result(rule string, pass bool, format string, args ...any) {
	k.results = append(k.results, Result{Rule: rule, Pass: pass, Detail: fmt.Sprintf(format, args...)})
}

// effects reads the effect count, or says it is not observed.
func (k *kit) effects(ctx context.Context, id uuid.UUID) (int, bool, error) {
	if k.cfg.Effects == nil {
		return 0, false, nil
	}
	n, err := k.cfg.Effects(ctx, id)
	return n, true, err
}

// request sends a command and awaits its answer (the n-th reply of id).
func (k *kit) request(ctx context.Context, id uuid.UUID, kind saga.Kind, attempt, n int) (reply, error) {
	_, at, err := k.send(id, kind, attempt, "", saga.SchemaVersion)
	if err != nil {
		return reply{}, err
	}
	return k.await(ctx, id, n, at)
}

func (k *kit) play(ctx context.Context) {
	a := uuid.Must(uuid.NewV7())
	first, err := k.request(ctx, a, saga.KindAction, 1, 1)
	if err != nil {
		k.result(Rules[0], false, "%v", err)
	} else {
		k.result(Rules[0], first.r.Step == k.cfg.Participant && first.r.Kind == saga.KindAction && first.r.Attempt == 1,
			"%s (attempt %d, %s)", first.r.Outcome, first.r.Attempt, first.r.Kind)
	}
	if err == nil {
		k.result(Rules[1], first.valid == nil, "%v", errString(first.valid, "type, schema_version, correlation_id, causation_id and payload valid"))
	} else {
		k.result(Rules[1], false, "no reply to check")
	}
	// The same action again (a resend: a new message id, attempt 2).
	second, err2 := k.request(ctx, a, saga.KindAction, 2, 2)
	switch {
	case err != nil || err2 != nil:
		k.result(Rules[2], false, "%v", errString(err2, "no first reply"))
	case second.r.Outcome != first.r.Outcome || second.r.Reason != first.r.Reason:
		k.result(Rules[2], false, "first %s %q, then %s %q", first.r.Outcome, first.r.Reason, second.r.Outcome, second.r.Reason)
	default:
		n, observed, err := k.effects(ctx, a)
		switch {
		case err != nil:
			k.result(Rules[2], false, "effects: %v", err)
		case !observed:
			k.result(Rules[2], true, "same reply (%s); effects not observed (no hook)", second.r.Outcome)
		default:
			want := 1
			if first.r.Outcome == saga.Refused {
				want = 0
			}
			k.result(Rules[2], n == want, "same reply (%s), %d effect(s), want %d", second.r.Outcome, n, want)
		}
	}
	// Compensate it, twice.
	comp, err := k.request(ctx, a, saga.KindCompensation, 1, 3)
	k.undone(ctx, Rules[3], a, comp, err)
	comp2, err := k.request(ctx, a, saga.KindCompensation, 2, 4)
	k.undone(ctx, Rules[4], a, comp2, err)
	// A compensation before its action, then the late action.
	b := uuid.Must(uuid.NewV7())
	early, err := k.request(ctx, b, saga.KindCompensation, 1, 1)
	if err != nil || early.r.Outcome != saga.Succeeded {
		k.result(Rules[5], false, "the early compensation: %v", errString(err, string(early.r.Outcome)))
	} else {
		late, err := k.request(ctx, b, saga.KindAction, 1, 2)
		n, observed, eerr := k.effects(ctx, b)
		switch {
		case err != nil:
			k.result(Rules[5], false, "the late action: %v", err)
		case late.r.Outcome != saga.Refused:
			k.result(Rules[5], false, "the late action was %s, not refused", late.r.Outcome)
		case eerr != nil:
			k.result(Rules[5], false, "effects: %v", eerr)
		case observed && n != 0:
			k.result(Rules[5], false, "the late action was refused but left %d effect(s)", n)
		default:
			k.result(Rules[5], true, "late action refused: %s", late.r.Reason)
		}
	}
	// What it cannot read goes to its dead-letter topic, and it goes on.
	for i, c := range []struct {
		typ string
		v   int
	}{{k.cfg.Participant + ".explode", saga.SchemaVersion}, {"", saga.SchemaVersion + 98}} {
		rule := Rules[6+i]
		id := uuid.Must(uuid.NewV7())
		msgID, _, err := k.send(id, saga.KindAction, 1, c.typ, c.v)
		if err != nil {
			k.result(rule, false, "%v", err)
			continue
		}
		if !k.deadLettered(ctx, msgID) {
			k.result(rule, false, "message %s never reached %s", msgID, k.cfg.Topics.DeadLetter(k.cfg.Participant))
			continue
		}
		after := uuid.Must(uuid.NewV7())
		if _, err := k.request(ctx, after, saga.KindAction, 1, 1); err != nil {
			k.result(rule, false, "dead-lettered, but the participant stopped answering: %v", err)
			continue
		}
		k.result(rule, true, "dead-lettered on %s; the next action was answered", k.cfg.Topics.DeadLetter(k.cfg.Participant))
	}
	// Asked in the version before the newest (by an orchestrator not yet
	// upgraded), it answers in that version; asked in the newest, in the
	// newest.
	olderID := uuid.Must(uuid.NewV7())
	older := saga.SchemaVersion - 1
	if _, at, err := k.send(olderID, saga.KindAction, 1, "", older); err != nil {
		k.result(Rules[8], false, "%v", err)
	} else if r, err := k.await(ctx, olderID, 1, at); err != nil {
		k.result(Rules[8], false, "asked in version %d: %v", older, err)
	} else {
		got := r.msg.Metadata.Get(outbox.HeaderSchemaVersion)
		newest := "no reply"
		if first.msg != nil {
			newest = first.msg.Metadata.Get(outbox.HeaderSchemaVersion)
		}
		// Whether the answer is valid in that version is the schema
		// rule's business: this one judges the version alone.
		k.result(Rules[8], got == strconv.Itoa(older) && newest == strconv.Itoa(saga.SchemaVersion),
			"asked in version %d, answered in %s; asked in %d, answered in %s", older, got, saga.SchemaVersion, newest)
	}
	k.mu.Lock()
	slowest, late := k.slowest, k.late
	k.mu.Unlock()
	k.result(Rules[9], late == 0, "slowest answer %s, %d unanswered within %s", slowest.Round(time.Millisecond), late, k.cfg.Timeout)
}

func (k *kit) undone(ctx context.Context, rule string, id uuid.UUID, r reply, err error) {
	if err != nil {
		k.result(rule, false, "%v", err)
		return
	}
	if r.r.Kind != saga.KindCompensation || r.r.Outcome != saga.Succeeded {
		k.result(rule, false, "replied %s %s", r.r.Kind, r.r.Outcome)
		return
	}
	n, observed, err := k.effects(ctx, id)
	switch {
	case err != nil:
		k.result(rule, false, "effects: %v", err)
	case !observed:
		k.result(rule, true, "succeeded; effects not observed (no hook)")
	default:
		k.result(rule, n == 0, "succeeded, %d effect(s) left", n)
	}
}

func errString(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}
