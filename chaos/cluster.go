// Package chaos is Sagaflow's failure-injection harness. It runs every role
// as its own OS process (`sagaflow serve --role …`) against a PostgreSQL
// server and a Kafka cluster of its own, drives order load through the API
// with a mix of outcomes, injects faults on a schedule (processes killed,
// brokers and the database restarted, duplicates, poison messages,
// rebalances), waits until every saga has ended, and runs the invariant
// checks. The failure tests and `sagaflow chaos` both use it.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
)

// kafkaCluster is the scenario's Kafka: a real Apache Kafka cluster run by
// scripts/kafka/kafka, or (without the script) an embedded kfake broker in
// this process.
type kafkaCluster struct {
	script string
	dir    string
	port   int
	nodes  int
	fake   *kafkax.Embedded
}

func startKafka(ctx context.Context, script, dir string, nodes int) (*kafkaCluster, error) {
	k := &kafkaCluster{script: script, dir: dir, nodes: nodes}
	if script == "" && nodes > 1 {
		return nil, errors.New("a three-broker cluster needs the real Kafka script (SAGAFLOW_KAFKA_SCRIPT or --kafka-script)")
	}
	// Client ports base..base+2, controller ports base+100..base+102, all
	// below the ephemeral range so a killed node can always restart.
	port, err := pgserver.StablePort(103)
	if err != nil {
		return nil, err
	}
	k.port = port
	return k, k.start(ctx)
}

func (k *kafkaCluster) brokers() []string {
	var out []string
	for i := range k.nodes {
		out = append(out, net.JoinHostPort("127.0.0.1", strconv.Itoa(k.port+i)))
	}
	return out
}

func (k *kafkaCluster) run(ctx context.Context, args ...string) error {
	args = append(args, "--dir", k.dir)
	cmd := exec.CommandContext(ctx, k.script, args...)
	cmd.Env = append(os.Environ(), "KAFKA_PORT_BASE="+strconv.Itoa(k.port), "KAFKA_WORK_DIR=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kafka %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (k *kafkaCluster) start(ctx context.Context) error {
	if k.script != "" {
		return k.run(ctx, "start", "--brokers", strconv.Itoa(k.nodes))
	}
	var err error
	k.fake, err = kafkax.StartEmbedded(kafkax.EmbeddedOptions{DataDir: k.dir, Port: k.port})
	return err
}

func (k *kafkaCluster) stop(ctx context.Context) error {
	if k.script != "" {
		return k.run(ctx, "stop")
	}
	if k.fake != nil {
		k.fake.Close()
		k.fake = nil
	}
	return nil
}

func (k *kafkaCluster) killNode(ctx context.Context, n int) error {
	return k.run(ctx, "kill-node", strconv.Itoa(n))
}
func (k *kafkaCluster) startNode(ctx context.Context, n int) error {
	return k.run(ctx, "start-node", strconv.Itoa(n))
}

// proc is one role instance: a supervised `sagaflow serve` process. The
// supervisor restarts it when it dies (a SIGKILL from a scenario, or an
// injected crash) unless it was stopped on purpose.
type proc struct {
	h     *Harness
	role  string
	index int
	args  []string

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
	wanted   bool // should be running
	restarts int
}

func (p *proc) name() string { return fmt.Sprintf("%s-%d", p.role, p.index) }

func (p *proc) logPath() string { return filepath.Join(p.h.dir, "logs", p.name()+".log") }

// start launches the process (if it is not running) and keeps it running.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.wanted = true
	if p.cmd != nil {
		return nil
	}
	return p.launchLocked()
}

func (p *proc) launchLocked() error {
	logf, err := os.OpenFile(p.logPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", p.name(), err)
	}
	cmd := exec.Command(p.h.cfg.Bin, p.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name(), err)
	}
	fmt.Fprintf(logf, "--- harness: started pid %d at %s\n", cmd.Process.Pid, time.Now().Format(time.RFC3339Nano))
	p.cmd = cmd
	exited := make(chan struct{})
	p.exited = exited
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.cmd == cmd {
			p.cmd = nil
		}
		if p.wanted && !p.h.closing() {
			// Died without being asked to: restart it, as a process
			// supervisor (systemd, Kubernetes) would.
			p.restarts++
			p.h.restarts.Add(1)
			time.AfterFunc(200*time.Millisecond, func() {
				p.mu.Lock()
				defer p.mu.Unlock()
				if p.wanted && p.cmd == nil && !p.h.closing() {
					if err := p.launchLocked(); err != nil {
						p.h.logf("restart %s: %v", p.name(), err)
					}
				}
			})
		}
	}()
	return nil
}

// kill sends SIGKILL (the supervisor restarts the process).
func (p *proc) kill() {
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil {
		_ = cmd.Process.Signal(syscall.SIGKILL)
	}
}

// stop ends the process for good (SIGTERM, then SIGKILL after 15 s).
func (p *proc) stop() {
	p.mu.Lock()
	p.wanted = false
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
}
