package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
)

// watcher reads the order events topic from every partition, starting at
// the newest offsets taken when it starts (so before the load), and hands
// each event to a callback with the time it was received.
type watcher struct {
	client   sarama.Client
	consumer sarama.Consumer
	pcs      []sarama.PartitionConsumer
	wg       sync.WaitGroup
	errors   atomic.Int64
	lastErr  atomic.Value // string
}

func startWatcher(ctx context.Context, kcfg kafkax.Config, topic string, on func(ev order.Event, at time.Time)) (*watcher, error) {
	sc := kcfg.ConsumerConfig()
	sc.ClientID = "sagaflow-bench-watch"
	sc.Consumer.Return.Errors = true
	// Wake up quickly when a fetch is answered empty; a fetch with data
	// returns as soon as the broker has it.
	sc.Consumer.MaxWaitTime = 100 * time.Millisecond
	sc.ChannelBufferSize = 1024
	client, err := sarama.NewClient(kcfg.Brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("connect to Kafka at %s to watch %s: %w", strings.Join(kcfg.Brokers, ","), topic, err)
	}
	w := &watcher{client: client}
	ok := false
	defer func() {
		if !ok {
			w.close()
		}
	}()
	parts, err := client.Partitions(topic)
	if err != nil {
		if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			return nil, fmt.Errorf("topic %s does not exist: are the roles running, with the same --topic-prefix?", topic)
		}
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	if w.consumer, err = sarama.NewConsumerFromClient(client); err != nil {
		return nil, fmt.Errorf("consume %s: %w", topic, err)
	}
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		newest, err := kafkax.OffsetWithRetry(ctx, client, topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, fmt.Errorf("newest offset of %s/%d: %w", topic, p, err)
		}
		pc, err := w.consumer.ConsumePartition(topic, p, newest)
		if err != nil {
			return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
		}
		w.pcs = append(w.pcs, pc)
		w.wg.Add(2)
		go func() {
			defer w.wg.Done()
			for m := range pc.Messages() {
				at := time.Now()
				ev, err := order.DecodeEvent(headerVersion(m.Headers), unframed(m.Value))
				if err != nil {
					w.fail(fmt.Errorf("decode event at %s/%d@%d: %w", m.Topic, m.Partition, m.Offset, err))
					continue
				}
				on(ev, at)
			}
		}()
		go func() {
			defer w.wg.Done()
			for err := range pc.Errors() {
				w.fail(err)
			}
		}()
	}
	ok = true
	return w, nil
}

func (w *watcher) fail(err error) {
	w.errors.Add(1)
	w.lastErr.Store(err.Error())
}

// close stops every partition consumer and waits for their goroutines.
func (w *watcher) close() {
	for _, pc := range w.pcs {
		pc.AsyncClose()
	}
	w.wg.Wait()
	if w.consumer != nil {
		_ = w.consumer.Close()
	}
	_ = w.client.Close()
}

// unframed is an event's JSON, whether it came in the Confluent wire
// format (a deployment with a schema registry) or as plain JSON.
func unframed(v []byte) []byte {
	body, _, _ := outbox.Unframe(v)
	return body
}

// headerVersion is a record's schema_version header (0 when it has none or
// it is not a number).
func headerVersion(hs []*sarama.RecordHeader) int {
	for _, h := range hs {
		if string(h.Key) == outbox.HeaderSchemaVersion {
			v, _ := strconv.Atoi(string(h.Value))
			return v
		}
	}
	return 0
}
