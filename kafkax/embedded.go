package kafkax

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Embedded is an in-process Kafka cluster (franz-go's kfake), which speaks
// the Kafka protocol. It serves `sagaflow dev` and the fast tests; the
// failure scenarios and benchmarks also run against real Apache Kafka.
type Embedded struct {
	cluster *kfake.Cluster
}

// EmbeddedOptions configure an embedded cluster.
type EmbeddedOptions struct {
	// DataDir keeps the log on disk across restarts; empty keeps it in memory.
	DataDir string
	// Port to listen on at 127.0.0.1; 0 picks a free one.
	Port int
	// Partitions is the default partition count of created topics.
	Partitions int
}

// StartEmbedded starts a one-broker kfake cluster.
func StartEmbedded(opts EmbeddedOptions) (*Embedded, error) {
	parts := opts.Partitions
	if parts <= 0 {
		parts = DefaultPartitions
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(parts),
		kfake.ClusterID("sagaflow-embedded"),
		kfake.AllowAutoTopicCreation(),
	}
	if opts.Port != 0 {
		kopts = append(kopts, kfake.Ports(opts.Port))
	}
	if opts.DataDir != "" {
		kopts = append(kopts, kfake.DataDir(opts.DataDir))
	}
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("start embedded Kafka (port %d): %w", opts.Port, err)
	}
	return &Embedded{cluster: c}, nil
}

// Brokers is the bootstrap list of the cluster.
func (e *Embedded) Brokers() []string { return e.cluster.ListenAddrs() }

// Close stops the cluster, saving its state when it has a DataDir.
func (e *Embedded) Close() { e.cluster.Close() }
