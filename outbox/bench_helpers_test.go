package outbox_test

// Helpers of the outbox benchmarks (bench_test.go): the environment (a
// database, writer connections with synchronous_commit=on, Kafka), the
// open-loop load generator, the latency consumer, watermill's SQL outbox and
// forwarder as the peer, progress lines and the knobs read from the
// environment.

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/components/forwarder"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// Knobs, read from the environment so that `go test -bench` needs no flags:
//
//	SAGAFLOW_BENCH_ROWS      backlog of the drain benchmarks (default 100000)
//	SAGAFLOW_BENCH_RATE      messages/s of the latency benchmarks (default 1000)
//	SAGAFLOW_BENCH_DURATION  length of the latency benchmarks' load (default 10s)
//	SAGAFLOW_BENCH_BATCH     the relay's BatchSize (default: the relay's own)
//	SAGAFLOW_BENCH_POLL      the relay's PollInterval (default: the relay's own)
//	SAGAFLOW_BENCH_WRITERS   concurrent writer connections of the load (default 64)
func benchInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return n
}

func benchDuration(b *testing.B, name string, def time.Duration) time.Duration {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		b.Fatalf("%s=%q: want a positive duration such as 10s", name, s)
	}
	return d
}

// benchEnv is one benchmark's database and Kafka cluster.
type benchEnv struct {
	b     *testing.B
	db    *testenv.Database
	kafka kafkax.Config
	// pool is what the writers, the relay and the forwarder use. Its
	// sessions run with synchronous_commit=on, whatever the server's default
	// (the throwaway test cluster turns it off), so a commit costs what it
	// costs in production on this server.
	pool *pgxpool.Pool
	// keys are the Kafka keys (saga ids) messages are spread over.
	keys []string
}

var benchLogOnce sync.Once

func benchSetup(b *testing.B, conns int) *benchEnv {
	b.Helper()
	ctx := context.Background()
	e := &benchEnv{b: b, db: testenv.DB(b), kafka: testenv.Kafka(b)}
	cfg, err := pgxpool.ParseConfig(e.db.URL)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = int32(conns)
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	cfg.ConnConfig.RuntimeParams["application_name"] = "sagaflow-bench"
	if e.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(e.pool.Close)
	e.keys = make([]string, 10000)
	for i := range e.keys {
		e.keys[i] = uuid.Must(uuid.NewV7()).String()
	}
	benchLogOnce.Do(func() {
		var fsync, sc, version string
		if err := e.pool.QueryRow(ctx, "SELECT current_setting('fsync'), current_setting('synchronous_commit'), current_setting('server_version')").Scan(&fsync, &sc, &version); err != nil {
			b.Fatal(err)
		}
		broker := "embedded kfake"
		if testenv.RealKafka() {
			broker = "KAFKA_BROKERS=" + os.Getenv("KAFKA_BROKERS")
		}
		fmt.Fprintf(os.Stderr, "bench: PostgreSQL %s fsync=%s, writer sessions synchronous_commit=%s; Kafka: %s\n", version, fsync, sc, broker)
	})
	return e
}

// topic creates a fresh topic (kafkax.DefaultPartitions partitions).
func (e *benchEnv) topic(prefix string) string {
	e.b.Helper()
	t := testenv.Name(e.b, prefix)
	if err := e.kafka.EnsureTopics(context.Background(), t); err != nil {
		e.b.Fatal(err)
	}
	return t
}

// benchPayload is the body of every benchmark message: its number (-1 for
// warm-up), the wall time just before its transaction commits, and padding
// to a typical command's size (~200 bytes).
type benchPayload struct {
	N   int    `json:"n"`
	T   int64  `json:"t"`
	Pad string `json:"pad"`
}

var benchPad = "order-line:sku-000123:qty-2:price-1999:currency-EUR:address:1-Main-Street-Springfield-12345-AT:payment:card-token-4242424242424242"

func payload(n int) []byte {
	p, _ := json.Marshal(benchPayload{N: n, T: time.Now().UnixNano(), Pad: benchPad})
	return p
}

// progress prints line() to stderr every second until stop is called.
func progress(name string, line func() string) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "  %s %5.1fs: %s\n", name, time.Since(start).Seconds(), line())
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-finished }) }
}

// writeFunc commits one message (number n, key, body) in a transaction of
// its own and returns when the commit returned.
type writeFunc func(ctx context.Context, n int, key string, body []byte) error

// ourWriter writes through Outbox.Write.
func (e *benchEnv) ourWriter(ob *outbox.Outbox, topic string) writeFunc {
	return func(ctx context.Context, n int, key string, body []byte) error {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		if err := ob.Write(ctx, tx, outbox.Message{Topic: topic, Key: key, Payload: body, Type: "bench.message", SchemaVersion: 1}); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
}

// latencyRun records, per message number, when it was due, when its write
// started, when its commit returned and when the consumer first saw it, as
// nanoseconds since base (monotonic clock).
type latencyRun struct {
	base     time.Time
	interval time.Duration
	started  []atomic.Int64
	commit   []atomic.Int64
	recv     []atomic.Int64

	written, received, dups, warm, failed atomic.Int64
}

func newLatencyRun(n int, interval time.Duration) *latencyRun {
	return &latencyRun{base: time.Now(), interval: interval,
		started: make([]atomic.Int64, n), commit: make([]atomic.Int64, n), recv: make([]atomic.Int64, n)}
}

func (lr *latencyRun) now() int64 { return int64(time.Since(lr.base)) }

// runOpenLoop writes len(lr.commit) messages at a fixed rate from t0 (one
// every lr.interval), each in its own transaction, on workers goroutines.
// The schedule never waits for a slow commit: a message whose turn comes
// while every worker is busy starts late, and its lateness is recorded
// (latencyRun.report counts late starts).
func (lr *latencyRun) runOpenLoop(ctx context.Context, workers int, keys []string, write writeFunc, t0 time.Time) {
	n := len(lr.commit)
	jobs := make(chan int, n)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				lr.started[i].Store(lr.now())
				if err := write(ctx, i, keys[i%len(keys)], payload(i)); err != nil {
					if lr.failed.Add(1) <= 3 {
						fmt.Fprintf(os.Stderr, "  write %d failed: %v\n", i, err)
					}
					continue
				}
				lr.commit[i].Store(lr.now())
				lr.written.Add(1)
			}
		}()
	}
	tick := time.NewTicker(min(lr.interval, time.Millisecond))
	next := 0
	for next < n {
		if ctx.Err() != nil {
			break
		}
		due := min(n, int(time.Since(t0)/lr.interval)+1)
		for ; next < due; next++ {
			jobs <- next
		}
		<-tick.C
	}
	tick.Stop()
	close(jobs)
	wg.Wait()
}

// due is when message i was scheduled, in lr's clock.
func (lr *latencyRun) due(t0 time.Time, i int) int64 {
	return int64(t0.Sub(lr.base)) + int64(i)*int64(lr.interval)
}

// consume records the first delivery of every message on topic in a new
// consumer group (a watermill-kafka subscriber, as Sagaflow's consumers
// use). It returns a stop function.
func (e *benchEnv) consume(topic string, lr *latencyRun) (stop func()) {
	e.b.Helper()
	wlog := watermill.NewSlogLogger(testLog)
	sub, err := e.kafka.NewSubscriber(testenv.Name(e.b, "bench-consumer"), wlog)
	if err != nil {
		e.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		e.b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range msgs {
			at := lr.now()
			var p benchPayload
			if err := json.Unmarshal(m.Payload, &p); err != nil || p.N >= len(lr.recv) {
				m.Ack()
				continue
			}
			if p.N < 0 {
				lr.warm.Add(1)
			} else if lr.recv[p.N].CompareAndSwap(0, at) {
				lr.received.Add(1)
			} else {
				lr.dups.Add(1)
			}
			m.Ack()
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			_ = sub.Close()
			<-done
		})
	}
	e.b.Cleanup(stop)
	return stop
}

// warmUp writes count warm-up messages (number -1, over distinct keys) and
// waits until the consumer saw them all: the consumer group has joined, and
// the relay or forwarder is running, before the timed load starts.
func (lr *latencyRun) warmUp(b *testing.B, write writeFunc, count int) {
	b.Helper()
	ctx := context.Background()
	for i := range count {
		if err := write(ctx, -1, fmt.Sprintf("warm-up-%d", i), payload(-1)); err != nil {
			b.Fatalf("warm-up write: %v", err)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for lr.warm.Load() < int64(count) {
		if time.Now().After(deadline) {
			b.Fatalf("warm-up: the consumer saw %d of %d messages in 2 minutes", lr.warm.Load(), count)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitReceived waits until every committed message was consumed, or until
// timeout.
func (lr *latencyRun) waitReceived(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for lr.received.Load() < lr.written.Load() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
}

// latencyStats are the numbers of a latencyRun.
type latencyStats struct {
	// e2e: commit returned → consumer received.
	e2e []float64
	// sched: due time → consumer received (includes any late start and the
	// commit itself: the number without coordinated omission).
	sched []float64
	// commit: write started → commit returned.
	commit []float64
	// late starts (more than lateSlack after their due time) and the worst.
	late    int
	maxLate float64
	lost    int
}

// lateSlack is how late a write may start before it counts as late: the
// scheduler ticks every millisecond on a shared 2-core machine.
const lateSlack = 5 * time.Millisecond

func (lr *latencyRun) stats(t0 time.Time) latencyStats {
	var s latencyStats
	ms := func(ns int64) float64 { return float64(ns) / 1e6 }
	for i := range lr.commit {
		c, r, st := lr.commit[i].Load(), lr.recv[i].Load(), lr.started[i].Load()
		if c == 0 {
			continue // the write failed
		}
		lateBy := st - lr.due(t0, i)
		if lateBy > int64(lateSlack) {
			s.late++
		}
		s.maxLate = math.Max(s.maxLate, ms(lateBy))
		s.commit = append(s.commit, ms(c-st))
		if r == 0 {
			s.lost++
			continue
		}
		s.e2e = append(s.e2e, ms(max(0, r-c)))
		s.sched = append(s.sched, ms(r-lr.due(t0, i)))
	}
	slices.Sort(s.e2e)
	slices.Sort(s.sched)
	slices.Sort(s.commit)
	return s
}

func pct(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// report merges the stats of every iteration and reports them.
func reportLatency(b *testing.B, all []latencyStats) {
	var m latencyStats
	for _, s := range all {
		m.e2e = append(m.e2e, s.e2e...)
		m.sched = append(m.sched, s.sched...)
		m.commit = append(m.commit, s.commit...)
		m.late += s.late
		m.lost += s.lost
		m.maxLate = math.Max(m.maxLate, s.maxLate)
	}
	slices.Sort(m.e2e)
	slices.Sort(m.sched)
	slices.Sort(m.commit)
	b.ReportMetric(pct(m.e2e, 50), "p50-ms")
	b.ReportMetric(pct(m.e2e, 99), "p99-ms")
	b.ReportMetric(pct(m.e2e, 100), "max-ms")
	b.ReportMetric(pct(m.sched, 99), "due-p99-ms")
	b.ReportMetric(pct(m.commit, 50), "commit-p50-ms")
	b.ReportMetric(pct(m.commit, 99), "commit-p99-ms")
	b.ReportMetric(float64(m.late), "late-starts")
	b.ReportMetric(m.maxLate, "max-late-ms")
	b.ReportMetric(float64(m.lost), "lost")
	fmt.Fprintf(os.Stderr, "  %s: %d messages; commit→consume p50 %.1f ms, p90 %.1f, p99 %.1f, max %.1f; due→consume p50 %.1f, p99 %.1f; commit p50 %.2f ms, p99 %.2f; %d late starts (>%v, worst %.1f ms), %d lost%s\n",
		b.Name(), len(m.e2e), pct(m.e2e, 50), pct(m.e2e, 90), pct(m.e2e, 99), pct(m.e2e, 100),
		pct(m.sched, 50), pct(m.sched, 99), pct(m.commit, 50), pct(m.commit, 99), m.late, lateSlack, m.maxLate, m.lost, loadavg())
}

// latencyLine is the progress line of a latency run.
func (lr *latencyRun) latencyLine() string {
	return fmt.Sprintf("committed %d/%d, consumed %d (dup %d), failed writes %d",
		lr.written.Load(), len(lr.commit), lr.received.Load(), lr.dups.Load(), lr.failed.Load())
}

// ---- watermill's own outbox: watermill-sql v4 + components/forwarder ----

// forwarderPeer is watermill's transactional outbox: the SQL publisher
// inserts enveloped messages into the watermill_<forwarderTopic> table
// inside the caller's transaction, and a forwarder (a router reading that
// table with the SQL subscriber) publishes each to Kafka with the same
// watermill-kafka publisher and sarama settings as Sagaflow.
type forwarderPeer struct {
	topic  string // the SQL "topic" the forwarder reads (table watermill_<topic>)
	schema wsql.DefaultPostgreSQLSchema
	pub    *countingPublisher
	stop   func()
}

// countingPublisher counts the messages the forwarder published to Kafka
// and the time it spent in Publish.
type countingPublisher struct {
	message.Publisher
	published atomic.Int64
	nanos     atomic.Int64
}

func (c *countingPublisher) Publish(topic string, msgs ...*message.Message) error {
	start := time.Now()
	err := c.Publisher.Publish(topic, msgs...)
	c.nanos.Add(int64(time.Since(start)))
	if err != nil {
		return err
	}
	c.published.Add(int64(len(msgs)))
	return nil
}

// timedProducer measures the time the relay waits for Kafka.
type timedProducer struct {
	outbox.Producer
	sends atomic.Int64
	nanos atomic.Int64
}

func (p *timedProducer) SendMessages(msgs []*sarama.ProducerMessage) error {
	start := time.Now()
	err := p.Producer.SendMessages(msgs)
	p.nanos.Add(int64(time.Since(start)))
	p.sends.Add(1)
	return err
}

// labelled runs fn with pprof labels bench=name, which the goroutines fn
// starts inherit: `go tool pprof -tagfocus bench=relay` then shows the
// relay's CPU without the backlog building, the consumer or kfake's.
func labelled(name string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels("bench", name), func(context.Context) { fn() })
}

func (e *benchEnv) newForwarderPeer() *forwarderPeer {
	e.b.Helper()
	f := &forwarderPeer{
		topic: "fwd_" + uuid.NewString()[:8],
		// The library's defaults: JSON payload column, 100 rows per query.
		schema: wsql.DefaultPostgreSQLSchema{},
	}
	// Create its tables now (a transactional publisher may not).
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(e.pool), wsql.SubscriberConfig{
		ConsumerGroup:  "forwarder",
		SchemaAdapter:  f.schema,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
	}, nil)
	if err != nil {
		e.b.Fatal(err)
	}
	if err := sub.SubscribeInitialize(f.topic); err != nil {
		e.b.Fatal(err)
	}
	_ = sub.Close()
	return f
}

// publish writes msgs for Kafka topic dest inside tx, as a watermill user
// would: an SQL publisher on the transaction, wrapped by the forwarder's
// enveloping publisher.
func (f *forwarderPeer) publish(tx pgx.Tx, dest string, msgs ...*message.Message) error {
	sqlPub, err := wsql.NewPublisher(wsql.TxFromPgx(tx), wsql.PublisherConfig{SchemaAdapter: f.schema}, nil)
	if err != nil {
		return err
	}
	return forwarder.NewPublisher(sqlPub, forwarder.PublisherConfig{ForwarderTopic: f.topic}).Publish(dest, msgs...)
}

func forwarderMessage(key string, body []byte) *message.Message {
	m := message.NewMessage(uuid.Must(uuid.NewV7()).String(), body)
	m.Metadata.Set(kafkax.KeyMetadata, key)
	m.Metadata.Set(outbox.HeaderType, "bench.message")
	m.Metadata.Set(outbox.HeaderSchemaVersion, "1")
	return m
}

// writer is the forwarder's counterpart of ourWriter.
func (e *benchEnv) forwarderWriter(f *forwarderPeer, dest string) writeFunc {
	return func(ctx context.Context, n int, key string, body []byte) error {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		if err := f.publish(tx, dest, forwarderMessage(key, body)); err != nil {
			return err
		}
		return tx.Commit(ctx)
	}
}

// start runs the forwarder: the SQL subscriber (in a fresh group, polling
// every poll when the table has nothing new) feeding a watermill-kafka
// publisher from kafkax.
func (f *forwarderPeer) start(e *benchEnv, poll time.Duration) {
	e.b.Helper()
	wlog := watermill.NewSlogLogger(testLog)
	sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(e.pool), wsql.SubscriberConfig{
		ConsumerGroup:  "forwarder",
		SchemaAdapter:  f.schema,
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   poll,
	}, wlog)
	if err != nil {
		e.b.Fatal(err)
	}
	var kpub message.Publisher
	labelled("forwarder", func() { kpub, err = e.kafka.NewPublisher(wlog) })
	if err != nil {
		e.b.Fatal(err)
	}
	f.pub = &countingPublisher{Publisher: kpub}
	fwd, err := forwarder.NewForwarder(sub, f.pub, wlog, forwarder.Config{ForwarderTopic: f.topic, CloseTimeout: 10 * time.Second})
	if err != nil {
		e.b.Fatal(err)
	}
	done := make(chan struct{})
	labelled("forwarder", func() {
		go func() {
			defer close(done)
			if err := fwd.Run(context.Background()); err != nil {
				e.b.Errorf("forwarder: %v", err)
			}
		}()
	})
	select {
	case <-fwd.Running():
	case <-time.After(30 * time.Second):
		e.b.Fatal("forwarder did not start")
	}
	var once sync.Once
	f.stop = func() {
		once.Do(func() {
			_ = fwd.Close()
			<-done
			_ = sub.Close()
			_ = kpub.Close()
		})
	}
	e.b.Cleanup(f.stop)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// loadavg describes the machine's load (other processes share its cores).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return fmt.Sprintf(" [load %s %s %s]", f[0], f[1], f[2])
}
