// Package testenv gives tests real infrastructure: a PostgreSQL server and a
// Kafka cluster shared by the tests of one test binary, with a freshly
// migrated database, unique topics and unique consumer groups for each test,
// so tests run in parallel without seeing each other.
//
// PostgreSQL: DATABASE_URL names a server to use (the tests create their
// databases on it); when it is unset a throwaway cluster is started from the
// machine's PostgreSQL binaries in a temporary directory.
//
// Kafka: KAFKA_BROKERS names a cluster to use (the README's test command
// points it at a real Apache Kafka broker); when it is unset an in-process
// kfake cluster is started.
//
// A package that uses testenv calls testenv.Main from its TestMain so that
// what was started is stopped when its tests end.
package testenv

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/migrations"
)

var (
	pgOnce   sync.Once
	pgErr    error
	pgServer *pgserver.Server // nil when DATABASE_URL is used
	pgDir    string
	adminURL string // a URL of the server's maintenance database
	template string // migrated template database

	createMu sync.Mutex // CREATE DATABASE … TEMPLATE copies one at a time
	dbSeq    atomic.Int64

	kafkaOnce sync.Once
	kafkaErr  error
	embedded  *kafkax.Embedded
	brokers   []string
)

// Main runs the package's tests, then stops the PostgreSQL server and Kafka
// cluster they started, and exits with the tests' status.
func Main(m *testing.M) {
	code := m.Run()
	shutdown()
	os.Exit(code)
}

func shutdown() {
	if template != "" && pgServer == nil && adminURL != "" {
		if conn, err := pgx.Connect(context.Background(), adminURL); err == nil {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{template}.Sanitize()+" WITH (FORCE)")
			_ = conn.Close(context.Background())
		}
	}
	if pgServer != nil {
		if err := pgServer.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "testenv:", err)
		}
		_ = os.RemoveAll(pgDir)
	}
	if embedded != nil {
		embedded.Close()
	}
}

func startPostgres() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if url := os.Getenv("DATABASE_URL"); url != "" {
		adminURL = url
	} else {
		dir, err := os.MkdirTemp("", "sagaflow-pg-")
		if err != nil {
			pgErr = fmt.Errorf("create a directory for the test PostgreSQL: %w", err)
			return
		}
		pgDir = dir
		pgServer, err = pgserver.Start(ctx, pgserver.Options{
			Dir: dir,
			Settings: map[string]string{
				// A throwaway cluster: durability is not under test here
				// (the failure suite restarts PostgreSQL cleanly).
				"fsync":              "off",
				"synchronous_commit": "off",
				"full_page_writes":   "off",
				"max_connections":    "400",
				"shared_buffers":     "128MB",
				// Logical decoding streams only flushed WAL: with
				// synchronous_commit off the WAL writer's delay would
				// hold every hop back by up to its default 200 ms.
				"wal_writer_delay": "10ms",
			},
		})
		if err != nil {
			pgErr = err
			return
		}
		adminURL = pgServer.URL("postgres")
	}
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		pgErr = fmt.Errorf("connect to PostgreSQL (DATABASE_URL=%q): %w", os.Getenv("DATABASE_URL"), err)
		return
	}
	defer conn.Close(ctx)
	template = "sagaflow_tmpl_" + strings.ReplaceAll(uuid.NewString()[:8], "-", "")
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{template}.Sanitize()); err != nil {
		pgErr = fmt.Errorf("create template database: %w", err)
		return
	}
	if _, err := migrations.Apply(ctx, withDatabase(adminURL, template)); err != nil {
		pgErr = fmt.Errorf("migrate template database: %w", err)
	}
}

// withDatabase replaces the database name of a postgres:// URL.
func withDatabase(url, db string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return url
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, db)
}

// Database is a test's own migrated database.
type Database struct {
	// URL connects to the database.
	URL string
	// Pool is a connection pool on it, closed when the test ends.
	Pool *pgxpool.Pool
}

// DB creates a fresh migrated database for t and drops it when t ends.
func DB(t testing.TB) *Database {
	t.Helper()
	needPostgres(t)
	name := fmt.Sprintf("%s_t%d", template, dbSeq.Add(1))
	// Copies of one template are made one at a time.
	createMu.Lock()
	url := createDB(t, name, " TEMPLATE "+pgx.Identifier{template}.Sanitize()+" STRATEGY FILE_COPY")
	createMu.Unlock()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("testenv: parse %s: %v", url, err)
	}
	cfg.MaxConns = 16
	dbpool.Configure(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testenv: open pool on %s: %v", name, err)
	}
	// Cleanups run last-in first-out: the pool closes before the drop.
	t.Cleanup(pool.Close)
	return &Database{URL: url, Pool: pool}
}

// EmptyDB creates an empty (unmigrated) database for t, for migration tests.
func EmptyDB(t testing.TB) string {
	t.Helper()
	needPostgres(t)
	return createDB(t, fmt.Sprintf("%s_e%d", template, dbSeq.Add(1)), "")
}

// needPostgres starts the test PostgreSQL (once per binary) and its
// migrated template, or fails t.
func needPostgres(t testing.TB) {
	t.Helper()
	pgOnce.Do(startPostgres)
	if pgErr != nil {
		t.Fatalf("testenv: %v", pgErr)
	}
}

// createDB creates database name (with the CREATE DATABASE clauses in
// options), drops it when t ends, and returns its URL.
func createDB(t testing.TB, name, options string) string {
	t.Helper()
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatalf("testenv: connect to PostgreSQL: %v", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+options); err != nil {
		t.Fatalf("testenv: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), adminURL)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		// A relay's replication slot would keep the database alive.
		_, _ = conn.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active`, name)
		_, _ = conn.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
		_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return withDatabase(adminURL, name)
}

func startKafka() {
	if b := os.Getenv("KAFKA_BROKERS"); b != "" {
		brokers = kafkax.ParseBrokers(b)
		kafkaErr = kafkax.Config{Brokers: brokers}.Ping(context.Background())
		return
	}
	embedded, kafkaErr = kafkax.StartEmbedded(kafkax.EmbeddedOptions{})
	if kafkaErr == nil {
		brokers = embedded.Brokers()
	}
}

// RealKafka reports whether the tests run against an external cluster
// (KAFKA_BROKERS) rather than the embedded kfake one.
func RealKafka() bool { return os.Getenv("KAFKA_BROKERS") != "" }

// Kafka returns the configuration of the test cluster. Tests name their
// topics and groups with Name so that they never share them.
func Kafka(t testing.TB) kafkax.Config {
	t.Helper()
	kafkaOnce.Do(startKafka)
	if kafkaErr != nil {
		t.Fatalf("testenv: %v", kafkaErr)
	}
	return kafkax.Config{
		Brokers:           brokers,
		Partitions:        kafkax.DefaultPartitions,
		ReplicationFactor: 1,
		ClientID:          "sagaflow-test",
	}
}

var nameSeq atomic.Int64

// Name returns a name unique to this test binary run, for a topic or a
// consumer group: prefix, the test's name and a random suffix.
func Name(t testing.TB, prefix string) string {
	clean := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, t.Name())
	if len(clean) > 80 {
		clean = clean[:80]
	}
	return fmt.Sprintf("%s.%s.%s%d", prefix, clean, uuid.NewString()[:8], nameSeq.Add(1))
}
