// Package kafkax is Sagaflow's Kafka wiring in one place: the sarama settings
// every consumer and the dead-letter publisher use, watermill-kafka
// publishers and subscribers built from them, the outbox relay's producer
// (franz-go's kgo, behind sarama's SendMessages: RelayProducer), explicit
// topic creation, and the embedded kfake cluster of `sagaflow dev` and the
// fast tests.
//
// The settings follow what DESIGN.md measured: sarama's protocol version is
// 2.8 (Kafka 4 refuses anything older than 2.1, and watermill-kafka's default
// says 1.0), producers are idempotent with acks=all and one request in flight,
// and consumer groups that have no committed offset start at the oldest one.
package kafkax

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/rcrowley/go-metrics"
)

func init() {
	// sarama records per-broker histograms and meters in go-metrics, which
	// Sagaflow never reads (its metrics are Prometheus'): they took 5% of
	// the CPU of a whole in-process stack (sagaflow bench --cpuprofile).
	// This is sarama's documented switch, and it is global; it must be set
	// before any client exists.
	metrics.UseNilMetrics = true
}

// Version is the Kafka protocol version sarama speaks.
var Version = sarama.V2_8_0_0

// KeyMetadata is the watermill metadata entry whose value becomes the Kafka
// message key (and so picks the partition). Sagaflow keys by saga id.
const KeyMetadata = "kafka_key"

// Config says where Kafka is and how topics are created.
type Config struct {
	// Brokers is the bootstrap list, host:port.
	Brokers []string
	// Partitions of each topic created at start-up (0: DefaultPartitions).
	Partitions int32
	// ReplicationFactor of each topic created at start-up. 0 means the
	// default: min(3, the number of brokers in the cluster), so that a
	// production cluster gets three copies of every message and a one-broker
	// development cluster still works. See TopicSettings.
	ReplicationFactor int16
	// StrictTopics makes EnsureTopics refuse to go on when an existing topic
	// has fewer partitions, another replication factor or another
	// min.insync.replicas than it would be created with (serve
	// --strict-topics). Without it such differences are only reported.
	StrictTopics bool
	// AllowInfiniteRetention lets CheckInboxRetention accept topics that
	// keep messages for ever (retention.ms -1, or compacted): see
	// CheckRetention.
	AllowInfiniteRetention bool
	// Logger receives EnsureTopics' topic settings and its warnings about
	// existing topics (nil: slog.Default()).
	Logger *slog.Logger
	// ClientID names the process to the brokers.
	ClientID string
	// InstanceID, when set, makes this process a static member of its
	// consumer groups (KIP-345): restarted with the same id (after a crash,
	// kill -9 or deploy), it takes its partitions back at once instead of
	// waiting out the dead member's session. It must be unique among the
	// running instances of a role and stable across its restarts (a pod or
	// slot name).
	InstanceID string
}

// DefaultPartitions is the partition count of topics created when
// Config.Partitions is 0. A consumer keeps one message in flight per
// partition, so partitions bound how many messages an inbox's group commit
// can share a transaction with: on a 2-core machine 16 carried 16–34% more
// sagas per second than 8 at 64 workers, with fewer commits per saga (see
// the README), and an idle consumer's fetch covers them all in one request.
// Topics that exist keep their count (see TopicSettings.DefaultPartitions).
const DefaultPartitions = 16

// ParseBrokers splits a comma separated bootstrap list.
func ParseBrokers(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

func (c Config) clientID() string {
	if c.ClientID == "" {
		return "sagaflow"
	}
	return c.ClientID
}

func (c Config) base() *sarama.Config {
	sc := sarama.NewConfig()
	sc.Version = Version
	sc.ClientID = c.clientID()
	sc.Net.DialTimeout = 5 * time.Second
	sc.Metadata.Retry.Max = 5
	sc.Metadata.Retry.Backoff = 250 * time.Millisecond
	return sc
}

// ProducerConfig is the sarama configuration of every producer: idempotent,
// acks from all in-sync replicas, one request in flight so a retry cannot
// reorder a partition.
func (c Config) ProducerConfig() *sarama.Config {
	sc := c.base()
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.Idempotent = true
	sc.Net.MaxOpenRequests = 1
	sc.Producer.Return.Successes = true
	sc.Producer.Return.Errors = true
	sc.Producer.Retry.Max = 10
	sc.Producer.Retry.Backoff = 200 * time.Millisecond
	sc.Producer.Partitioner = sarama.NewHashPartitioner
	return sc
}

// ConsumerConfig is the sarama configuration of every consumer group member:
// a new group starts at the oldest offset, so nothing written before the
// group first joined is skipped.
func (c Config) ConsumerConfig() *sarama.Config {
	sc := c.base()
	sc.Consumer.Return.Errors = true
	sc.Consumer.Offsets.Initial = sarama.OffsetOldest
	sc.Consumer.Offsets.AutoCommit.Interval = 500 * time.Millisecond
	// An idle consumer asks for more every MaxWaitTime; a message that
	// arrives meanwhile is answered at once (a fetch waits for 1 byte), so
	// the wait costs no latency. Idle fetches were a fifth of an idle
	// `sagaflow dev`'s CPU at sarama's 500 ms. A longer wait delays a
	// partition newly assigned at a rebalance by up to the wait: sarama
	// adds it between fetches.
	sc.Consumer.MaxWaitTime = time.Second
	sc.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategyRoundRobin()}
	// A member that died is noticed after 6 s (Kafka's minimum) rather
	// than sarama's 10 s.
	sc.Consumer.Group.Session.Timeout = 6 * time.Second
	sc.Consumer.Group.Heartbeat.Interval = 2 * time.Second
	sc.Consumer.Group.InstanceId = c.InstanceID
	return sc
}

// Marshaler keys each Kafka message by the message's KeyMetadata entry and
// carries the watermill message UUID in a header, so consumers deduplicate
// by it.
var Marshaler = kafka.NewWithPartitioningMarshaler(func(_ string, msg *message.Message) (string, error) {
	return msg.Metadata.Get(KeyMetadata), nil
})

// NewPublisher returns a watermill publisher with the producer settings.
func (c Config) NewPublisher(logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	p, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               c.Brokers,
		Marshaler:             Marshaler,
		OverwriteSaramaConfig: c.ProducerConfig(),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("create Kafka publisher for %s: %w", strings.Join(c.Brokers, ","), err)
	}
	return p, nil
}

// NewSubscriber returns a watermill subscriber in consumer group group.
func (c Config) NewSubscriber(group string, logger watermill.LoggerAdapter) (*kafka.Subscriber, error) {
	s, err := kafka.NewSubscriber(kafka.SubscriberConfig{
		Brokers:               c.Brokers,
		Unmarshaler:           Marshaler,
		OverwriteSaramaConfig: c.ConsumerConfig(),
		ConsumerGroup:         group,
		ReconnectRetrySleep:   500 * time.Millisecond,
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("create Kafka subscriber for group %s: %w", group, err)
	}
	return s, nil
}

// NewSyncProducer returns a sarama producer with the producer settings, for
// the outbox relay that sends batches.
func (c Config) NewSyncProducer() (sarama.SyncProducer, error) {
	sc := c.ProducerConfig()
	// The outbox relay retries what fails itself, holding a failed key's
	// newer rows back. sarama's own retries are kept short: a message that
	// exhausted them while the messages behind it in the same call still
	// had theirs could be overtaken when the broker comes back.
	sc.Producer.Retry.Max = 1
	// sarama also sleeps the backoff after every message it fails before
	// sending it (no leader, its circuit breaker open): one partition's
	// backlog would hold the whole call up for 100 ms a message. Only a
	// real retry waits.
	sc.Producer.Retry.BackoffFunc = func(retries, _ int) time.Duration {
		if retries == 0 {
			return 0
		}
		return 100 * time.Millisecond
	}
	// A partition without leader must fail its messages quickly too:
	// sarama refreshes metadata while the messages of the whole call wait.
	sc.Metadata.Retry.Max = 1
	sc.Metadata.Retry.Backoff = 100 * time.Millisecond
	p, err := sarama.NewSyncProducer(c.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("create Kafka producer for %s: %w", strings.Join(c.Brokers, ","), err)
	}
	return p, nil
}

// waitLeaders waits until every partition of topics has a leader in the
// metadata of every one of brokers: a broker answers "not the leader" or
// "unknown topic" for a moment after creating a topic, and a producer that
// meets it retries whole batches, repeating the messages that had gone
// through. Every broker is asked because each answers from its own copy of
// the cluster metadata, which may lag the controller's for a moment: a
// client that bootstraps through a lagging broker would meet an unknown
// topic.
func waitLeaders(ctx context.Context, conf *sarama.Config, brokers []*sarama.Broker, topics []string, bound time.Duration) error {
	defer func() {
		for _, b := range brokers {
			_ = b.Close()
		}
	}()
	if len(topics) == 0 {
		return nil
	}
	deadline := time.Now().Add(bound)
	for {
		missing, err := leaderless(conf, brokers, topics)
		if err == nil && missing == "" {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("wait for the leaders of topics %v: %w", topics, err)
			}
			return fmt.Errorf("partition %s has no leader %s after its creation", missing, bound)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leaderless names the first partition of topics without a leader in the
// metadata of one of brokers ("" when every one has one everywhere). A
// broker that cannot be reached is passed over (it may be down while the
// others serve: clients cannot bootstrap through it either), as long as one
// answers.
func leaderless(conf *sarama.Config, brokers []*sarama.Broker, topics []string) (string, error) {
	var unreachable []error
	for _, b := range brokers {
		if err := b.Open(conf); err != nil && !errors.Is(err, sarama.ErrAlreadyConnected) {
			unreachable = append(unreachable, fmt.Errorf("connect to broker %s: %w", b.Addr(), err))
			continue
		}
		md, err := b.GetMetadata(sarama.NewMetadataRequest(conf.Version, topics))
		if err != nil {
			// Open it again on the next round.
			_ = b.Close()
			unreachable = append(unreachable, fmt.Errorf("metadata from broker %s: %w", b.Addr(), err))
			continue
		}
		for _, t := range md.Topics {
			if t.Err != sarama.ErrNoError {
				return fmt.Sprintf("%s (broker %s: %v)", t.Name, b.Addr(), t.Err), nil
			}
			for _, p := range t.Partitions {
				if p.Err != sarama.ErrNoError || p.Leader < 0 {
					return fmt.Sprintf("%s/%d (broker %s)", t.Name, p.ID, b.Addr()), nil
				}
			}
		}
	}
	if len(unreachable) == len(brokers) {
		return "", errors.Join(unreachable...)
	}
	return "", nil
}

// Ping checks that at least one bootstrap broker accepts TCP connections, so
// a wrong KAFKA_BROKERS fails fast with one clear line instead of sarama's
// retries.
func (c Config) Ping(ctx context.Context) error {
	if len(c.Brokers) == 0 {
		return errors.New("no Kafka brokers configured: set KAFKA_BROKERS (host:port,...) or use --kafka-brokers")
	}
	var d net.Dialer
	var last error
	for _, b := range c.Brokers {
		dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		conn, err := d.DialContext(dctx, "tcp", b)
		cancel()
		if err == nil {
			return conn.Close()
		}
		last = err
	}
	return fmt.Errorf("kafka unreachable at %s (is the broker running? `scripts/kafka/kafka start` starts one): %w", strings.Join(c.Brokers, ","), last)
}

// Topics names the order saga's topics and the prefix of its consumer
// groups. Production uses DefaultTopics; tests use Prefixed names so that
// each test has topics and groups of its own.
type Topics struct {
	InventoryCommands string
	PaymentCommands   string
	ShippingCommands  string
	SagaReplies       string
	OrderEvents       string
	// GroupPrefix starts every consumer group name ("sagaflow." by default).
	GroupPrefix string
}

// DefaultTopics are the production topic names.
func DefaultTopics() Topics {
	return Topics{
		InventoryCommands: "inventory.commands",
		PaymentCommands:   "payment.commands",
		ShippingCommands:  "shipping.commands",
		SagaReplies:       "saga.replies",
		OrderEvents:       "order.events",
		GroupPrefix:       "sagaflow.",
	}
}

// PrefixedTopics are DefaultTopics with every name, and the group prefix,
// starting with prefix.
func PrefixedTopics(prefix string) Topics {
	d := DefaultTopics()
	return Topics{
		InventoryCommands: prefix + d.InventoryCommands,
		PaymentCommands:   prefix + d.PaymentCommands,
		ShippingCommands:  prefix + d.ShippingCommands,
		SagaReplies:       prefix + d.SagaReplies,
		OrderEvents:       prefix + d.OrderEvents,
		GroupPrefix:       prefix + d.GroupPrefix,
	}
}

// Group is the consumer group of a consumer (for example "inventory").
func (t Topics) Group(consumer string) string { return t.GroupPrefix + consumer }

// DeadLetter is the dead-letter topic of a consumer's group.
func (t Topics) DeadLetter(consumer string) string { return t.Group(consumer) + ".dlq" }

// Consumers are the consumers Sagaflow runs, each with a dead-letter topic.
var Consumers = []string{"inventory", "payment", "shipping", "orchestrator"}

// All lists every topic to create at start-up, dead-letter topics included.
func (t Topics) All() []string {
	all := []string{t.InventoryCommands, t.PaymentCommands, t.ShippingCommands, t.SagaReplies, t.OrderEvents}
	for _, c := range Consumers {
		all = append(all, t.DeadLetter(c))
	}
	return all
}

// CountMessages returns how many messages each topic holds (newest minus
// oldest offset over its partitions); a missing topic counts 0.
func (c Config) CountMessages(ctx context.Context, topics ...string) (map[string]int64, error) {
	if err := c.Ping(ctx); err != nil {
		return nil, err
	}
	client, err := sarama.NewClient(c.Brokers, c.base())
	if err != nil {
		return nil, fmt.Errorf("connect to Kafka at %s: %w", strings.Join(c.Brokers, ","), err)
	}
	defer client.Close()
	out := make(map[string]int64, len(topics))
	for _, t := range topics {
		parts, err := client.Partitions(t)
		if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			out[t] = 0
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("partitions of %s: %w", t, err)
		}
		var n int64
		for _, p := range parts {
			newest, err := OffsetWithRetry(ctx, client, t, p, sarama.OffsetNewest)
			if err != nil {
				return nil, fmt.Errorf("newest offset of %s/%d: %w", t, p, err)
			}
			oldest, err := OffsetWithRetry(ctx, client, t, p, sarama.OffsetOldest)
			if err != nil {
				return nil, fmt.Errorf("oldest offset of %s/%d: %w", t, p, err)
			}
			n += newest - oldest
		}
		out[t] = n
	}
	return out, nil
}

// Consumed lists the topics Sagaflow consumes through an inbox (which
// deduplicates by message id for a window, see CheckInboxRetention): the
// participants' command topics and the orchestrator's replies. Order events
// and dead letters are written for others and never consumed here.
func (t Topics) Consumed() []string {
	return []string{t.InventoryCommands, t.PaymentCommands, t.ShippingCommands, t.SagaReplies}
}

// ConsumedBy returns the topic consumer (one of Consumers) reads, or "".
func (t Topics) ConsumedBy(consumer string) string {
	switch consumer {
	case "inventory":
		return t.InventoryCommands
	case "payment":
		return t.PaymentCommands
	case "shipping":
		return t.ShippingCommands
	case "orchestrator":
		return t.SagaReplies
	}
	return ""
}

// DeadLetterTopics lists the dead-letter topics of every consumer.
func (t Topics) DeadLetterTopics() []string {
	var out []string
	for _, c := range Consumers {
		out = append(out, t.DeadLetter(c))
	}
	return out
}

// OffsetWithRetry asks client for a partition's offset (which: a time in
// milliseconds, sarama.OffsetNewest or sarama.OffsetOldest), refreshing
// metadata and retrying while the cluster moves the partition's leadership
// (a new topic, a broker that restarted): for about ten seconds. sarama's
// GetOffset alone refreshes and asks once more, which a leader move on the
// real broker can outlast.
func OffsetWithRetry(ctx context.Context, client sarama.Client, topic string, partition int32, which int64) (int64, error) {
	var err error
	for range 20 {
		var off int64
		if off, err = client.GetOffset(topic, partition, which); err == nil {
			return off, nil
		}
		_ = client.RefreshMetadata(topic)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return 0, err
}
