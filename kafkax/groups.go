package kafkax

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// PartitionPosition is a consumer group's position on one partition.
type PartitionPosition struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	// Committed is the group's committed offset (-1: none yet).
	Committed int64 `json:"committed"`
	// End is the partition's next offset; Lag is what the group has yet
	// to read (End minus Committed, or End minus the start without a
	// commit).
	End int64 `json:"end"`
	Lag int64 `json:"lag"`
	// Target is where ResetGroup moves (or would move) the group (-1 in
	// GroupLag, and for a partition a reset leaves without an offset).
	Target int64 `json:"target"`
}

// ResetTarget says where ResetGroup moves a group: to the earliest offset
// kept, to the first offset at or after a time, or to given offsets.
type ResetTarget struct {
	Earliest bool
	Time     time.Time
	// Offsets per partition (of every topic reset); partitions not named
	// keep their committed offset.
	Offsets map[int32]int64
}

// ErrGroupActive is returned by ResetGroup for a group with live members:
// Kafka accepts offsets for a group only from its current members, so the
// group's consumers must be stopped first.
var ErrGroupActive = errors.New("the consumer group has live members")

// GroupLag returns group's position on every partition of topics.
func (c Config) GroupLag(ctx context.Context, group string, topics ...string) ([]PartitionPosition, error) {
	var out []PartitionPosition
	err := c.withClient(ctx, func(client sarama.Client, admin sarama.ClusterAdmin) error {
		var err error
		out, err = positions(ctx, client, admin, group, topics)
		return err
	})
	return out, err
}

// GroupLags is GroupLag for several groups (group → topics) on one
// connection.
func (c Config) GroupLags(ctx context.Context, groups map[string][]string) (map[string][]PartitionPosition, error) {
	out := make(map[string][]PartitionPosition, len(groups))
	err := c.withClient(ctx, func(client sarama.Client, admin sarama.ClusterAdmin) error {
		for group, topics := range groups {
			ps, err := positions(ctx, client, admin, group, topics)
			if err != nil {
				return err
			}
			out[group] = ps
		}
		return nil
	})
	return out, err
}

// ResetGroup moves group's committed offsets on topics to target and
// returns, per partition, the position before with the target (Lag is then
// what the group will read again). With dryRun it only computes that. It
// refuses a group with live members (ErrGroupActive). Replaying is safe in
// Sagaflow: every consumer deduplicates through its inbox, and a command
// whose message id left the inbox is answered from the step's record.
func (c Config) ResetGroup(ctx context.Context, group string, topics []string, target ResetTarget, dryRun bool) ([]PartitionPosition, error) {
	var out []PartitionPosition
	err := c.withClient(ctx, func(client sarama.Client, admin sarama.ClusterAdmin) error {
		desc, err := admin.DescribeConsumerGroups([]string{group})
		if err != nil {
			return fmt.Errorf("describe consumer group %s: %w", group, err)
		}
		if len(desc) == 1 && len(desc[0].Members) > 0 {
			return fmt.Errorf("reset consumer group %s: %w (%d, state %s): stop its consumers first", group, ErrGroupActive, len(desc[0].Members), desc[0].State)
		}
		if out, err = positions(ctx, client, admin, group, topics); err != nil {
			return err
		}
		for i := range out {
			p := &out[i]
			switch {
			case target.Earliest:
				p.Target, err = OffsetWithRetry(ctx, client, p.Topic, p.Partition, sarama.OffsetOldest)
			case !target.Time.IsZero():
				p.Target, err = OffsetWithRetry(ctx, client, p.Topic, p.Partition, target.Time.UnixMilli())
				if err == nil && p.Target < 0 { // nothing at or after the time
					p.Target = p.End
				}
			default:
				o, named := target.Offsets[p.Partition]
				p.Target = p.Committed
				if named {
					p.Target = o
				}
			}
			if err != nil {
				return fmt.Errorf("offset of %s/%d: %w", p.Topic, p.Partition, err)
			}
			if p.Target > p.End {
				return fmt.Errorf("offset %d of %s/%d is past its end (%d)", p.Target, p.Topic, p.Partition, p.End)
			}
			if p.Target >= 0 {
				p.Lag = p.End - p.Target
			}
		}
		if dryRun {
			return nil
		}
		coordinator, err := client.Coordinator(group)
		if err != nil {
			return fmt.Errorf("coordinator of consumer group %s: %w", group, err)
		}
		req := sarama.NewOffsetCommitRequest(client.Config(), group)
		for _, p := range out {
			if p.Target >= 0 {
				req.AddBlock(p.Topic, p.Partition, p.Target, 0, "reset by sagaflow replay")
			}
		}
		resp, err := coordinator.CommitOffset(req)
		if err != nil {
			return fmt.Errorf("commit offsets of consumer group %s: %w", group, err)
		}
		var errs []error
		for topic, parts := range resp.Errors {
			for partition, kerr := range parts {
				if kerr != sarama.ErrNoError {
					errs = append(errs, fmt.Errorf("%s/%d: %w", topic, partition, kerr))
				}
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("commit offsets of consumer group %s: %w", group, errors.Join(errs...))
		}
		return nil
	})
	return out, err
}

// withClient runs fn with a client and an admin on it.
func (c Config) withClient(ctx context.Context, fn func(sarama.Client, sarama.ClusterAdmin) error) error {
	if err := c.Ping(ctx); err != nil {
		return err
	}
	client, err := sarama.NewClient(c.Brokers, c.base())
	if err != nil {
		return fmt.Errorf("connect to Kafka at %s: %w", strings.Join(c.Brokers, ","), err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		client.Close()
		return fmt.Errorf("connect to Kafka at %s: %w", strings.Join(c.Brokers, ","), err)
	}
	defer admin.Close() // closes the client too
	return fn(client, admin)
}

// positions reads group's committed offsets and the end offsets of every
// partition of topics.
func positions(ctx context.Context, client sarama.Client, admin sarama.ClusterAdmin, group string, topics []string) ([]PartitionPosition, error) {
	parts := make(map[string][]int32, len(topics))
	for _, t := range topics {
		ps, err := client.Partitions(t)
		if err != nil {
			return nil, fmt.Errorf("partitions of %s: %w", t, err)
		}
		parts[t] = ps
	}
	committed, err := admin.ListConsumerGroupOffsets(group, parts)
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		committed, err = nil, nil // a group that never committed (kfake says so)
	}
	if err != nil {
		return nil, fmt.Errorf("offsets of consumer group %s: %w", group, err)
	}
	var out []PartitionPosition
	for _, t := range topics {
		ps := slices.Clone(parts[t])
		slices.Sort(ps)
		for _, p := range ps {
			pos := PartitionPosition{Topic: t, Partition: p, Committed: -1, Target: -1}
			if committed != nil {
				if b := committed.GetBlock(t, p); b != nil && b.Err == sarama.ErrNoError {
					pos.Committed = b.Offset
				}
			}
			if pos.End, err = OffsetWithRetry(ctx, client, t, p, sarama.OffsetNewest); err != nil {
				return nil, fmt.Errorf("end offset of %s/%d: %w", t, p, err)
			}
			from := pos.Committed
			if from < 0 {
				if from, err = OffsetWithRetry(ctx, client, t, p, sarama.OffsetOldest); err != nil {
					return nil, fmt.Errorf("start offset of %s/%d: %w", t, p, err)
				}
			}
			pos.Lag = pos.End - from
			out = append(out, pos)
		}
	}
	return out, nil
}
