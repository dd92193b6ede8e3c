package bench

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
)

// The watcher starts while a partition's leadership moves (a new topic on
// the real broker, a broker that restarted): the first answers to its
// offset requests are "not the leader" (sarama's GetOffset asks twice, so
// three refusals outlast it), and it asks again rather than failing the run.
func TestWatcherRetriesALeaderMove(t *testing.T) {
	t.Parallel()
	const topic = "bench-test.order.events"
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, topic))
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(c.Close)
	const refusals = 3
	var refused atomic.Int32
	c.ControlKey(int16(kmsg.ListOffsets), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		if refused.Load() == refusals {
			return nil, nil, false
		}
		refused.Add(1)
		c.KeepControl()
		req := kreq.(*kmsg.ListOffsetsRequest)
		resp := req.ResponseKind().(*kmsg.ListOffsetsResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewListOffsetsResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewListOffsetsResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.NotLeaderForPartition.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := startWatcher(ctx, kafkax.Config{Brokers: c.ListenAddrs()}, topic, func(order.Event, time.Time) {})
	if err != nil {
		t.Fatalf("start the watcher across a leader move: %v", err)
	}
	w.close()
	if n := refused.Load(); n != refusals {
		t.Fatalf("%d offset requests were answered 'not the leader', want %d: the test did not test the move", n, refusals)
	}
}
