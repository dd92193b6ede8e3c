package kafkax

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// RelayProducer is the outbox relay's producer: franz-go's client (kgo)
// behind sarama's SyncProducer.SendMessages, whose per-message errors
// (sarama.ProducerErrors, Kafka error codes as sarama.KError) the relay's
// retry and parking rules read. Per message, kgo costs about a third of the
// CPU and of the time sarama's producer does (one goroutine per broker, not
// a pipeline of goroutines per topic and partition). It partitions keys
// exactly as sarama's hash partitioner does, so a key keeps its partition
// whichever of the two wrote it.
type RelayProducer struct {
	cl *kgo.Client
}

// Relay producer bounds: a partition without a leader, or a broker that
// does not answer, fails its records within about relayDeliveryTimeout, and
// the relay tries them again while the other partitions' records flow.
const (
	relayRecordRetries   = 2
	relayDeliveryTimeout = 5 * time.Second
)

// NewRelayProducer returns the relay's producer: idempotent, acks from all
// in-sync replicas, no linger.
func (c Config) NewRelayProducer() (*RelayProducer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(c.Brokers...),
		kgo.ClientID(c.clientID()),
		kgo.DialTimeout(5*time.Second),
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(kgo.SaramaCompatHasher(fnv32a))),
		kgo.ProducerLinger(0),
		kgo.RecordRetries(relayRecordRetries),
		kgo.UnknownTopicRetries(1),
		kgo.RecordDeliveryTimeout(relayDeliveryTimeout),
		// The bounds above may fail a record whose request went out and
		// got no answer (a broker killed mid-request): kgo refuses that by
		// default, for the duplicate a retry may make, and would hold the
		// relay's whole call until the broker came back. The relay tries
		// such rows again and the inboxes absorb duplicates, as they did
		// with sarama, which failed them.
		kgo.AllowIdempotentProduceCancellation(),
		// sarama's Producer.MaxMessageBytes: a larger message fails with
		// MESSAGE_TOO_LARGE, and the relay parks it.
		kgo.ProducerBatchMaxBytes(1024*1024),
		kgo.WithLogger(nil),
	)
	if err != nil {
		return nil, fmt.Errorf("create Kafka producer for %s: %w", strings.Join(c.Brokers, ","), err)
	}
	return &RelayProducer{cl: cl}, nil
}

func fnv32a(b []byte) uint32 {
	h := fnv.New32a()
	_, _ = h.Write(b)
	return h.Sum32()
}

// SendMessages sends msgs and returns once each is acknowledged (its
// Partition and Offset set, as sarama sets them) or failed; the failed ones
// come back as sarama.ProducerErrors, each with its
// message. A message larger than sarama's producer would take (1 MiB)
// fails with sarama.ErrMessageSizeTooLarge, as with sarama.
func (p *RelayProducer) SendMessages(msgs []*sarama.ProducerMessage) error {
	var (
		mu   sync.Mutex
		errs sarama.ProducerErrors
		wg   sync.WaitGroup
	)
	fail := func(m *sarama.ProducerMessage, err error) {
		mu.Lock()
		errs = append(errs, &sarama.ProducerError{Msg: m, Err: saramaError(err)})
		mu.Unlock()
	}
	ctx := context.Background()
	for _, m := range msgs {
		rec, err := record(m)
		if err != nil {
			fail(m, err)
			continue
		}
		wg.Add(1)
		p.cl.Produce(ctx, rec, func(r *kgo.Record, err error) {
			defer wg.Done()
			if err != nil {
				fail(m, err)
				return
			}
			m.Partition, m.Offset = r.Partition, r.Offset
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// Close flushes nothing (every SendMessages waited for its messages) and
// closes the client.
func (p *RelayProducer) Close() error {
	p.cl.Close()
	return nil
}

// record converts a sarama message.
func record(m *sarama.ProducerMessage) (*kgo.Record, error) {
	rec := &kgo.Record{Topic: m.Topic, Timestamp: m.Timestamp}
	var err error
	if m.Key != nil {
		if rec.Key, err = m.Key.Encode(); err != nil {
			return nil, sarama.ConfigurationError(fmt.Sprintf("encode key: %v", err))
		}
	}
	if m.Value != nil {
		if rec.Value, err = m.Value.Encode(); err != nil {
			return nil, sarama.ConfigurationError(fmt.Sprintf("encode value: %v", err))
		}
	}
	rec.Headers = make([]kgo.RecordHeader, len(m.Headers))
	for i, h := range m.Headers {
		rec.Headers[i] = kgo.RecordHeader{Key: string(h.Key), Value: h.Value}
	}
	return rec, nil
}

// saramaError turns a Kafka error code from kgo into sarama's KError of the
// same code, so the relay's rules (retry, park) read it; other errors (a
// timeout, the client closed) stay as they are, and are retried.
func saramaError(err error) error {
	var ke *kerr.Error
	if !errors.As(err, &ke) {
		return err
	}
	if ke == kerr.MessageTooLarge {
		// kgo fails a record over its batch limit itself, with the
		// broker's error: say which limits there are.
		return fmt.Errorf("message larger than the producer's limit (1 MiB) or the broker's (message.max.bytes): %w", sarama.KError(ke.Code))
	}
	return sarama.KError(ke.Code)
}
