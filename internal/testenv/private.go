package testenv

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
)

// PrivateKafka is a Kafka cluster of one test's own, which the test may stop
// and start again on the same data (broker outage tests). With
// SAGAFLOW_KAFKA_SCRIPT set (the README's test command sets it) it is a real
// Apache Kafka broker run by that script; otherwise an embedded kfake
// cluster with a data directory.
type PrivateKafka struct {
	t      testing.TB
	dir    string
	port   int
	script string
	fake   *kafkax.Embedded
}

// StartPrivateKafka starts a one-broker cluster for t, stopped when t ends.
func StartPrivateKafka(t testing.TB) *PrivateKafka {
	t.Helper()
	p := &PrivateKafka{t: t, dir: t.TempDir(), script: os.Getenv("SAGAFLOW_KAFKA_SCRIPT")}
	// The broker is stopped and started again on its port (and, for the
	// real one, its controller port +100): keep them below the ephemeral
	// range so no client connection takes them meanwhile.
	var err error
	if p.port, err = pgserver.StablePort(101); err != nil {
		t.Fatal(err)
	}
	if p.script == "" || !RealKafka() {
		p.script = ""
	}
	p.Start()
	t.Cleanup(func() {
		if p.script != "" {
			out, err := p.run("stop")
			if err != nil {
				t.Logf("stop private Kafka: %v: %s", err, out)
			}
		} else if p.fake != nil {
			p.fake.Close()
		}
	})
	return p
}

// Real reports whether this is an Apache Kafka broker (not kfake).
func (p *PrivateKafka) Real() bool { return p.script != "" }

// Config is the cluster's configuration for clients.
func (p *PrivateKafka) Config() kafkax.Config {
	return kafkax.Config{Brokers: []string{net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port))},
		Partitions: kafkax.DefaultPartitions, ReplicationFactor: 1, ClientID: "sagaflow-test"}
}

// Start starts (or restarts, on the same data) the broker and waits until it
// accepts connections.
func (p *PrivateKafka) Start() {
	p.t.Helper()
	if p.script != "" {
		if out, err := p.run("start"); err != nil {
			p.t.Fatalf("start private Kafka broker: %v\n%s", err, out)
		}
		return
	}
	var err error
	p.fake, err = kafkax.StartEmbedded(kafkax.EmbeddedOptions{DataDir: filepath.Join(p.dir, "kfake"), Port: p.port})
	if err != nil {
		p.t.Fatalf("start private kfake: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Config().Ping(ctx); err != nil {
		p.t.Fatal(err)
	}
}

// Stop stops the broker (SIGTERM for the real one: a clean shutdown).
func (p *PrivateKafka) Stop() {
	p.t.Helper()
	if p.script != "" {
		if out, err := p.run("stop"); err != nil {
			p.t.Fatalf("stop private Kafka broker: %v\n%s", err, out)
		}
		return
	}
	p.fake.Close()
	p.fake = nil
}

func (p *PrivateKafka) run(cmd string) (string, error) {
	c := exec.Command(p.script, cmd, "--dir", filepath.Join(p.dir, "kafka"))
	c.Env = append(os.Environ(), "KAFKA_PORT_BASE="+strconv.Itoa(p.port), "KAFKA_WORK_DIR=")
	out, err := c.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
