package kafkax_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/kafkax"
)

// A consumer group's lag is what it has yet to read; ResetGroup refuses a
// group with live members, computes a dry run without changing anything,
// and moves the committed offsets (to given offsets, then to the earliest).
func TestGroupLagAndReset(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ctx := context.Background()
	pub, err := e.cfg.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	const n = 40
	for i := range n {
		m := message.NewMessage(uuid.NewString(), []byte("x"))
		m.Metadata.Set(kafkax.KeyMetadata, string(rune('a'+i%8)))
		if err := pub.Publish(e.topic, m); err != nil {
			t.Fatal(err)
		}
	}
	sum := func(ps []kafkax.PartitionPosition) (lag int64) {
		for _, p := range ps {
			lag += p.Lag
		}
		return lag
	}
	if ps, err := e.cfg.GroupLag(ctx, e.group, e.topic); err != nil || sum(ps) != n {
		t.Fatalf("lag of a new group: %d (%v), want %d", sum(ps), err, n)
	}
	if lags, err := e.cfg.GroupLags(ctx, map[string][]string{e.group: {e.topic}}); err != nil || sum(lags[e.group]) != n {
		t.Fatalf("lags of a new group: %d (%v), want %d", sum(lags[e.group]), err, n)
	}

	// A live member reads everything and commits.
	sub, err := e.cfg.NewSubscriber(e.group, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	msgs, err := sub.Subscribe(sctx, e.topic)
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		select {
		case m := <-msgs:
			m.Ack()
		case <-sctx.Done():
			t.Fatal("the group did not read every message")
		}
	}
	for {
		ps, err := e.cfg.GroupLag(ctx, e.group, e.topic)
		if err != nil {
			t.Fatal(err)
		}
		if sum(ps) == 0 {
			break
		}
		if sctx.Err() != nil {
			t.Fatalf("lag stays %d after every message was acked", sum(ps))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := e.cfg.ResetGroup(ctx, e.group, []string{e.topic}, kafkax.ResetTarget{Earliest: true}, false); !errors.Is(err, kafkax.ErrGroupActive) {
		t.Fatalf("reset of a live group: %v, want ErrGroupActive", err)
	}
	cancel()
	if err := sub.Close(); err != nil {
		t.Fatal(err)
	}

	// A dry run changes nothing.
	ps, err := e.cfg.ResetGroup(ctx, e.group, []string{e.topic}, kafkax.ResetTarget{Earliest: true}, true)
	if err != nil || sum(ps) != n {
		t.Fatalf("dry run: %d to read again (%v), want %d", sum(ps), err, n)
	}
	if ps, err := e.cfg.GroupLag(ctx, e.group, e.topic); err != nil || sum(ps) != 0 {
		t.Fatalf("lag after a dry run: %d (%v), want 0", sum(ps), err)
	}
	// To offset 0 of partition 0 only, then everything.
	var p0 int64
	for _, p := range ps {
		if p.Partition == 0 {
			p0 = p.End
		}
	}
	if ps, err := e.cfg.ResetGroup(ctx, e.group, []string{e.topic}, kafkax.ResetTarget{Offsets: map[int32]int64{0: 0}}, false); err != nil || sum(ps) != p0 {
		t.Fatalf("reset of partition 0: %d to read (%v), want %d", sum(ps), err, p0)
	}
	if ps, err := e.cfg.GroupLag(ctx, e.group, e.topic); err != nil || sum(ps) != p0 {
		t.Fatalf("lag after resetting partition 0: %d (%v), want %d", sum(ps), err, p0)
	}
	if _, err := e.cfg.ResetGroup(ctx, e.group, []string{e.topic}, kafkax.ResetTarget{Offsets: map[int32]int64{0: p0 + 1}}, false); err == nil {
		t.Fatal("a reset past the partition's end succeeded")
	}
	if _, err := e.cfg.ResetGroup(ctx, e.group, []string{e.topic}, kafkax.ResetTarget{Earliest: true}, false); err != nil {
		t.Fatal(err)
	}
	if ps, err := e.cfg.GroupLag(ctx, e.group, e.topic); err != nil || sum(ps) != n {
		t.Fatalf("lag after the reset to the earliest: %d (%v), want %d", sum(ps), err, n)
	}
}
