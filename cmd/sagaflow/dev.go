package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/migrations"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/steps"
)

// devDB is the database `sagaflow dev` creates in its private cluster.
const devDB = "sagaflow"

func runDev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("dev")
	dir := fs.String("dir", ".sagaflow", "directory for PostgreSQL and Kafka data (kept across runs)")
	pgPort := fs.Int("pg-port", 15432, "PostgreSQL port at 127.0.0.1")
	kafkaPort := fs.Int("kafka-port", 19092, "embedded Kafka port at 127.0.0.1")
	partitions := fs.Int("partitions", kafkax.DefaultPartitions, "partitions per topic")
	httpAddr := fs.String("http", "127.0.0.1:8080", "API listen address")
	outboxMode := fs.String("outbox", "wal", "how the relay learns of committed outbox rows: wal (logical replication) or poll")
	var sf sagaFlags
	sf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	mode, err := outbox.ParseMode(*outboxMode)
	if err != nil {
		return err
	}

	pg, err := pgserver.Start(ctx, pgserver.Options{Dir: filepath.Join(*dir, "pg"), Port: *pgPort})
	if err != nil {
		return err
	}
	defer func() {
		if err := pg.Stop(); err != nil {
			slog.Error("stop PostgreSQL", "err", err)
		}
	}()
	if err := createDatabase(ctx, pg.URL("postgres"), devDB); err != nil {
		return err
	}
	dbURL := pg.URL(devDB)
	v, err := migrations.Apply(ctx, dbURL)
	if err != nil {
		return err
	}

	if err := os.MkdirAll(filepath.Join(*dir, "kafka"), 0o755); err != nil {
		return fmt.Errorf("create Kafka data directory: %w", err)
	}
	kafka, err := kafkax.StartEmbedded(kafkax.EmbeddedOptions{
		DataDir:    filepath.Join(*dir, "kafka"),
		Port:       *kafkaPort,
		Partitions: *partitions,
	})
	if err != nil {
		return fmt.Errorf("%w (is another `sagaflow dev` running? choose another --kafka-port)", err)
	}
	defer kafka.Close()
	kcfg := kafkax.Config{Brokers: kafka.Brokers(), Partitions: int32(*partitions), ReplicationFactor: 1, ClientID: "sagaflow-dev"}

	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	dbpool.Configure(pcfg)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("open database pool: %w", err)
	}
	defer pool.Close()
	if err := steps.SeedStock(ctx, pool, demoStock); err != nil {
		return err
	}
	stack, err := roles.New(roles.Config{
		Pool: pool, Kafka: kcfg, Topics: kafkax.DefaultTopics(), Roles: []string{roles.All}, HTTPAddr: *httpAddr,
		Saga: sf.config(), DeliveryStallAfter: sf.stallAfter, AllowInjection: true, Crash: crash, OutboxMode: mode,
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- stack.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-stack.Ready():
	}

	fmt.Fprintf(stdout, "sagaflow dev is running (Ctrl-C stops it)\n")
	fmt.Fprintf(stdout, "  API           http://%s  (OpenAPI at /openapi.json)\n", stack.Addr)
	fmt.Fprintf(stdout, "  DATABASE_URL=%s   (migration version %d; log %s)\n", dbURL, v, pg.LogFile())
	fmt.Fprintf(stdout, "  KAFKA_BROKERS=%s   (embedded, data in %s)\n", kafka.Brokers()[0], filepath.Join(*dir, "kafka"))
	fmt.Fprintf(stdout, "  demo stock    %s\n\n", demoStockLine())
	fmt.Fprintf(stdout, "Place an order:\n  curl -s -X POST http://%s/orders -H 'Content-Type: application/json' -H \"Idempotency-Key: $(date +%%s%%N)\" \\\n    -d '%s'\n\n", stack.Addr, demoOrder)
	fmt.Fprintf(stdout, "Read its status (paste the order_id or saga_id from the answer):\n  curl -s http://%s/orders/ORDER_ID\n  curl -s http://%s/sagas/SAGA_ID\n", stack.Addr, stack.Addr)
	fmt.Fprintf(stdout, "  sagaflow status SAGA_ID --database-url '%s'\n\n", dbURL)
	fmt.Fprintf(stdout, "Refusals: add \"inject\": {\"payment\": \"refuse\"} to the body (or put 99 of sku-2 in the items) to watch a saga compensate.\n")

	err = <-done
	fmt.Fprintln(stdout, "stopped")
	return err
}

// demoStock is what `sagaflow dev` puts on the shelves.
var demoStock = map[string]int{"sku-1": 1000, "sku-2": 50, "sku-3": 10}

func demoStockLine() string {
	return "sku-1=1000 sku-2=50 sku-3=10 (reset at every start)"
}

const demoOrder = `{"customer_id":"c-42","items":[{"sku":"sku-1","quantity":2}],"amount":{"value":"19.99","currency":"EUR"},"shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}`

// createDatabase creates db on the server unless it exists.
func createDatabase(ctx context.Context, adminURL, db string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", db, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}
