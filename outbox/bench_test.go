package outbox_test

// Benchmarks of the outbox, next to watermill's own outbox (watermill-sql's
// transactional publisher + components/forwarder) on the same database
// server and Kafka cluster. They report numbers and assert none. They run
// only with -bench:
//
//	go test -run '^$' -bench . -benchtime 1x ./outbox/                  # embedded kfake
//	KAFKA_BROKERS=127.0.0.1:19092 go test -run '^$' -bench . -benchtime 1x ./outbox/
//
// Knobs (environment): SAGAFLOW_BENCH_ROWS, SAGAFLOW_BENCH_RATE,
// SAGAFLOW_BENCH_DURATION, SAGAFLOW_BENCH_WRITERS, and the relay's
// SAGAFLOW_BENCH_BATCH and SAGAFLOW_BENCH_POLL (see bench_helpers_test.go).
// Each iteration of a benchmark uses a fresh topic and backlog, so
// -benchtime Nx runs N independent drains or load windows. A progress line
// goes to stderr every second.
//
// Writer sessions (and the relay's and forwarder's) run with
// synchronous_commit=on. The throwaway test cluster runs with fsync=off, so
// a commit there still costs no disk flush; point DATABASE_URL at a durable
// server (fsync=on) for commit latencies that include one. That matters:
// a transaction that NOTIFYs (the outbox trigger does) holds a database-wide
// lock across its WAL flush, so such commits do not group-commit.
//
// The backlog of the drain benchmarks is 1,000 transactions of 100 rows,
// keys spread over 10,000 saga ids, ~200-byte payloads.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/outbox"
)

// buildBacklog commits rows messages (numbered 0…rows-1) in transactions of
// perTx, calling write for statements of perStmt, then VACUUM ANALYZEs (a
// freshly loaded table's hint bits and statistics would otherwise be set
// during the timed drain). Not timed.
func (e *benchEnv) buildBacklog(rows int, write func(ctx context.Context, tx pgx.Tx, first, count int) error) {
	e.b.Helper()
	ctx := context.Background()
	const perTx, perStmt = 100, 100
	start := time.Now()
	for first := 0; first < rows; first += perTx {
		tx, err := e.pool.Begin(ctx)
		if err != nil {
			e.b.Fatal(err)
		}
		end := min(rows, first+perTx)
		for s := first; s < end; s += perStmt {
			if err := write(ctx, tx, s, min(perStmt, end-s)); err != nil {
				e.b.Fatalf("build backlog: %v", err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			e.b.Fatal(err)
		}
	}
	if _, err := e.pool.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		e.b.Fatal(err)
	}
	fmt.Fprintf(e.b.Output(), "backlog of %d rows built in %v\n", rows, time.Since(start).Round(time.Millisecond))
}

// waitCount waits until count() reaches want, printing the rate every
// second, and returns how long it took.
func waitCount(b *testing.B, want int64, count func() int64) time.Duration {
	b.Helper()
	start := time.Now()
	var last int64
	lastAt := start
	stop := progress(b.Name(), func() string {
		n, now := count(), time.Now()
		rate := float64(n-last) / now.Sub(lastAt).Seconds()
		last, lastAt = n, now
		return fmt.Sprintf("published %d/%d, %.0f msgs/s (average %.0f)", n, want, rate, float64(n)/now.Sub(start).Seconds())
	})
	defer stop()
	deadline := start.Add(15 * time.Minute)
	for count() < want {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d published after 15 minutes", count(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// checkTopic fails the benchmark unless topic holds want messages (at
// least want when atLeast: the forwarder may publish a message twice).
func (e *benchEnv) checkTopic(topic string, want int, atLeast bool) {
	e.b.Helper()
	got, err := e.kafka.CountMessages(context.Background(), topic)
	if err != nil {
		e.b.Fatal(err)
	}
	if n := got[topic]; n < int64(want) || (!atLeast && n != int64(want)) {
		e.b.Fatalf("topic %s holds %d messages, want %d", topic, n, want)
	}
}

func (e *benchEnv) startRelay(ob *outbox.Outbox) (r *outbox.Relay, tp *timedProducer, stop func()) {
	e.b.Helper()
	var sp sarama.SyncProducer
	var err error
	labelled("relay", func() { sp, err = e.kafka.NewSyncProducer() })
	if err != nil {
		e.b.Fatal(err)
	}
	tp = &timedProducer{Producer: sp}
	r, err = outbox.NewRelay(outbox.RelayConfig{
		Pool:         e.pool,
		Outboxes:     []*outbox.Outbox{ob},
		Producer:     tp,
		BatchSize:    benchInt(e.b, "SAGAFLOW_BENCH_BATCH", 0),
		PollInterval: benchDuration(e.b, "SAGAFLOW_BENCH_POLL", 0),
		Logger:       testLog,
	})
	if err != nil {
		e.b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	labelled("relay", func() {
		go func() {
			defer close(done)
			_ = r.Run(ctx)
		}()
	})
	return r, tp, func() { cancel(); <-done; _ = sp.Close() }
}

// BenchmarkRelayDrain times one Relay publishing a backlog of
// SAGAFLOW_BENCH_ROWS (100,000) committed outbox rows to Kafka.
func BenchmarkRelayDrain(b *testing.B) {
	rows := benchInt(b, "SAGAFLOW_BENCH_ROWS", 100000)
	e := benchSetup(b, 4)
	ob := outbox.New("inventory")
	var total, inKafka time.Duration
	for range b.N {
		b.StopTimer()
		topic := e.topic("bench-drain")
		e.buildBacklog(rows, func(ctx context.Context, tx pgx.Tx, first, count int) error {
			msgs := make([]outbox.Message, count)
			for i := range msgs {
				n := first + i
				msgs[i] = outbox.Message{Topic: topic, Key: e.keys[n%len(e.keys)], Payload: payload(n), Type: "bench.message", SchemaVersion: 1}
			}
			return ob.Write(ctx, tx, msgs...)
		})
		b.StartTimer()
		r, tp, stop := e.startRelay(ob)
		d := waitCount(b, int64(rows), func() int64 { return r.Stats()[0].Published })
		b.StopTimer()
		stop()
		total += d
		k := time.Duration(tp.nanos.Load())
		inKafka += k
		st := r.Stats()[0]
		fmt.Fprintf(b.Output(), "drained %d rows in %v: %.0f msgs/s, %d batches of %.1f ms, %.1f ms of which in SendMessages (%.0f%% of the time)%s\n",
			rows, d.Round(time.Millisecond), float64(rows)/d.Seconds(), st.Batches, ms(d)/float64(st.Batches), ms(k)/float64(tp.sends.Load()), 100*k.Seconds()/d.Seconds(), loadavg())
		e.checkTopic(topic, rows, false)
	}
	b.ReportMetric(float64(rows*b.N)/total.Seconds(), "msgs/s")
	b.ReportMetric(100*inKafka.Seconds()/total.Seconds(), "kafka-%")
}

// BenchmarkForwarderDrain is BenchmarkRelayDrain for watermill's outbox:
// the backlog is written by watermill-sql's publisher through the
// forwarder's envelope, and one forwarder publishes it.
func BenchmarkForwarderDrain(b *testing.B) {
	rows := benchInt(b, "SAGAFLOW_BENCH_ROWS", 100000)
	e := benchSetup(b, 8)
	var total, inKafka time.Duration
	for range b.N {
		b.StopTimer()
		topic := e.topic("bench-fwd-drain")
		f := e.newForwarderPeer()
		e.buildBacklog(rows, func(ctx context.Context, tx pgx.Tx, first, count int) error {
			msgs := make([]*message.Message, count)
			for i := range msgs {
				n := first + i
				msgs[i] = forwarderMessage(e.keys[n%len(e.keys)], payload(n))
			}
			return f.publish(tx, topic, msgs...)
		})
		b.StartTimer()
		f.start(e, time.Second)
		d := waitCount(b, int64(rows), f.pub.published.Load)
		b.StopTimer()
		f.stop()
		total += d
		k := time.Duration(f.pub.nanos.Load())
		inKafka += k
		fmt.Fprintf(b.Output(), "forwarded %d rows in %v: %.0f msgs/s, %.2f ms per message in the Kafka publisher (%.0f%% of the time)%s\n",
			rows, d.Round(time.Millisecond), float64(rows)/d.Seconds(), ms(k)/float64(rows), 100*k.Seconds()/d.Seconds(), loadavg())
		e.checkTopic(topic, rows, true)
	}
	b.ReportMetric(float64(rows*b.N)/total.Seconds(), "msgs/s")
	b.ReportMetric(100*inKafka.Seconds()/total.Seconds(), "kafka-%")
}

// latencyParams reads the load: SAGAFLOW_BENCH_RATE messages/s for
// SAGAFLOW_BENCH_DURATION from SAGAFLOW_BENCH_WRITERS connections.
func latencyParams(b *testing.B) (n int, interval time.Duration, workers int) {
	rate := benchInt(b, "SAGAFLOW_BENCH_RATE", 1000)
	dur := benchDuration(b, "SAGAFLOW_BENCH_DURATION", 10*time.Second)
	workers = benchInt(b, "SAGAFLOW_BENCH_WRITERS", 64)
	return int(dur.Seconds() * float64(rate)), time.Second / time.Duration(rate), workers
}

// runLatency runs one latency window: a consumer on a fresh topic, then the
// pipeline started by start, a warm-up, the open-loop load, and the wait for
// the last message.
func (e *benchEnv) runLatency(n int, interval time.Duration, workers int, start func(topic string) (writeFunc, func())) latencyStats {
	e.b.Helper()
	topic := e.topic("bench-latency")
	lr := newLatencyRun(n, interval)
	stopConsumer := e.consume(topic, lr)
	defer stopConsumer()
	write, stopPipeline := start(topic)
	defer stopPipeline()
	lr.warmUp(e.b, write, 32)
	stop := progress(e.b.Name(), lr.latencyLine)
	t0 := time.Now()
	lr.runOpenLoop(context.Background(), workers, e.keys, write, t0)
	lr.waitReceived(2 * time.Minute)
	stop()
	return lr.stats(t0)
}

// BenchmarkCommitToConsume: a steady SAGAFLOW_BENCH_RATE (1,000) messages/s
// for SAGAFLOW_BENCH_DURATION (10 s), each committed in its own transaction
// through Outbox.Write; the relay (production defaults) publishes them and a
// watermill-kafka subscriber in a fresh group records when each arrives.
// p50/p99/max are commit returned → consumed.
func BenchmarkCommitToConsume(b *testing.B) {
	n, interval, workers := latencyParams(b)
	e := benchSetup(b, workers+4)
	ob := outbox.New("inventory")
	var all []latencyStats
	for range b.N {
		all = append(all, e.runLatency(n, interval, workers, func(topic string) (writeFunc, func()) {
			_, _, stop := e.startRelay(ob)
			return e.ourWriter(ob, topic), stop
		}))
	}
	reportLatency(b, all)
}

// BenchmarkForwarderCommitToConsume is BenchmarkCommitToConsume for
// watermill's outbox. The SQL subscriber has no notification: it polls every
// PollInterval when it found nothing, so it runs with the library's default
// (1 s) and with 10 ms.
func BenchmarkForwarderCommitToConsume(b *testing.B) {
	for _, poll := range []time.Duration{time.Second, 10 * time.Millisecond} {
		b.Run(fmt.Sprintf("poll=%v", poll), func(b *testing.B) {
			n, interval, workers := latencyParams(b)
			e := benchSetup(b, workers+4)
			var all []latencyStats
			for range b.N {
				all = append(all, e.runLatency(n, interval, workers, func(topic string) (writeFunc, func()) {
					f := e.newForwarderPeer()
					f.start(e, poll)
					return e.forwarderWriter(f, topic), f.stop
				}))
			}
			reportLatency(b, all)
		})
	}
}
