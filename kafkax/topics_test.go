package kafkax_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
)

// fakeCluster starts a kfake cluster of brokers brokers for t alone: the
// shared test cluster (kfake or the real one of KAFKA_BROKERS) has one
// broker, too few to see a replication factor chosen from the cluster size.
func fakeCluster(t *testing.T, brokers int) kafkax.Config {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(brokers), kfake.ClusterID("kafkax-test"))
	if err != nil {
		t.Fatalf("start a %d-broker kfake cluster: %v", brokers, err)
	}
	t.Cleanup(c.Close)
	return kafkax.Config{Brokers: c.ListenAddrs(), Partitions: 4, ClientID: "sagaflow-test"}
}

func newAdmin(t *testing.T, cfg kafkax.Config) sarama.ClusterAdmin {
	t.Helper()
	sc := sarama.NewConfig()
	sc.Version = kafkax.Version
	admin, err := sarama.NewClusterAdmin(cfg.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	return admin
}

// topicState is what the broker says of a topic.
type topicState struct {
	partitions   int
	rf           int // replicas of the topic's partitions (the fewest)
	minISR       string
	minISRSource sarama.ConfigSource
}

func describeTopic(t *testing.T, cfg kafkax.Config, topic string) topicState {
	t.Helper()
	admin := newAdmin(t, cfg)
	md, err := admin.DescribeTopics([]string{topic})
	if err != nil {
		t.Fatalf("describe topic %s: %v", topic, err)
	}
	if len(md) != 1 || md[0].Err != sarama.ErrNoError {
		t.Fatalf("describe topic %s: %+v", topic, md)
	}
	st := topicState{partitions: len(md[0].Partitions), rf: -1}
	for _, p := range md[0].Partitions {
		if st.rf < 0 || len(p.Replicas) < st.rf {
			st.rf = len(p.Replicas)
		}
	}
	results, err := admin.DescribeConfigs([]*sarama.ConfigResource{{Type: sarama.TopicResource, Name: topic}}, sarama.DescribeConfigsOptions{})
	if err != nil || len(results) != 1 || results[0].ErrorCode != sarama.ErrNoError {
		t.Fatalf("describe configs of %s: %v %+v", topic, err, results)
	}
	for _, e := range results[0].Configs {
		if e.Name == "min.insync.replicas" {
			st.minISR, st.minISRSource = e.Value, e.Source
		}
	}
	return st
}

// createTopic creates a topic behind EnsureTopics' back, as an operator or
// an older Sagaflow would have.
func createTopic(t *testing.T, cfg kafkax.Config, topic string, parts int32, rf int16, configs map[string]string) {
	t.Helper()
	detail := &sarama.TopicDetail{NumPartitions: parts, ReplicationFactor: rf, ConfigEntries: map[string]*string{}}
	for k, v := range configs {
		detail.ConfigEntries[k] = &v
	}
	if err := newAdmin(t, cfg).CreateTopic(topic, detail, false); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	// A real broker answers "unknown topic" for a moment after creating
	// one: wait, as EnsureTopics does, until every broker knows it.
	cfg.StrictTopics = false
	if _, err := cfg.EnsureTopicsReport(timeout(t), topic); err != nil {
		t.Fatalf("wait for topic %s: %v", topic, err)
	}
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Replication factor 0 is the default: three copies where the cluster has
// three brokers or more, otherwise one per broker; and every created topic
// gets min.insync.replicas = max(1, RF-1) set on the topic itself, not only
// at RF 3. Before: RF 0 created RF 1 topics whatever the cluster size, and
// min.insync.replicas was set only from RF 3 on.
func TestEnsureTopicsReplicationDefault(t *testing.T) {
	t.Parallel()
	cases := []struct {
		brokers    int
		rf         int16
		wantRF     int
		wantMinISR string
	}{
		{brokers: 1, rf: 0, wantRF: 1, wantMinISR: "1"},
		{brokers: 2, rf: 0, wantRF: 2, wantMinISR: "1"},
		{brokers: 3, rf: 0, wantRF: 3, wantMinISR: "2"},
		{brokers: 4, rf: 0, wantRF: 3, wantMinISR: "2"},
		{brokers: 3, rf: 1, wantRF: 1, wantMinISR: "1"},
		{brokers: 3, rf: 2, wantRF: 2, wantMinISR: "1"},
		{brokers: 4, rf: 4, wantRF: 4, wantMinISR: "3"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("brokers=%d,rf=%d", tc.brokers, tc.rf), func(t *testing.T) {
			t.Parallel()
			cfg := fakeCluster(t, tc.brokers)
			cfg.ReplicationFactor = tc.rf
			var logged bytes.Buffer
			cfg.Logger = slog.New(slog.NewTextHandler(&logged, nil))
			if err := cfg.EnsureTopics(timeout(t), "t1"); err != nil {
				t.Fatal(err)
			}
			// A default below 3 may come from a cluster still starting:
			// EnsureTopics warns.
			lowDefault := tc.rf == 0 && tc.wantRF < 3
			if warned := strings.Contains(logged.String(), "level=WARN msg=\"created topics with replication factor"); warned != lowDefault {
				t.Errorf("warned of a low default replication factor: %v, want %v:\n%s", warned, lowDefault, logged.String())
			}
			st := describeTopic(t, cfg, "t1")
			if st.rf != tc.wantRF {
				t.Errorf("replication factor %d, want %d", st.rf, tc.wantRF)
			}
			if st.minISR != tc.wantMinISR || st.minISRSource != sarama.SourceTopic {
				t.Errorf("min.insync.replicas %q (source %v), want %q set on the topic", st.minISR, st.minISRSource, tc.wantMinISR)
			}
			if st.partitions != 4 {
				t.Errorf("%d partitions, want 4", st.partitions)
			}
		})
	}
}

// TopicSettings reports the decision EnsureTopics makes, for the start-up
// log. Before: the function did not exist (stub: zero settings).
func TestTopicSettings(t *testing.T) {
	t.Parallel()
	cases := []struct {
		brokers int
		rf      int16
		want    kafkax.TopicSettings
	}{
		{1, 0, kafkax.TopicSettings{Partitions: 4, ReplicationFactor: 1, MinInsyncReplicas: 1, Brokers: 1, DefaultReplication: true}},
		{2, 0, kafkax.TopicSettings{Partitions: 4, ReplicationFactor: 2, MinInsyncReplicas: 1, Brokers: 2, DefaultReplication: true}},
		{5, 0, kafkax.TopicSettings{Partitions: 4, ReplicationFactor: 3, MinInsyncReplicas: 2, Brokers: 5, DefaultReplication: true}},
		{3, 2, kafkax.TopicSettings{Partitions: 4, ReplicationFactor: 2, MinInsyncReplicas: 1, Brokers: 3}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("brokers=%d,rf=%d", tc.brokers, tc.rf), func(t *testing.T) {
			t.Parallel()
			cfg := fakeCluster(t, tc.brokers)
			cfg.ReplicationFactor = tc.rf
			got, err := cfg.TopicSettings(timeout(t))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("settings %+v, want %+v", got, tc.want)
			}
			if s := got.String(); !strings.Contains(s, "replication factor "+strconv.Itoa(int(tc.want.ReplicationFactor))) {
				t.Errorf("String() %q does not name the replication factor", s)
			}
		})
	}
}

// On the shared test cluster (kfake, or the real broker of KAFKA_BROKERS)
// the default replication factor follows the broker count the cluster
// reports, and the created topic carries min.insync.replicas.
func TestEnsureTopicsReplicationDefaultSharedCluster(t *testing.T) {
	t.Parallel()
	cfg := testenv.Kafka(t)
	cfg.ReplicationFactor = 0
	ctx := timeout(t)
	brokers, _, err := newAdmin(t, cfg).DescribeCluster()
	if err != nil {
		t.Fatal(err)
	}
	wantRF := min(3, len(brokers))
	topic := testenv.Name(t, "rf")
	rep, err := cfg.EnsureTopicsReport(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Settings.Brokers != len(brokers) || int(rep.Settings.ReplicationFactor) != wantRF {
		t.Errorf("settings %+v, want %d brokers and RF %d", rep.Settings, len(brokers), wantRF)
	}
	st := describeTopic(t, cfg, topic)
	if st.rf != wantRF || st.minISR != strconv.Itoa(max(1, wantRF-1)) || st.minISRSource != sarama.SourceTopic {
		t.Errorf("topic %+v, want RF %d and min.insync.replicas %d set on the topic", st, wantRF, max(1, wantRF-1))
	}
}

// EnsureTopics compares existing topics with what it would create them
// with: by default it reports the differences (in its report and as
// warnings in its log) and goes on; with StrictTopics it refuses, naming the
// topic and every differing setting. More partitions than configured are
// reported but never refused: they cost nothing. Before: existing topics
// were not looked at.
func TestEnsureTopicsExistingDiffer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		parts    int32
		rf       int16
		configs  map[string]string
		cfgParts int32
		cfgRF    int16
		want     []string // every difference, as reported
		harmless bool     // only harmless differences: strict accepts them too
	}{
		{name: "same", parts: 16, rf: 3, configs: map[string]string{"min.insync.replicas": "2"}, cfgParts: 16},
		{name: "fewer partitions", parts: 4, rf: 3, configs: map[string]string{"min.insync.replicas": "2"}, cfgParts: 16,
			want: []string{"topic %s has 4 partitions, want 16"}},
		{name: "more partitions", parts: 24, rf: 3, configs: map[string]string{"min.insync.replicas": "2"}, cfgParts: 16,
			want: []string{"topic %s has 24 partitions, want 16"}, harmless: true},
		// Created when the default was 8: kept, since adding partitions
		// would move keys; only an explicit count is enforced.
		{name: "fewer partitions than the default", parts: 8, rf: 3, configs: map[string]string{"min.insync.replicas": "2"}, cfgParts: 0,
			want: []string{"topic %s has 8 partitions, want 16 (kept: only the default asks for more"}, harmless: true},
		{name: "replication", parts: 16, rf: 1, cfgParts: 16,
			want: []string{"topic %s has replication factor 1, want 3", "topic %s has min.insync.replicas 1, want 2"}},
		{name: "min.insync.replicas", parts: 16, rf: 3, configs: map[string]string{"min.insync.replicas": "1"}, cfgParts: 16,
			want: []string{"topic %s has min.insync.replicas 1, want 2"}},
		{name: "explicit RF 2", parts: 16, rf: 3, configs: map[string]string{"min.insync.replicas": "2"}, cfgParts: 16, cfgRF: 2,
			want: []string{"topic %s has replication factor 3, want 2", "topic %s has min.insync.replicas 2, want 1"}},
		{name: "everything", parts: 2, rf: 2, cfgParts: 16,
			want: []string{"topic %s has 2 partitions, want 16", "topic %s has replication factor 2, want 3", "topic %s has min.insync.replicas 1, want 2"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			base := fakeCluster(t, 3)
			base.Partitions, base.ReplicationFactor = tc.cfgParts, tc.cfgRF
			createTopic(t, base, "old", tc.parts, tc.rf, tc.configs)
			want := make([]string, len(tc.want))
			for i, w := range tc.want {
				want[i] = fmt.Sprintf(w, "old")
			}

			t.Run("warn", func(t *testing.T) {
				cfg := base
				var logged bytes.Buffer
				cfg.Logger = slog.New(slog.NewTextHandler(&logged, nil))
				rep, err := cfg.EnsureTopicsReport(timeout(t), "old", "new")
				if err != nil {
					t.Fatalf("without StrictTopics: %v", err)
				}
				if len(rep.Created) != 1 || rep.Created[0] != "new" {
					t.Errorf("created %v, want [new]", rep.Created)
				}
				var got []string
				for _, d := range rep.Diffs {
					got = append(got, d.String())
				}
				if !containsEach(got, want) {
					t.Fatalf("differences:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				// EnsureTopics logs them as warnings.
				if err := cfg.EnsureTopics(timeout(t), "old", "new"); err != nil {
					t.Fatal(err)
				}
				// And the decision, for the start-up log.
				if !strings.Contains(logged.String(), "settings.replication_factor="+strconv.Itoa(int(rep.Settings.ReplicationFactor))) {
					t.Errorf("log does not show the settings:\n%s", logged.String())
				}
				for _, w := range want {
					if !strings.Contains(logged.String(), "level=WARN") || !strings.Contains(logged.String(), w) {
						t.Errorf("log does not warn %q:\n%s", w, logged.String())
					}
				}
			})

			t.Run("strict", func(t *testing.T) {
				cfg := base
				cfg.StrictTopics = true
				_, err := cfg.EnsureTopicsReport(timeout(t), "old", "new")
				if len(want) == 0 || tc.harmless {
					if err != nil {
						t.Fatalf("strict refused a topic without (harmful) differences: %v", err)
					}
					return
				}
				var derr *kafkax.TopicDiffError
				if !errors.As(err, &derr) {
					t.Fatalf("strict: error %v, want a *TopicDiffError", err)
				}
				for _, w := range want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				if err := cfg.EnsureTopics(timeout(t), "old"); err == nil {
					t.Error("strict EnsureTopics accepted the differing topic")
				}
			})
		})
	}
}

// The replication factor of 0 and min.insync.replicas, as functions.
// Before: RF 0 meant 1, and min.insync.replicas was 2 from RF 3 on, unset
// below.
func TestDefaultReplicationFactorAndMinISR(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		brokers int
		want    int16
	}{{0, 1}, {1, 1}, {2, 2}, {3, 3}, {4, 3}, {9, 3}} {
		if got := kafkax.DefaultReplicationFactor(tc.brokers); got != tc.want {
			t.Errorf("DefaultReplicationFactor(%d) = %d, want %d", tc.brokers, got, tc.want)
		}
	}
	for _, tc := range []struct {
		rf   int16
		want int
	}{{1, 1}, {2, 1}, {3, 2}, {4, 3}, {5, 4}} {
		if got := kafkax.MinInsyncReplicas(tc.rf); got != tc.want {
			t.Errorf("MinInsyncReplicas(%d) = %d, want %d", tc.rf, got, tc.want)
		}
	}
}

// Diff compares an existing topic with the settings, setting by setting;
// only more partitions than wanted are harmless.
func TestTopicSettingsDiff(t *testing.T) {
	t.Parallel()
	rf3 := kafkax.TopicSettings{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 2, Brokers: 3}
	// A broker of three is down (fenced): the default is RF 2 now.
	degraded := kafkax.TopicSettings{Partitions: 16, ReplicationFactor: 2, MinInsyncReplicas: 1, Brokers: 2, DefaultReplication: true}
	explicit2 := kafkax.TopicSettings{Partitions: 16, ReplicationFactor: 2, MinInsyncReplicas: 1, Brokers: 2}
	defaultParts := kafkax.TopicSettings{Partitions: 16, DefaultPartitions: true, ReplicationFactor: 3, MinInsyncReplicas: 2, Brokers: 3}
	cases := []struct {
		name     string
		settings kafkax.TopicSettings
		have     kafkax.TopicState
		want     []kafkax.TopicDiff
	}{
		{"same", rf3, kafkax.TopicState{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 2}, nil},
		{"fewer partitions", rf3, kafkax.TopicState{Partitions: 4, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingPartitions, Have: 4, Want: 16}}},
		{"more partitions", rf3, kafkax.TopicState{Partitions: 32, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingPartitions, Have: 32, Want: 16, Harmless: true}}},
		{"fewer partitions than the default", defaultParts, kafkax.TopicState{Partitions: 8, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingPartitions, Have: 8, Want: 16, Harmless: true}}},
		{"more partitions than the default", defaultParts, kafkax.TopicState{Partitions: 32, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingPartitions, Have: 32, Want: 16, Harmless: true}}},
		{"all", rf3, kafkax.TopicState{Partitions: 1, ReplicationFactor: 1, MinInsyncReplicas: 1}, []kafkax.TopicDiff{
			{Topic: "x", Setting: kafkax.SettingPartitions, Have: 1, Want: 16},
			{Topic: "x", Setting: kafkax.SettingReplicationFactor, Have: 1, Want: 3},
			{Topic: "x", Setting: kafkax.SettingMinInsyncReplicas, Have: 1, Want: 2}}},
		{"higher min.insync.replicas", rf3, kafkax.TopicState{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 3},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingMinInsyncReplicas, Have: 3, Want: 2}}},
		// The RF 3 topic the default made before the broker went down is
		// fine, and checked against RF 3's min.insync.replicas.
		{"default RF, broker down", degraded, kafkax.TopicState{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingReplicationFactor, Have: 3, Want: 2, Harmless: true}}},
		{"default RF, broker down, min.insync.replicas 1", degraded, kafkax.TopicState{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 1},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingReplicationFactor, Have: 3, Want: 2, Harmless: true},
				{Topic: "x", Setting: kafkax.SettingMinInsyncReplicas, Have: 1, Want: 2}}},
		{"default RF, more than 3", degraded, kafkax.TopicState{Partitions: 16, ReplicationFactor: 4, MinInsyncReplicas: 3},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingReplicationFactor, Have: 4, Want: 2},
				{Topic: "x", Setting: kafkax.SettingMinInsyncReplicas, Have: 3, Want: 1}}},
		{"explicit RF 2", explicit2, kafkax.TopicState{Partitions: 16, ReplicationFactor: 3, MinInsyncReplicas: 2},
			[]kafkax.TopicDiff{{Topic: "x", Setting: kafkax.SettingReplicationFactor, Have: 3, Want: 2},
				{Topic: "x", Setting: kafkax.SettingMinInsyncReplicas, Have: 2, Want: 1}}},
	}
	for _, tc := range cases {
		got := tc.settings.Diff("x", tc.have)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %#v, want %#v", tc.name, got, tc.want)
		}
	}
}

// A replication factor above the broker count fails with the broker count
// in the message. Before: "create Kafka topic t1: kafka server:
// Replication-factor is invalid", without saying why.
func TestEnsureTopicsReplicationAboveBrokers(t *testing.T) {
	t.Parallel()
	cfg := fakeCluster(t, 1)
	cfg.ReplicationFactor = 3
	err := cfg.EnsureTopics(timeout(t), "t1")
	if want := "create Kafka topic t1 with replication factor 3: the cluster has 1 brokers"; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("error %v, want one saying %q", err, want)
	}
}

// The messages say why a difference matters: fewer partitions mean less
// parallelism, more are harmless.
func TestTopicDiffMessages(t *testing.T) {
	t.Parallel()
	cases := []struct {
		d    kafkax.TopicDiff
		want []string
	}{
		{kafkax.TopicDiff{Topic: "x", Setting: "partitions", Have: 4, Want: 16}, []string{"topic x has 4 partitions, want 16", "parallelism"}},
		{kafkax.TopicDiff{Topic: "x", Setting: "partitions", Have: 24, Want: 16, Harmless: true}, []string{"topic x has 24 partitions, want 16", "harmless"}},
		{kafkax.TopicDiff{Topic: "x", Setting: "partitions", Have: 8, Want: 16, Harmless: true}, []string{"topic x has 8 partitions, want 16", "kept", "harmless"}},
		{kafkax.TopicDiff{Topic: "x", Setting: "replication factor", Have: 1, Want: 3}, []string{"topic x has replication factor 1, want 3"}},
		{kafkax.TopicDiff{Topic: "x", Setting: "min.insync.replicas", Have: 1, Want: 2}, []string{"topic x has min.insync.replicas 1, want 2"}},
	}
	for _, tc := range cases {
		got := tc.d.String()
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%+v: %q does not say %q", tc.d, got, w)
			}
		}
	}
}

// The same check on the shared test cluster (kfake, or the real broker of
// KAFKA_BROKERS): a one-broker cluster can still differ in partitions.
func TestEnsureTopicsExistingDifferSharedCluster(t *testing.T) {
	t.Parallel()
	cfg := testenv.Kafka(t)
	cfg.Partitions, cfg.ReplicationFactor = 8, 1
	topic := testenv.Name(t, "old")
	// min.insync.replicas set on the topic: scripts/kafka/kafka gives a
	// three-broker cluster a broker default of 2, which differs from RF 1's.
	createTopic(t, cfg, topic, 4, 1, map[string]string{"min.insync.replicas": "1"})
	rep, err := cfg.EnsureTopicsReport(timeout(t), topic)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("topic %s has 4 partitions, want 8", topic)
	if len(rep.Diffs) != 1 || !strings.Contains(rep.Diffs[0].String(), want) {
		t.Fatalf("differences %v, want one: %s", rep.Diffs, want)
	}
	cfg.StrictTopics = true
	if err := cfg.EnsureTopics(timeout(t), topic); err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("strict: error %v, want one saying %q", err, want)
	}
}

// containsEach reports whether got has as many lines as want and each line
// of want is part of a line of got of its own.
func containsEach(got, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	used := make([]bool, len(got))
	for _, w := range want {
		found := false
		for i, g := range got {
			if !used[i] && strings.Contains(g, w) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
