package outbox_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
)

// cutStreamAfterAck lets one streamed batch reach Kafka, then terminates
// the relay's replication connection before the relay can report the
// batch's position to the server: the crash of a relay between Kafka's ack
// and its confirmation.
type cutStreamAfterAck struct {
	inner outbox.Producer
	e     *env
	cut   atomic.Bool
	first atomic.Int64
}

func (c *cutStreamAfterAck) SendMessages(msgs []*sarama.ProducerMessage) error {
	err := c.inner.SendMessages(msgs)
	if err == nil && !c.cut.Swap(true) {
		c.first.Store(int64(len(msgs)))
		var n int
		if qerr := c.e.db.Pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = 'sagaflow-relay-wal'`).Scan(&n); qerr != nil || n != 1 {
			c.e.t.Errorf("terminate the relay's replication connection: %d terminated, %v", n, qerr)
		}
	}
	return err
}

// waitLeader waits until r leads its outbox.
func waitLeader(t *testing.T, r *outbox.Relay) {
	t.Helper()
	waitFor(t, "the relay leads", func() bool { return r.Stats()[0].Leader })
}

// The WAL relay confirms a position only after Kafka acknowledged
// everything before it; a relay cut off after the ack but before it reported
// the position streams the same transactions again, and the inbox absorbs
// them: every effect once, every key in order.
func TestWALRelayRepeatsWhatItDidNotConfirm(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	c := e.consume(ctx, nil)
	sp, err := e.kafka.NewRelayProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	cut := &cutStreamAfterAck{inner: sp, e: e}
	// The relay reports only when asked, so the cut comes before any report.
	relay, _ := e.startRelay(ctx, cut, func(cfg *outbox.RelayConfig) { cfg.StatusInterval = time.Hour })
	waitLeader(t, relay)
	const n = 1000
	e.writeMany(ctx, 4, n/4, 20)
	e.waitEffects(ctx, n)
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, n)
	e.checkOrder(ctx)
	if !cut.cut.Load() {
		t.Fatal("the stream was never cut")
	}
	if got := c.inbox.Duplicates(); got < cut.first.Load() {
		t.Fatalf("the inbox absorbed %d duplicates, want at least the %d messages of the unconfirmed batch", got, cut.first.Load())
	}
	if f := relay.Stats()[0].Failures; f < 1 {
		t.Fatalf("relay counted %d stream failures, want at least 1", f)
	}
}

// A replication slot lost while no relay ran (dropped by hand, or missing
// after a failover) is detected, created again and counted, and the rows
// committed meanwhile are published from the outbox table: nothing lost.
func TestWALRelaySlotLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	e.consume(ctx, nil)
	first, stop := e.startRelay(ctx, nil, nil)
	waitLeader(t, first)
	e.writeMany(ctx, 2, 100, 10)
	e.waitEffects(ctx, 200)
	stop()
	if first.SlotsRecreated() != 0 {
		t.Fatalf("first relay recreated %d slots, want 0", first.SlotsRecreated())
	}
	// The server releases the slot when its walsender sees the stream
	// closed, a moment after the relay stopped: dropping it sooner fails
	// with "is active for PID" (SQLSTATE 55006; seen once in make test).
	waitFor(t, "the slot released", func() bool {
		var active bool
		err := e.db.Pool.QueryRow(ctx, `SELECT bool_or(active) FROM pg_replication_slots WHERE database = current_database()`).Scan(&active)
		return err == nil && !active
	})
	var dropped int
	if err := e.db.Pool.QueryRow(ctx, `SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots
		WHERE database = current_database()`).Scan(&dropped); err != nil || dropped != 1 {
		t.Fatalf("drop the relay's slot: %d dropped, %v", dropped, err)
	}
	e.writeMany(ctx, 2, 150, 10) // committed while no slot exists
	second, _ := e.startRelay(ctx, nil, nil)
	waitLeader(t, second)
	e.writeMany(ctx, 2, 50, 10)
	e.waitEffects(ctx, 600)
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, 600)
	e.checkOrder(ctx)
	if got := second.SlotsRecreated(); got != 1 {
		t.Fatalf("second relay recreated %d slots, want 1", got)
	}
}

// ModeAuto streams from the WAL when the role may replicate and polls when
// it may not; ModeWAL refuses to run without it, saying why.
func TestRelayModeFollowsReplicationRight(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	role := strings.ToLower(testenv.Name(t, "norepl"))
	if _, err := e.db.Pool.Exec(ctx, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN NOREPLICATION;
		GRANT USAGE ON SCHEMA inventory TO %[1]s; GRANT ALL ON ALL TABLES IN SCHEMA inventory TO %[1]s`,
		pgx.Identifier{role}.Sanitize())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = e.db.Pool.Exec(context.Background(), fmt.Sprintf("DROP OWNED BY %[1]s; DROP ROLE %[1]s", pgx.Identifier{role}.Sanitize()))
	})
	cfg, err := pgxpool.ParseConfig(e.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User = role
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	sp, err := e.kafka.NewRelayProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()

	tests := []struct {
		pool    *pgxpool.Pool
		mode    outbox.Mode
		want    outbox.Mode
		wantErr string
	}{
		{pool: e.db.Pool, mode: outbox.ModeAuto, want: outbox.ModeWAL},
		{pool: pool, mode: outbox.ModeAuto, want: outbox.ModePoll},
		{pool: pool, mode: outbox.ModePoll, want: outbox.ModePoll},
		{pool: pool, mode: outbox.ModeWAL, wantErr: "REPLICATION"},
	}
	for _, tc := range tests {
		r, err := outbox.NewRelay(outbox.RelayConfig{Pool: tc.pool, Outboxes: []*outbox.Outbox{e.ob}, Producer: sp, Mode: tc.mode, Logger: testLog})
		if err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		if tc.wantErr != "" {
			err := <-done
			cancel()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("mode %s without the right: Run returned %v, want an error naming %s", tc.mode, err, tc.wantErr)
			}
			continue
		}
		waitLeader(t, r)
		got := r.Mode()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Fatalf("mode %s: relay runs as %s, want %s", tc.mode, got, tc.want)
		}
	}
}

// Logical decoding sends a transaction as soon as its commit is flushed,
// before the committing session has made it visible; with a synchronous
// standby that never answers, the commit stays invisible for as long as the
// session waits. The WAL relay must hold such a transaction back until
// other sessions can see it (a consumer may read what it wrote: the
// orchestrator looks up the saga that placement created), then publish it.
//
// It runs twice: the transaction of another session, and one of this
// process through BeginWith, whose COMMIT records it in the commit log only
// once the COMMIT answered: the relay, which trusts that log, must not take
// a COMMIT under way for a visible one.
func TestWALRelayWaitsUntilCommitVisible(t *testing.T) {
	// Not parallel: it sets synchronous_standby_names for the whole test
	// cluster. Only sessions with synchronous_commit on wait for the
	// standby, and the test cluster runs with it off.
	for _, writer := range []string{"another session", "this process's BeginWith"} {
		t.Run(writer, func(t *testing.T) { testInvisibleCommit(t, writer == "another session") })
	}
}

func testInvisibleCommit(t *testing.T, otherSession bool) {
	ctx := context.Background()
	e := setup(t)
	c := e.consume(ctx, nil)
	relay, _ := e.startRelay(ctx, nil, nil)
	waitLeader(t, relay)

	setStandby := func(value string) {
		t.Helper()
		q := "ALTER SYSTEM RESET synchronous_standby_names"
		if value != "" {
			q = "ALTER SYSTEM SET synchronous_standby_names = '" + value + "'"
		}
		if _, err := e.db.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
		if _, err := e.db.Pool.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			t.Fatal(err)
		}
	}
	setStandby("sagaflow_standby_that_never_answers")
	t.Cleanup(func() { setStandby("") })

	// The writer's session: a pool of one connection, for BeginWith.
	cfg, err := pgxpool.ParseConfig(e.db.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 1, 1
	conn, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The reload reaches a session at its next command.
	waitFor(t, "the standby setting in force", func() bool {
		var v string
		return conn.QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&v) == nil && v != ""
	})
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	// A session sees the setting before the checkpointer applies it to
	// the shared state that makes commits wait: until then a commit does
	// not wait, and the relay rightly publishes it. Probe commits until
	// one waits for the standby.
	waitSyncRepInForce(ctx, t, e.db.URL, e.db.Pool)
	committed := make(chan error, 1)
	go func() {
		var tx pgx.Tx
		var err error
		if otherSession {
			if tx, err = conn.Begin(ctx); err == nil {
				_, err = tx.Exec(ctx, "SET LOCAL synchronous_commit = on")
			}
		} else {
			tx, err = outbox.BeginWith(ctx, conn, func(rows pgx.Rows) error { rows.Close(); return rows.Err() },
				"SET LOCAL synchronous_commit = on")
		}
		if err != nil {
			committed <- err
			return
		}
		defer tx.Rollback(ctx) //nolint:errcheck
		if _, err := tx.Exec(ctx, "INSERT INTO counters (key, n) VALUES ('k', 1)"); err != nil {
			committed <- err
			return
		}
		if err := e.ob.Write(ctx, tx, outbox.Message{Topic: e.topic, Key: "k", Payload: []byte(`{"key":"k","n":1}`), Type: "test.effect"}); err != nil {
			committed <- err
			return
		}
		committed <- tx.Commit(ctx) // waits for the standby
	}()
	waitFor(t, "the relay holding back an invisible transaction, or publishing it", func() bool {
		return relay.InvisibleWaits() > 0 || c.deliveries.Load() > 0
	})
	if n := c.deliveries.Load(); n != 0 {
		t.Fatalf("the relay published a transaction other sessions could not see yet (%d deliveries)", n)
	}
	// Cancelling the wait makes the commit visible (it was committed locally).
	if _, err := e.db.Pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	if err := <-committed; err != nil {
		t.Fatalf("commit: %v", err)
	}
	e.waitEffects(ctx, 1)
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, 1)
}

// A transaction this process committed through BeginWith (or an inbox) is
// known visible once its COMMIT answered: the relay publishes it without
// reading the server's snapshot, which it still reads for a transaction of
// any other session.
func TestWALRelayKnowsThisProcessCommitsVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	e.consume(ctx, nil)
	relay, _ := e.startRelay(ctx, nil, nil)
	waitLeader(t, relay)
	const n = 20
	for i := 1; i <= n; i++ {
		var got int
		tx, err := outbox.BeginWith(ctx, e.db.Pool, func(rows pgx.Rows) error {
			defer rows.Close()
			for rows.Next() {
				if err := rows.Scan(&got); err != nil {
					return err
				}
			}
			return rows.Err()
		}, `INSERT INTO counters (key, n) VALUES ('k', 1) ON CONFLICT (key) DO UPDATE SET n = counters.n + 1 RETURNING n`)
		if err != nil {
			t.Fatal(err)
		}
		payload := fmt.Sprintf(`{"key":"k","n":%d}`, got)
		if err := e.ob.Write(ctx, tx, outbox.Message{Topic: e.topic, Key: "k", Payload: []byte(payload), Type: "test.effect", SchemaVersion: 1}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	e.waitEffects(ctx, n)
	local, reads := relay.Visibility()
	if local == 0 {
		t.Fatalf("the relay read %d snapshots and found no batch of %d transactions committed here visible from its commit log", reads, n)
	}
	// Another session's transaction: only the server's snapshot tells.
	if err := e.write(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	e.waitEffects(ctx, n+1)
	if _, after := relay.Visibility(); after <= reads {
		t.Fatalf("the relay published another session's transaction without reading a snapshot (%d reads before, %d after)", reads, after)
	}
	waitFor(t, "outbox drained", func() bool { b, _ := e.ob.Backlog(ctx, e.db.Pool); return b.Rows == 0 })
	e.checkExactlyOnce(ctx, n+1)
	e.checkOrder(ctx)
}

// waitSyncRepInForce commits probe transactions (synchronous_commit on)
// until one waits for the synchronous standby, then cancels its wait.
func waitSyncRepInForce(ctx context.Context, t *testing.T, url string, pool *pgxpool.Pool) {
	t.Helper()
	probe, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close(ctx)
	var pid int
	if err := probe.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := probe.Exec(ctx, "CREATE TEMP TABLE sync_probe (n int)"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
probes:
	for round := 1; ; round++ {
		done := make(chan error, 1)
		go func() {
			tx, err := probe.Begin(ctx)
			if err != nil {
				done <- err
				return
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
			if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
				done <- err
				return
			}
			// A temporary table's rows are not WAL-logged: the commit
			// record needs a transaction id, which txid_current assigns.
			if _, err := tx.Exec(ctx, "SELECT txid_current()"); err != nil {
				done <- err
				return
			}
			done <- tx.Commit(ctx)
		}()
		for waiting := false; !waiting; {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("probe commit: %v", err)
				}
				if time.Now().After(deadline) {
					t.Fatalf("after %d probes, commits still do not wait for the synchronous standby", round)
				}
				continue probes
			case <-time.After(10 * time.Millisecond):
			}
			var event *string
			if err := pool.QueryRow(ctx, "SELECT wait_event FROM pg_stat_activity WHERE pid = $1", pid).Scan(&event); err != nil {
				t.Fatal(err)
			}
			waiting = event != nil && *event == "SyncRep"
		}
		if _, err := pool.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("probe commit after its wait was cancelled: %v", err)
		}
		t.Logf("commits wait for the standby from probe %d on", round)
		return
	}
}
