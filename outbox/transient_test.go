package outbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/telemetry"
)

// pgErr runs sql in a transaction (begun with begin) and returns
// PostgreSQL's error.
func pgErr(t *testing.T, db *testenv.Database, begin pgx.TxOptions, sql string) error {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Pool.BeginTx(ctx, begin)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	_, err = tx.Exec(ctx, sql)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("%s: error %v, want a PostgreSQL error", sql, err)
	}
	return err
}

// Errors classified by what PostgreSQL really answers: a statement
// cancelled by its timeout (57014) and a write on a read-only server
// (25006: still connected to a demoted primary) are transient; a bad value
// or a constraint is not. (Before: 25006 was not transient, so a failover
// dead-lettered every message in flight.)
func TestTransientErrorsFromPostgreSQL(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	if _, err := db.Pool.Exec(context.Background(), `CREATE TABLE u (k int PRIMARY KEY); INSERT INTO u VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		begin     pgx.TxOptions
		sql       string
		transient bool
	}{
		{"statement timeout (57014)", pgx.TxOptions{}, `SET LOCAL statement_timeout = '10ms'; SELECT pg_sleep(1)`, true},
		{"read-only transaction (25006)", pgx.TxOptions{AccessMode: pgx.ReadOnly}, `INSERT INTO u VALUES (2)`, true},
		{"unique violation (23505)", pgx.TxOptions{}, `INSERT INTO u VALUES (1)`, false},
		{"bad value (22P02)", pgx.TxOptions{}, `SELECT 'x'::int`, false},
	} {
		err := pgErr(t, db, tc.begin, tc.sql)
		if got := outbox.IsTransient(err); got != tc.transient {
			t.Errorf("%s: IsTransient(%v) = %v, want %v", tc.name, err, got, tc.transient)
		}
	}
}

// A message that always fails with a transient error that is its own (its
// statement always times out) is not retried forever: after
// MaxTransientDeliveries deliveries it is dead-lettered with the reason,
// and the messages behind it on its partition flow. (Before: nacked and
// redelivered forever; nothing behind it on the partition ever moved.)
func TestAlwaysTimingOutMessageDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := setup(t)
	e.consume(ctx, func(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
		if msg.Metadata.Get("fault") == "slow" {
			_, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '5ms'; SELECT pg_sleep(1)`)
			return err
		}
		return nil
	})
	pub, err := e.kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	slowID := uuid.NewString()
	slow := message.NewMessage(slowID, []byte(`{"key":"k","n":99}`))
	slow.Metadata.Set(kafkax.KeyMetadata, "k")
	slow.Metadata.Set("fault", "slow")
	if err := pub.Publish(e.topic, slow); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := e.write(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	e.relay(ctx, nil, nil)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dead := e.deadLetters(dctx)
	select {
	case m := <-dead:
		m.Ack()
		reason := m.Metadata.Get(middleware.ReasonForPoisonedKey)
		if m.UUID != slowID || !strings.Contains(reason, "57014") || !strings.Contains(reason, "deliveries") {
			t.Fatalf("dead letter %s with reason %q, want %s for its repeated statement timeout", m.UUID, reason, slowID)
		}
	case <-dctx.Done():
		t.Fatal("the always-timing-out message was never dead-lettered")
	}
	e.waitEffects(ctx, 3)
	e.checkExactlyOnce(ctx, 3)
	e.checkOrder(ctx)
	if n := outbox.TransientGiveUps(); n < 1 {
		t.Fatalf("transient give-ups counted %d, want at least 1", n)
	}
	// The metrics an operator alerts on moved: the retries, and the dead
	// letter under its reason class.
	if n := testutil.ToFloat64(telemetry.TransientRetries.WithLabelValues(e.group)); n < 1 {
		t.Errorf("sagaflow_consumer_transient_retries_total{consumer=%q} = %v", e.group, n)
	}
	if n := testutil.ToFloat64(telemetry.DeadLetters.WithLabelValues(e.group, "transient_giveup")); n != 1 {
		t.Errorf("sagaflow_dead_letters_total{consumer=%q,reason=transient_giveup} = %v, want 1", e.group, n)
	}
}
