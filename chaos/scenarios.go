package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// Scenario is one failure scenario.
type Scenario struct {
	Name string
	// What the scenario proves, for `sagaflow chaos --list`.
	Doc string
	// Brokers in the Kafka cluster (default 1).
	Brokers int
	// ReplicationFactor of the topics (default 1, or 3 with three brokers).
	ReplicationFactor int16
	// ServeArgs are added to every role process's command line.
	ServeArgs []string
	// MinDuration is the shortest load that lets the faults play out.
	MinDuration time.Duration
	// Setup runs once the brokers are up, before the topics are created
	// (EnsureTopics then leaves the topics it made alone).
	Setup func(ctx context.Context, h *Harness) error
	// Inject returns the failure injection of one order (nil for none).
	Inject func(h *Harness) map[string]string
	// Fault runs during the load and injects the faults.
	Fault func(ctx context.Context, h *Harness) error
	// After runs when the load has stopped, before the settle wait.
	After func(ctx context.Context, h *Harness) error
	// Check runs after verify: scenario-specific assertions.
	Check func(ctx context.Context, h *Harness) error
	// DeadLettersAllowed is how many messages the scenario dead-letters on
	// purpose.
	DeadLettersAllowed int64
	// DelayNotCancel: the faults may delay orders but not cancel them, so
	// the share of cancelled sagas must stay within MaxFaultCancelledPP
	// points of the share refused by business rules.
	DelayNotCancel bool
}

// placeSickPartitions creates the topics with replication factor 1 and
// explicit placement: every topic's partitions on brokers 1 and 2, except
// order.events, whose even partitions live on broker 3. Killing broker 3
// then leaves half of order.events without a leader and every consumed
// topic healthy (a sarama consumer group stalls as a whole when one of its
// partitions has no leader, which would hide what the relay does).
func placeSickPartitions(ctx context.Context, h *Harness) error {
	kcfg := h.kafkaConfig()
	admin, err := sarama.NewClusterAdmin(kcfg.Brokers, kcfg.ProducerConfig())
	if err != nil {
		return fmt.Errorf("connect to Kafka to place topics: %w", err)
	}
	defer admin.Close()
	topics := kafkax.DefaultTopics()
	for _, topic := range topics.All() {
		assign := map[int32][]int32{}
		for p := range int32(kafkax.DefaultPartitions) {
			broker := 1 + p%2
			if topic == topics.OrderEvents && p%2 == 0 {
				broker = 3
			}
			assign[p] = []int32{broker}
		}
		// As EnsureTopics would create them, but placed.
		minISR := "1"
		retention := strconv.FormatInt(kafkax.CreatedTopicRetention.Milliseconds(), 10)
		segment := strconv.FormatInt(kafkax.CreatedTopicSegment.Milliseconds(), 10)
		detail := &sarama.TopicDetail{NumPartitions: -1, ReplicationFactor: -1, ReplicaAssignment: assign,
			ConfigEntries: map[string]*string{"min.insync.replicas": &minISR, "retention.ms": &retention, "segment.ms": &segment}}
		if err := admin.CreateTopic(topic, detail, false); err != nil {
			return fmt.Errorf("create topic %s with placement: %w", topic, err)
		}
	}
	return nil
}

// brokerOutage stops the single broker for d at a fifth of the load.
func brokerOutage(d time.Duration) func(ctx context.Context, h *Harness) error {
	return func(ctx context.Context, h *Harness) error {
		start := time.Now()
		if !h.at(ctx, start, 0.2) {
			return nil
		}
		t := time.Now()
		if err := h.kafka.stop(context.WithoutCancel(ctx)); err != nil {
			return err
		}
		sleep(context.WithoutCancel(ctx), d)
		if err := h.kafka.start(context.WithoutCancel(ctx)); err != nil {
			return err
		}
		h.markFault(fmt.Sprintf("broker stopped %s", d), t, time.Now())
		return nil
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// at waits until fraction f of the load has passed.
func (h *Harness) at(ctx context.Context, start time.Time, f float64) bool {
	return sleep(ctx, time.Until(start.Add(time.Duration(f*float64(h.cfg.Duration)))))
}

var allRoles = []string{"api", "orchestrator", "inventory", "payment", "shipping", "relay"}

// Scenarios are the failure scenarios, in the order the suite runs them.
var Scenarios = []Scenario{
	{
		Name: "kill-roles",
		Doc:  "each role (api, orchestrator, inventory, payment, shipping, relay) killed with SIGKILL at random moments and restarted, repeatedly, under load",
		Fault: func(ctx context.Context, h *Harness) error {
			// Every role once, in a random order, then random roles.
			order := h.permutation(len(allRoles))
			for i := 0; ; i++ {
				if !sleep(ctx, time.Duration(1500+h.intn(2500))*time.Millisecond) {
					return nil
				}
				role := allRoles[order[i%len(order)]]
				if i >= len(order) {
					role = allRoles[h.intn(len(allRoles))]
				}
				ps := h.instances(role)
				p := ps[h.intn(len(ps))]
				t := time.Now()
				p.kill()
				h.markFault("kill -9 "+p.name(), t, t.Add(time.Second))
			}
		},
	},
	{
		Name:      "crash-commit",
		Doc:       "crash-before-commit and crash-after-commit injected in each participant: the process exits at that point and is restarted",
		ServeArgs: []string{"--allow-fault-injection"},
		Inject: func(h *Harness) map[string]string {
			// About one order in a hundred: each participant crashes every
			// few seconds under the default load.
			if h.intn(100) >= 1 {
				return nil
			}
			parts := []string{"inventory", "payment", "shipping"}
			modes := []string{"crash-before-commit", "crash-after-commit"}
			return map[string]string{parts[h.intn(3)]: modes[h.intn(2)]}
		},
		Fault: func(ctx context.Context, h *Harness) error {
			<-ctx.Done()
			return nil
		},
		Check: func(ctx context.Context, h *Harness) error {
			if h.restarts.Load() == 0 {
				return fmt.Errorf("no participant crashed: the injection did not fire")
			}
			return nil
		},
	},
	{
		Name:           "broker-restart",
		Doc:            "the single Kafka broker stopped for 20 s under load, then started on the same data: orders are delayed, not cancelled",
		MinDuration:    45 * time.Second,
		DelayNotCancel: true,
		Fault:          brokerOutage(20 * time.Second),
	},
	{
		Name:           "broker-outage-60s",
		Doc:            "the single Kafka broker stopped for 60 s under load (longer than every step's attempts together), then started: orders are delayed, not cancelled",
		MinDuration:    90 * time.Second,
		DelayNotCancel: true,
		Fault:          brokerOutage(60 * time.Second),
	},
	{
		Name:    "broker-loss",
		Doc:     "three brokers (RF 3, min.insync.replicas=2, acks=all): one killed under load and brought back later",
		Brokers: 3,
		Fault: func(ctx context.Context, h *Harness) error {
			start := time.Now()
			if !h.at(ctx, start, 0.2) {
				return nil
			}
			node := 1 + h.intn(3)
			t := time.Now()
			if err := h.kafka.killNode(context.WithoutCancel(ctx), node); err != nil {
				return err
			}
			h.at(ctx, start, 0.6)
			if err := h.kafka.startNode(context.WithoutCancel(ctx), node); err != nil {
				return err
			}
			h.markFault(fmt.Sprintf("broker %d killed", node), t, time.Now())
			return nil
		},
	},
	{
		Name: "sick-partition",
		Doc: "three brokers, topics without replicas: half the partitions of order.events (which no role consumes) live on broker 3, " +
			"which is killed, so they have no leader; the relay keeps publishing every other row meanwhile and sagas keep ending",
		Brokers:           3,
		ReplicationFactor: 1,
		MinDuration:       50 * time.Second,
		DelayNotCancel:    true,
		Setup:             placeSickPartitions,
		Fault: func(ctx context.Context, h *Harness) error {
			start := time.Now()
			if !h.at(ctx, start, 0.2) {
				return nil
			}
			t := time.Now()
			if err := h.kafka.killNode(context.WithoutCancel(ctx), 3); err != nil {
				return err
			}
			h.at(ctx, start, 0.7)
			if err := h.kafka.startNode(context.WithoutCancel(ctx), 3); err != nil {
				return err
			}
			h.markFault("broker 3 killed (half of order.events without leader)", t, time.Now())
			return nil
		},
		Check: func(ctx context.Context, h *Harness) error {
			// Sagas kept completing while half of order.events had no
			// leader (no saga step needs order.events): of the sagas placed
			// from the kill to 10 s before the restart, at least a quarter
			// completed before the restart. A relay that retried whole
			// batches published nothing in that window, so none did.
			h.faultsMu.Lock()
			f := h.faults[0]
			h.faultsMu.Unlock()
			var placed, done int64
			if err := h.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE state = 'completed' AND ended_at < $2)
FROM saga.instances WHERE created_at BETWEEN $1 AND $2 - interval '10 seconds'`, f.start, f.end).Scan(&placed, &done); err != nil {
				return err
			}
			h.logf("sagas placed while half of order.events had no leader: %d, completed before the broker came back: %d", placed, done)
			if placed == 0 || done*4 < placed {
				return fmt.Errorf("of %d sagas placed while half of order.events had no leader, only %d completed before the broker came back: the other rows did not flow", placed, done)
			}
			return nil
		},
	},
	{
		Name: "postgres-restart",
		Doc:  "PostgreSQL restarted (fast shutdown, start) under load",
		Fault: func(ctx context.Context, h *Harness) error {
			if !h.at(ctx, time.Now(), 0.3) {
				return nil
			}
			t := time.Now()
			if err := h.pg.Restart(context.WithoutCancel(ctx)); err != nil {
				return err
			}
			h.markFault("PostgreSQL restarted", t, time.Now())
			return nil
		},
	},
	{
		Name:           "participant-offline",
		Doc:            "the payment participant offline for 60 s while orders keep arriving, then started: it catches up from Kafka; orders are delayed, not cancelled",
		ServeArgs:      []string{"--step-timeout", "40s"},
		MinDuration:    75 * time.Second,
		DelayNotCancel: true,
		Fault: func(ctx context.Context, h *Harness) error {
			if !sleep(ctx, 5*time.Second) {
				return nil
			}
			t := time.Now()
			for _, p := range h.instances("payment") {
				p.stop()
			}
			sleep(context.WithoutCancel(ctx), 60*time.Second)
			for _, p := range h.instances("payment") {
				if err := p.start(); err != nil {
					return err
				}
			}
			h.markFault("payment offline 60 s", t, time.Now())
			return nil
		},
	},
	{
		Name:      "duplicates",
		Doc:       "every message published twice by the relay (test switch): the inboxes absorb every copy",
		ServeArgs: []string{"--duplicate-relay"},
		Check: func(ctx context.Context, h *Harness) error {
			n, err := outbox.DuplicatesAbsorbed(ctx, h.pool, "saga")
			if err != nil {
				return err
			}
			if n == 0 {
				return fmt.Errorf("the orchestrator's inbox absorbed no duplicate")
			}
			return nil
		},
	},
	{
		Name:               "poison",
		Doc:                "garbage bytes, an unknown message type and a future schema version injected into every consumed topic: dead-lettered, the rest flows",
		DeadLettersAllowed: 12,
		Fault: func(ctx context.Context, h *Harness) error {
			if !h.at(ctx, time.Now(), 0.3) {
				return nil
			}
			t := time.Now()
			if err := h.poison(); err != nil {
				return err
			}
			h.markFault("poison messages", t, time.Now())
			return nil
		},
		Check: func(ctx context.Context, h *Harness) error {
			counts, err := h.kafkaConfig().CountMessages(ctx, kafkax.DefaultTopics().DeadLetterTopics()...)
			if err != nil {
				return err
			}
			for _, c := range kafkax.Consumers {
				if n := counts[kafkax.DefaultTopics().DeadLetter(c)]; n != 3 {
					return fmt.Errorf("%s holds %d messages, want the 3 poison messages", kafkax.DefaultTopics().DeadLetter(c), n)
				}
			}
			return nil
		},
	},
	{
		Name: "rebalance",
		Doc:  "orchestrators scaled 1 → 3 → 1 during load (one killed, one stopped): consumer-group rebalances",
		Fault: func(ctx context.Context, h *Harness) error {
			start := time.Now()
			if !h.at(ctx, start, 0.2) {
				return nil
			}
			t := time.Now()
			for range 2 {
				if err := h.addProc("orchestrator", nil); err != nil {
					return err
				}
			}
			h.at(ctx, start, 0.6)
			ps := h.instances("orchestrator")
			ps[1].killForGood()
			ps[2].stop()
			h.markFault("orchestrators 1 → 3 → 1", t, time.Now())
			return nil
		},
	},
	{
		Name:      "drop",
		Doc:       "a step that never answers (payment drops 10% of charges): retries, then compensation; the late action, released afterwards, is refused",
		ServeArgs: []string{"--allow-fault-injection", "--step-timeout", "1s", "--attempts", "2"},
		Inject: func(h *Harness) map[string]string {
			if h.intn(100) < 10 {
				return map[string]string{"payment": "drop"}
			}
			return nil
		},
		Check: func(ctx context.Context, h *Harness) error { return h.releaseLateActions(ctx) },
	},
}

func (h *Harness) permutation(n int) []int {
	h.rngMu.Lock()
	defer h.rngMu.Unlock()
	return h.rng.Perm(n)
}

// killForGood kills the process with SIGKILL and does not restart it.
func (p *proc) killForGood() {
	p.mu.Lock()
	p.wanted = false
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Kill()
		<-exited
	}
}

// poison publishes three bad messages to each consumed topic: garbage
// bytes, an unknown message type, and a future schema version.
func (h *Harness) poison() error {
	pub, err := h.kafkaConfig().NewPublisher(watermill.NopLogger{})
	if err != nil {
		return err
	}
	defer pub.Close()
	t := kafkax.DefaultTopics()
	future, _ := json.Marshal(saga.Reply{SagaID: uuid.New(), Step: "payment", Kind: saga.KindAction, Attempt: 1, Outcome: saga.Succeeded})
	for _, topic := range []string{t.InventoryCommands, t.PaymentCommands, t.ShippingCommands, t.SagaReplies} {
		for i, m := range []struct {
			payload      []byte
			typ, version string
		}{
			{[]byte{0xde, 0xad, 0xbe, 0xef, 0x00}, "inventory.reserve", "1"},
			{[]byte(`{"hello":"world"}`), "something.unknown", "1"},
			{future, "saga.reply", "99"},
		} {
			msg := message.NewMessage(uuid.NewString(), m.payload)
			msg.Metadata.Set(kafkax.KeyMetadata, fmt.Sprintf("poison-%d", i))
			msg.Metadata.Set(outbox.HeaderType, m.typ)
			msg.Metadata.Set(outbox.HeaderSchemaVersion, m.version)
			if err := pub.Publish(topic, msg); err != nil {
				return fmt.Errorf("publish poison to %s: %w", topic, err)
			}
		}
	}
	return nil
}

// releaseLateActions publishes again, late, the charge command of every saga
// whose payment step never answered, then checks each is refused (a stale
// reply in the saga's history) and charged nothing.
func (h *Harness) releaseLateActions(ctx context.Context) error {
	rows, err := h.pool.Query(ctx, `SELECT s.saga_id, i.data FROM payment.steps s JOIN saga.instances i ON i.id = s.saga_id WHERE s.status = 'tombstone'`)
	if err != nil {
		return err
	}
	type late struct {
		id   uuid.UUID
		data json.RawMessage
	}
	var lates []late
	for rows.Next() {
		var l late
		if err := rows.Scan(&l.id, &l.data); err != nil {
			rows.Close()
			return err
		}
		lates = append(lates, l)
	}
	rows.Close()
	if len(lates) == 0 {
		return fmt.Errorf("no payment step was compensated before its action: the drop injection did not fire")
	}
	pub, err := h.kafkaConfig().NewPublisher(watermill.NopLogger{})
	if err != nil {
		return err
	}
	defer pub.Close()
	// The data without the drop injection: the released action is processed.
	for _, l := range lates {
		var data map[string]any
		_ = json.Unmarshal(l.data, &data)
		delete(data, "inject")
		raw, _ := json.Marshal(data)
		payload, _ := json.Marshal(saga.Command{SagaID: l.id, SagaType: "order", Step: "payment", Kind: saga.KindAction, Attempt: 1, Data: raw})
		msg := message.NewMessage(uuid.NewString(), payload)
		msg.Metadata.Set(kafkax.KeyMetadata, l.id.String())
		msg.Metadata.Set(outbox.HeaderType, "payment.charge")
		msg.Metadata.Set(outbox.HeaderSchemaVersion, "1")
		if err := pub.Publish(kafkax.DefaultTopics().PaymentCommands, msg); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var refused int
		if err := h.pool.QueryRow(ctx, `SELECT count(DISTINCT saga_id) FROM saga.history
			WHERE saga_id = ANY($1) AND event = $2 AND reason LIKE '%refused%'`, ids(lates, func(l late) uuid.UUID { return l.id }), saga.EventStaleReply).Scan(&refused); err != nil {
			return err
		}
		if refused == len(lates) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d late actions came back refused", refused, len(lates))
		}
		sleep(ctx, 200*time.Millisecond)
	}
	var charged int
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM payment.charges WHERE saga_id = ANY($1)`,
		ids(lates, func(l late) uuid.UUID { return l.id })).Scan(&charged); err != nil {
		return err
	}
	if charged != 0 {
		return fmt.Errorf("%d late actions charged", charged)
	}
	h.logf("released %d late actions: all refused", len(lates))
	return nil
}

func ids[T any](xs []T, f func(T) uuid.UUID) []uuid.UUID {
	out := make([]uuid.UUID, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// ScenarioByName finds a scenario.
func ScenarioByName(name string) (Scenario, bool) {
	for _, s := range Scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}
