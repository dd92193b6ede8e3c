package kafkax

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// The inbox of each consumer remembers the message ids it applied for a
// window (roles.Config.InboxRetention) and purges older rows. A message the
// broker redelivers after its row was purged is applied again. Kafka
// redelivers a message as long as it keeps it: a consumer group whose
// offsets are reset, or expire (offsets.retention.minutes, 7 days by
// default, after the group became empty) and restart at the oldest offset
// (ConsumerConfig), reads everything the topic still holds. So the inbox
// window must exceed the longest a topic keeps a message: its retention.ms
// plus its segment.ms, since the broker deletes whole segments, once their
// newest message is older than retention.ms, and rolls a segment at the
// latest segment.ms after its first message. (The broker looks for
// deletable segments every log.retention.check.interval.ms, 5 minutes by
// default, and judges a segment's age by the newest message timestamp in
// it, which a producer's clock sets: leave a margin.)

// TopicRetention is how long a topic may keep a message, from its
// configuration.
type TopicRetention struct {
	Topic string
	// Retention is retention.ms, or -1 when retention.ms is -1 (no time
	// limit) or longer than a time.Duration holds.
	Retention time.Duration
	// Segment is segment.ms, or -1 when it is longer than a time.Duration
	// holds.
	Segment time.Duration
	// Infinite is true when the topic may keep a message for ever:
	// retention.ms -1, a compacted topic (cleanup.policy compact without
	// delete keeps the newest message of each key whatever its age), or a
	// window beyond what a time.Duration holds (about 292 years).
	Infinite bool
	// Why names the setting that makes the retention infinite.
	Why string
}

// Window is the longest the topic may keep a message: Retention + Segment,
// or math.MaxInt64 when Infinite.
func (r TopicRetention) Window() time.Duration {
	if r.Infinite {
		return math.MaxInt64
	}
	return r.Retention + r.Segment
}

// maxMillis is the longest millisecond count a time.Duration holds.
const maxMillis = math.MaxInt64 / int64(time.Millisecond)

// ParseTopicRetention reads a topic's retention from its configuration
// entries (name → effective value, as DescribeConfigs returns them):
// retention.ms, segment.ms and cleanup.policy (absent: delete).
func ParseTopicRetention(topic string, configs map[string]string) (TopicRetention, error) {
	r := TopicRetention{Topic: topic}
	ms := func(name string) (int64, error) {
		v, ok := configs[name]
		if !ok {
			return 0, fmt.Errorf("topic %s: the broker reports no %s", topic, name)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("topic %s: %s %q is not a number of milliseconds: %w", topic, name, v, err)
		}
		return n, nil
	}
	retention, err := ms("retention.ms")
	if err != nil {
		return r, err
	}
	segment, err := ms("segment.ms")
	if err != nil {
		return r, err
	}
	switch {
	case retention == -1 || retention > maxMillis:
		r.Retention, r.Infinite, r.Why = -1, true, fmt.Sprintf("retention.ms %d", retention)
	case retention < 0:
		return r, fmt.Errorf("topic %s: retention.ms %q is neither -1 nor a number of milliseconds", topic, configs["retention.ms"])
	default:
		r.Retention = time.Duration(retention) * time.Millisecond
	}
	switch {
	case segment < 0:
		return r, fmt.Errorf("topic %s: segment.ms %q is negative", topic, configs["segment.ms"])
	case segment > maxMillis:
		r.Segment = -1
		if !r.Infinite {
			r.Infinite, r.Why = true, fmt.Sprintf("segment.ms %d", segment)
		}
	default:
		r.Segment = time.Duration(segment) * time.Millisecond
	}
	if !r.Infinite && r.Retention > math.MaxInt64-r.Segment {
		r.Infinite, r.Why = true, fmt.Sprintf("retention.ms %d + segment.ms %d", retention, segment)
	}
	if policy, ok := configs["cleanup.policy"]; ok && !r.Infinite {
		compact, del := false, false
		for _, p := range strings.Split(policy, ",") {
			switch strings.TrimSpace(p) {
			case "compact":
				compact = true
			case "delete":
				del = true
			}
		}
		if compact && !del {
			r.Infinite, r.Why = true, "cleanup.policy "+policy
		}
	}
	return r, nil
}

// CheckRetention returns an error naming every topic a message of which the
// inbox could forget before the topic does: the inbox window inbox must
// exceed each topic's retention.ms + segment.ms. A topic that keeps
// messages for ever (Infinite) is refused unless allowInfinite: no window
// covers it, and a group whose offsets are reset or expire would apply its
// oldest messages again. inbox is the effective window (the default
// applied), and must be positive.
func CheckRetention(inbox time.Duration, allowInfinite bool, rs ...TopicRetention) error {
	if inbox <= 0 {
		return fmt.Errorf("inbox retention %s is not positive", fmtDuration(inbox))
	}
	var errs []error
	for _, r := range rs {
		switch {
		case r.Infinite && allowInfinite:
		case r.Infinite:
			errs = append(errs, fmt.Errorf("topic %s keeps messages for ever (%s): no inbox retention covers it, and a consumer group "+
				"whose offsets are reset or expire would apply its old messages again; give the topic a finite retention.ms "+
				"(and cleanup.policy delete), or pass --allow-infinite-retention to accept that", r.Topic, r.Why))
		case inbox <= r.Window():
			cmp := "is shorter than"
			if inbox == r.Window() {
				cmp = "is not longer than"
			}
			errs = append(errs, fmt.Errorf("inbox retention %s %s topic %s's retention.ms %s + segment.ms %s; "+
				"raise --inbox-retention above %s or lower the topic's retention",
				fmtDuration(inbox), cmp, r.Topic, fmtDuration(r.Retention), fmtDuration(r.Segment), fmtDuration(r.Window())))
		}
	}
	return errors.Join(errs...)
}

// fmtDuration writes whole hours and minutes without the zero parts
// time.Duration.String adds: 168h, 1h10m, 10m.
func fmtDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// TopicRetentions reads the retention of each topic from the cluster
// (DescribeConfigs: the effective retention.ms, segment.ms and
// cleanup.policy, whether set on the topic or inherited from the broker), in
// the order of topics. A topic that does not exist is an error.
func (c Config) TopicRetentions(ctx context.Context, topics ...string) ([]TopicRetention, error) {
	if len(topics) == 0 {
		return nil, nil
	}
	var configs map[string]map[string]string
	err := c.withAdmin(ctx, "read topic retention", func(admin sarama.ClusterAdmin) error {
		var err error
		configs, err = describeTopicConfigs(admin, topics, "retention.ms", "segment.ms", "cleanup.policy")
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]TopicRetention, len(topics))
	for i, t := range topics {
		if out[i], err = ParseTopicRetention(t, configs[t]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// MaxRetention returns the retention of the topic that may keep a message
// longest (an Infinite one first); the zero TopicRetention for no topics.
func (c Config) MaxRetention(ctx context.Context, topics ...string) (TopicRetention, error) {
	rs, err := c.TopicRetentions(ctx, topics...)
	if err != nil {
		return TopicRetention{}, err
	}
	var longest TopicRetention
	for i, r := range rs {
		if i == 0 || r.Window() > longest.Window() {
			longest = r
		}
	}
	return longest, nil
}

// CheckInboxRetention reads the retention of topics, the topics consumed
// through an inbox (Topics.Consumed), and checks the inbox window inbox
// against it with CheckRetention, allowing infinite retention when
// Config.AllowInfiniteRetention is set. Call it after EnsureTopics: a
// broker may not know a topic yet for a moment after its creation.
func (c Config) CheckInboxRetention(ctx context.Context, inbox time.Duration, topics ...string) error {
	rs, err := c.TopicRetentions(ctx, topics...)
	if err != nil {
		return err
	}
	return CheckRetention(inbox, c.AllowInfiniteRetention, rs...)
}
