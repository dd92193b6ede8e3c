package kafkax_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/sagaflow/sagaflow/kafkax"
)

// The relay's producer (kgo behind sarama's SendMessages) puts every key in
// the partition sarama's producer puts it in, keeps a key's messages in
// order within a call, sets each message's partition and offset, and fails
// a message too large for sarama's producer with sarama's error, alone:
// the rest of the call goes through.
func TestRelayProducer(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rp, err := e.cfg.NewRelayProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer rp.Close()
	sp, err := e.cfg.NewSyncProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()

	const keys, perKey = 40, 5
	var viaRelay, viaSarama []*sarama.ProducerMessage
	for i := range perKey {
		for k := range keys {
			key := sarama.StringEncoder(fmt.Sprintf("saga-%d", k))
			viaRelay = append(viaRelay, &sarama.ProducerMessage{Topic: e.topic, Key: key, Value: sarama.StringEncoder(fmt.Sprint(i)), Metadata: k})
			viaSarama = append(viaSarama, &sarama.ProducerMessage{Topic: e.topic, Key: key, Value: sarama.StringEncoder("s"), Metadata: k})
		}
	}
	// A topic just created may still refuse writes for a moment: its
	// metadata names a leader before the broker leads the partition
	// (NOT_LEADER_FOR_PARTITION, which the relay retries). One message per
	// key first, until each went, so that the call below meets a topic
	// ready on every partition it uses.
	awaitWritable(t, rp, e.topic, keys)
	huge := &sarama.ProducerMessage{Topic: e.topic, Key: sarama.StringEncoder("huge"), Value: sarama.ByteEncoder(make([]byte, 1024*1024+1))}
	err = rp.SendMessages(append([]*sarama.ProducerMessage{huge}, viaRelay...))
	var perrs sarama.ProducerErrors
	if !errors.As(err, &perrs) || len(perrs) != 1 || perrs[0].Msg != huge || !errors.Is(perrs[0].Err, sarama.ErrMessageSizeTooLarge) {
		t.Fatalf("a call with one message over 1 MiB: %v, want that message alone failed with %v", err, sarama.ErrMessageSizeTooLarge)
	}
	if err := sp.SendMessages(viaSarama); err != nil {
		t.Fatal(err)
	}
	partition := map[int]int32{}
	for _, m := range viaSarama {
		partition[m.Metadata.(int)] = m.Partition
	}
	last := map[int]int64{}
	for _, m := range viaRelay {
		k := m.Metadata.(int)
		if m.Partition != partition[k] {
			t.Errorf("key saga-%d: partition %d through the relay's producer, %d through sarama's", k, m.Partition, partition[k])
		}
		if off, seen := last[k]; seen && m.Offset <= off {
			t.Errorf("key saga-%d: offset %d after %d: out of order", k, m.Offset, off)
		}
		last[k] = m.Offset
	}
}

// awaitWritable sends one message for each of the keys saga-0 … saga-(keys-1)
// through rp, again until each was acknowledged, for at most 30 s.
func awaitWritable(t *testing.T, rp *kafkax.RelayProducer, topic string, keys int) {
	t.Helper()
	var pending []*sarama.ProducerMessage
	for k := range keys {
		pending = append(pending, &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(fmt.Sprintf("saga-%d", k)), Value: sarama.StringEncoder("ready?")})
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := rp.SendMessages(pending)
		if err == nil {
			return
		}
		var perrs sarama.ProducerErrors
		if !errors.As(err, &perrs) || time.Now().After(deadline) {
			t.Fatalf("topic %s not writable: %v", topic, err)
		}
		pending = pending[:0]
		for _, pe := range perrs {
			pending = append(pending, pe.Msg)
		}
	}
}
