package kafkax

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
)

// TopicSettings are the settings EnsureTopics creates topics with, and
// checks existing topics against, together with what they were derived
// from, so that the composition root can log the decision at start-up
// (TopicSettings implements slog.LogValuer and fmt.Stringer).
type TopicSettings struct {
	// Partitions of each topic (Config.Partitions, or DefaultPartitions).
	Partitions int32
	// DefaultPartitions is true when Partitions is DefaultPartitions
	// because Config.Partitions was 0. An existing topic with fewer
	// partitions is then kept as it is and the difference is harmless: it
	// was created under an older default (8), and adding partitions to a
	// keyed topic would move keys to other partitions, out of their order.
	DefaultPartitions bool
	// ReplicationFactor of each topic: Config.ReplicationFactor, or
	// DefaultReplicationFactor(Brokers) when that is 0.
	ReplicationFactor int16
	// MinInsyncReplicas is set on each created topic:
	// MinInsyncReplicas(ReplicationFactor).
	MinInsyncReplicas int
	// Brokers is how many brokers the cluster reported (DescribeCluster)
	// when the settings were decided.
	Brokers int
	// DefaultReplication is true when ReplicationFactor was derived from
	// Brokers because Config.ReplicationFactor was 0.
	DefaultReplication bool
}

// String describes the settings in one line, for logs and messages.
func (s TopicSettings) String() string {
	rf := fmt.Sprintf("replication factor %d", s.ReplicationFactor)
	if s.DefaultReplication {
		rf += fmt.Sprintf(" (default: min(3, %d brokers))", s.Brokers)
	}
	return fmt.Sprintf("%d partitions, %s, min.insync.replicas %d; the cluster has %d brokers",
		s.Partitions, rf, s.MinInsyncReplicas, s.Brokers)
}

// LogValue logs the settings as a group of attributes.
func (s TopicSettings) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("partitions", int(s.Partitions)),
		slog.Bool("partitions_default", s.DefaultPartitions),
		slog.Int("replication_factor", int(s.ReplicationFactor)),
		slog.Bool("replication_default", s.DefaultReplication),
		slog.Int("min_insync_replicas", s.MinInsyncReplicas),
		slog.Int("brokers", s.Brokers),
	)
}

// DefaultReplicationFactor is the replication factor of Config's 0: three
// copies of each message where the cluster has three brokers or more (one
// broker can be down or restarting while writes go on and still leave two
// copies), otherwise as many as it has brokers, so that a one- or
// two-broker development cluster still works.
func DefaultReplicationFactor(brokers int) int16 {
	return int16(max(1, min(3, brokers)))
}

// MinInsyncReplicas is the min.insync.replicas EnsureTopics sets on every
// topic it creates: max(1, rf-1). With acks=all a write is acknowledged
// once that many replicas have it, so every replica but one may be lost
// without losing it, and one replica may be down without stopping writes.
// It is set on the topic itself so that a broker-wide default (Kafka's is
// 1) does not decide it.
func MinInsyncReplicas(rf int16) int {
	return max(1, int(rf)-1)
}

// TopicSettings decides the settings EnsureTopics would create topics with
// on the cluster as it is now, and reports them with the broker count they
// were derived from. Note that DescribeCluster counts the brokers that are
// registered: once the cluster has fenced a broker that is down (after
// broker.session.timeout.ms), a three-broker cluster counts two, the
// default replication factor is 2, and EnsureTopics reports the existing
// RF 3 topics as differing. Pass an explicit replication factor where that
// matters.
func (c Config) TopicSettings(ctx context.Context) (TopicSettings, error) {
	var s TopicSettings
	err := c.withAdmin(ctx, "decide topic settings", func(admin sarama.ClusterAdmin) error {
		var brokers []*sarama.Broker
		var err error
		s, brokers, err = c.settings(admin)
		for _, b := range brokers {
			_ = b.Close()
		}
		return err
	})
	return s, err
}

// adminRetry bounds how long withAdmin retries a cluster it cannot reach.
// It exceeds broker.session.timeout.ms (9 s by default): a broker that died
// stays listed in the cluster metadata until then, and sarama may send an
// admin request to it (in KRaft mode the "controller" a client is given is
// any broker).
const adminRetry = 30 * time.Second

// withAdmin pings the cluster, connects a ClusterAdmin to it (to do what)
// and runs fn with it. While fn fails because a broker cannot be reached it
// runs fn again on a fresh connection, for up to adminRetry: fn must be
// safe to repeat.
func (c Config) withAdmin(ctx context.Context, what string, fn func(admin sarama.ClusterAdmin) error) error {
	if err := c.Ping(ctx); err != nil {
		return err
	}
	deadline := time.Now().Add(adminRetry)
	for {
		err := func() error {
			admin, err := sarama.NewClusterAdmin(c.Brokers, c.base())
			if err != nil {
				return fmt.Errorf("connect to Kafka at %s to %s: %w", strings.Join(c.Brokers, ","), what, err)
			}
			defer admin.Close()
			return fn(admin)
		}()
		if err == nil || !unreachable(err) || time.Now().After(deadline) {
			return err
		}
		c.logger().Debug("kafka admin request failed, retrying", "to", what, "err", err)
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// unreachable reports whether err says that a broker could not be reached
// or was not the one to ask, which another attempt may not meet.
func unreachable(err error) bool {
	var nerr net.Error
	return errors.As(err, &nerr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, sarama.ErrOutOfBrokers) || errors.Is(err, sarama.ErrNotConnected) ||
		errors.Is(err, sarama.ErrNotController) || errors.Is(err, sarama.ErrBrokerNotAvailable)
}

// settings decides the topic settings from the cluster's brokers, which it
// returns too (not connected; the caller closes any it opens).
func (c Config) settings(admin sarama.ClusterAdmin) (TopicSettings, []*sarama.Broker, error) {
	brokers, _, err := admin.DescribeCluster()
	if err != nil {
		return TopicSettings{}, nil, fmt.Errorf("describe the Kafka cluster at %s: %w", strings.Join(c.Brokers, ","), err)
	}
	if len(brokers) == 0 {
		return TopicSettings{}, nil, fmt.Errorf("the Kafka cluster at %s reports no brokers", strings.Join(c.Brokers, ","))
	}
	s := TopicSettings{Partitions: c.Partitions, ReplicationFactor: c.ReplicationFactor, Brokers: len(brokers)}
	if s.Partitions <= 0 {
		s.Partitions = DefaultPartitions
		s.DefaultPartitions = true
	}
	if s.ReplicationFactor <= 0 {
		s.ReplicationFactor = DefaultReplicationFactor(len(brokers))
		s.DefaultReplication = true
	}
	s.MinInsyncReplicas = MinInsyncReplicas(s.ReplicationFactor)
	return s, brokers, nil
}

// TopicState is what the cluster says of an existing topic.
type TopicState struct {
	Partitions int32
	// ReplicationFactor is the replica count of the topic's partitions
	// (the smallest, should a reassignment leave them unequal).
	ReplicationFactor int16
	// MinInsyncReplicas is the topic's effective min.insync.replicas (set
	// on the topic or inherited from the broker).
	MinInsyncReplicas int
}

// Diff lists how an existing topic differs from the settings, in the
// order partitions, replication factor, min.insync.replicas.
//
// With the default replication factor, a topic with more replicas than the
// cluster's current size gives, up to 3, is what the default made while
// the cluster had more brokers: a broker is down (or was removed), and the
// topic still has the copies the default wants. That difference is
// harmless, and the topic's min.insync.replicas is compared with its own
// replication factor's, so that StrictTopics does not keep roles from
// restarting during a broker outage.
func (s TopicSettings) Diff(topic string, have TopicState) []TopicDiff {
	var out []TopicDiff
	if have.Partitions != s.Partitions {
		out = append(out, TopicDiff{Topic: topic, Setting: SettingPartitions, Have: int(have.Partitions), Want: int(s.Partitions),
			Harmless: have.Partitions > s.Partitions || s.DefaultPartitions})
	}
	wantISR := s.MinInsyncReplicas
	if have.ReplicationFactor != s.ReplicationFactor {
		harmless := s.DefaultReplication && have.ReplicationFactor > s.ReplicationFactor &&
			have.ReplicationFactor <= DefaultReplicationFactor(math.MaxInt)
		if harmless {
			wantISR = MinInsyncReplicas(have.ReplicationFactor)
		}
		out = append(out, TopicDiff{Topic: topic, Setting: SettingReplicationFactor, Have: int(have.ReplicationFactor), Want: int(s.ReplicationFactor),
			Harmless: harmless})
	}
	if have.MinInsyncReplicas != wantISR {
		out = append(out, TopicDiff{Topic: topic, Setting: SettingMinInsyncReplicas, Have: have.MinInsyncReplicas, Want: wantISR})
	}
	return out
}

// Retention of the topics EnsureTopics creates.
const (
	CreatedTopicRetention = 3 * 24 * time.Hour
	CreatedTopicSegment   = time.Hour
)

// The settings a TopicDiff names.
const (
	SettingPartitions        = "partitions"
	SettingReplicationFactor = "replication factor"
	SettingMinInsyncReplicas = "min.insync.replicas"
)

// TopicDiff is one setting in which an existing topic differs from what
// EnsureTopics would create it with. EnsureTopics never changes an existing
// topic: adding partitions moves keys (and so a saga's messages) to other
// partitions, and replication changes are reassignments for an operator.
type TopicDiff struct {
	Topic string
	// Setting is SettingPartitions, SettingReplicationFactor or
	// SettingMinInsyncReplicas.
	Setting string
	Have    int
	Want    int
	// Harmless is true for a difference that costs nothing: more
	// partitions than configured, fewer than a default (not an explicit
	// setting) asks for, or more replicas than the default
	// replication factor of a cluster that lost brokers (see
	// TopicSettings.Diff). It is reported, and StrictTopics does not
	// refuse it.
	Harmless bool
}

// String says what differs and why it matters, e.g. "topic X has 4
// partitions, want 16 (fewer partitions mean less parallelism: …)".
func (d TopicDiff) String() string {
	var what, why string
	switch d.Setting {
	case SettingPartitions:
		what = fmt.Sprintf("topic %s has %d partitions, want %d", d.Topic, d.Have, d.Want)
		switch {
		case d.Have < d.Want && d.Harmless:
			why = "kept: only the default asks for more, and adding partitions would move keys away from their older messages; harmless"
		case d.Have < d.Want:
			why = "fewer partitions mean less parallelism: a partition is consumed by one group member at a time"
		default:
			why = "more partitions than configured are harmless"
		}
	case SettingReplicationFactor:
		what = fmt.Sprintf("topic %s has replication factor %d, want %d", d.Topic, d.Have, d.Want)
		switch {
		case d.Have < d.Want:
			why = "fewer copies of each message survive fewer broker failures"
		case d.Harmless:
			why = "the default for the brokers the cluster has now is lower: is a broker down? harmless"
		default:
			why = "more copies than configured"
		}
	case SettingMinInsyncReplicas:
		what = fmt.Sprintf("topic %s has min.insync.replicas %d, want %d", d.Topic, d.Have, d.Want)
		if d.Have < d.Want {
			why = "an acknowledged write may be on fewer brokers, and lost with them"
		} else {
			why = fmt.Sprintf("writes stop as soon as fewer than %d replicas are in sync", d.Have)
		}
	default:
		what = fmt.Sprintf("topic %s has %s %d, want %d", d.Topic, d.Setting, d.Have, d.Want)
	}
	if why == "" {
		return what
	}
	return what + " (" + why + ")"
}

// TopicDiffError is EnsureTopics' refusal under Config.StrictTopics: the
// differences that are not harmless.
type TopicDiffError struct{ Diffs []TopicDiff }

func (e *TopicDiffError) Error() string {
	msgs := make([]string, len(e.Diffs))
	for i, d := range e.Diffs {
		msgs[i] = d.String()
	}
	return "existing Kafka topics differ from the configured settings (strict topics refuse them; change the topics or the settings): " +
		strings.Join(msgs, "; ")
}

// TopicReport is what EnsureTopicsReport decided, did and found.
type TopicReport struct {
	// Settings the topics were created with and checked against.
	Settings TopicSettings
	// Created lists the topics that did not exist.
	Created []string
	// Diffs lists every difference of the topics that existed, harmless
	// ones included.
	Diffs []TopicDiff
}

// EnsureTopics creates the topics that do not exist yet with the settings
// TopicSettings decides (a broker's auto-created topic has one partition,
// which would serialise all consumers of it, and the broker's replication
// defaults), waits until each partition has a leader, and compares the
// topics that existed with those settings. It logs the settings (Info),
// each difference (Warn) and topics created with a default replication
// factor below 3 (Warn) through Config.Logger; with Config.StrictTopics it
// returns a *TopicDiffError for differences that are not harmless. See
// EnsureTopicsReport for the same without logging.
func (c Config) EnsureTopics(ctx context.Context, topics ...string) error {
	rep, err := c.EnsureTopicsReport(ctx, topics...)
	var derr *TopicDiffError
	if err != nil && !errors.As(err, &derr) {
		return err
	}
	log := c.logger()
	log.Info("kafka topics", "settings", rep.Settings, "created", rep.Created, "existing", len(topics)-len(rep.Created))
	if s := rep.Settings; s.DefaultReplication && s.ReplicationFactor < 3 && len(rep.Created) > 0 {
		// A cluster that is starting registers its brokers one by one:
		// a topic created meanwhile keeps its low replication factor.
		log.Warn(fmt.Sprintf("created topics with replication factor %d because the cluster counts %d brokers now; "+
			"if it has more, set the replication factor explicitly", s.ReplicationFactor, s.Brokers), "created", rep.Created)
	}
	for _, d := range rep.Diffs {
		if derr == nil || d.Harmless {
			log.Warn(d.String(), "topic", d.Topic, "setting", d.Setting, "have", d.Have, "want", d.Want)
		}
	}
	return err
}

// EnsureTopicsReport is EnsureTopics without the logging: it returns what
// it decided, created and found, for a caller that logs or shows it itself.
// The report is filled as far as it got when it returns an error; under
// StrictTopics the error is a *TopicDiffError when only the comparison
// failed.
//
// Topics it creates keep messages CreatedTopicRetention and roll segments
// every CreatedTopicSegment: together well inside the inboxes' default
// deduplication window (outbox.DefaultInboxRetention), which must outlast
// anything a consumer could be handed again (see CheckInboxRetention). The
// broker's defaults (7 days each) would need a 14-day window.
func (c Config) EnsureTopicsReport(ctx context.Context, topics ...string) (TopicReport, error) {
	var rep TopicReport
	// Topics an attempt that failed part-way created: the next one finds
	// them existing.
	created := map[string]bool{}
	err := c.withAdmin(ctx, "create topics", func(admin sarama.ClusterAdmin) error {
		s, brokers, err := c.settings(admin)
		if err != nil {
			return err
		}
		rep = TopicReport{Settings: s}
		minISR := strconv.Itoa(s.MinInsyncReplicas)
		retention := strconv.FormatInt(CreatedTopicRetention.Milliseconds(), 10)
		segment := strconv.FormatInt(CreatedTopicSegment.Milliseconds(), 10)
		detail := &sarama.TopicDetail{NumPartitions: s.Partitions, ReplicationFactor: s.ReplicationFactor,
			ConfigEntries: map[string]*string{"min.insync.replicas": &minISR, "retention.ms": &retention, "segment.ms": &segment}}
		var existing []string
		for _, t := range topics {
			err := admin.CreateTopic(t, detail, false)
			switch {
			case errors.Is(err, sarama.ErrTopicAlreadyExists) && !created[t]:
				existing = append(existing, t)
				continue
			case errors.Is(err, sarama.ErrTopicAlreadyExists):
			case errors.Is(err, sarama.ErrInvalidReplicationFactor):
				return fmt.Errorf("create Kafka topic %s with replication factor %d: the cluster has %d brokers: %w", t, s.ReplicationFactor, s.Brokers, err)
			case err != nil:
				return fmt.Errorf("create Kafka topic %s: %w", t, err)
			}
			created[t] = true
			rep.Created = append(rep.Created, t)
		}
		if err := waitLeaders(ctx, c.base(), brokers, topics, 30*time.Second); err != nil {
			return err
		}
		rep.Diffs, err = compareTopics(admin, s, existing)
		return err
	})
	if err != nil {
		return rep, err
	}
	if c.StrictTopics {
		var refused []TopicDiff
		for _, d := range rep.Diffs {
			if !d.Harmless {
				refused = append(refused, d)
			}
		}
		if len(refused) > 0 {
			return rep, &TopicDiffError{Diffs: refused}
		}
	}
	return rep, nil
}

// compareTopics lists how the existing topics differ from s: partitions and
// replicas from their metadata, min.insync.replicas from their
// configuration.
func compareTopics(admin sarama.ClusterAdmin, s TopicSettings, topics []string) ([]TopicDiff, error) {
	if len(topics) == 0 {
		return nil, nil
	}
	md, err := admin.DescribeTopics(topics)
	if err != nil {
		return nil, fmt.Errorf("describe topics %v: %w", topics, err)
	}
	states := make(map[string]*TopicState, len(md))
	for _, tm := range md {
		if tm.Err != sarama.ErrNoError {
			return nil, fmt.Errorf("describe topic %s: %w", tm.Name, tm.Err)
		}
		st := &TopicState{Partitions: int32(len(tm.Partitions)), ReplicationFactor: -1}
		for _, p := range tm.Partitions {
			if n := int16(len(p.Replicas)); st.ReplicationFactor < 0 || n < st.ReplicationFactor {
				st.ReplicationFactor = n
			}
		}
		states[tm.Name] = st
	}
	configs, err := describeTopicConfigs(admin, topics, "min.insync.replicas")
	if err != nil {
		return nil, err
	}
	var diffs []TopicDiff
	for _, t := range topics {
		st := states[t]
		if st == nil {
			return nil, fmt.Errorf("describe topic %s: the broker did not describe it", t)
		}
		v, ok := configs[t]["min.insync.replicas"]
		if !ok {
			return nil, fmt.Errorf("describe configs of topic %s: the broker reports no min.insync.replicas", t)
		}
		if st.MinInsyncReplicas, err = strconv.Atoi(v); err != nil {
			return nil, fmt.Errorf("min.insync.replicas of topic %s: %w", t, err)
		}
		diffs = append(diffs, s.Diff(t, *st)...)
	}
	return diffs, nil
}

// describeTopicConfigs reads the named configuration entries of topics in
// one request: topic → name → effective value.
func describeTopicConfigs(admin sarama.ClusterAdmin, topics []string, names ...string) (map[string]map[string]string, error) {
	resources := make([]*sarama.ConfigResource, len(topics))
	for i, t := range topics {
		resources[i] = &sarama.ConfigResource{Type: sarama.TopicResource, Name: t, ConfigNames: names}
	}
	results, err := admin.DescribeConfigs(resources, sarama.DescribeConfigsOptions{})
	if err != nil {
		return nil, fmt.Errorf("describe configs of topics %v: %w", topics, err)
	}
	out := make(map[string]map[string]string, len(topics))
	for _, r := range results {
		if r.Type != sarama.TopicResource {
			continue
		}
		if r.ErrorCode != sarama.ErrNoError {
			msg := r.ErrorMsg
			if msg != "" {
				msg = ": " + msg
			}
			return nil, fmt.Errorf("describe configs of topic %s%s: %w", r.Name, msg, r.ErrorCode)
		}
		m := make(map[string]string, len(r.Configs))
		for _, e := range r.Configs {
			m[e.Name] = e.Value
		}
		out[r.Name] = m
	}
	for _, t := range topics {
		if _, ok := out[t]; !ok {
			return nil, fmt.Errorf("describe configs of topic %s: the broker did not answer for it", t)
		}
	}
	return out, nil
}

func (c Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.Default()
	}
	return c.Logger
}
