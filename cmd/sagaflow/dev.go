package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/api"
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
	partitions := fs.Int("partitions", 0, fmt.Sprintf("partitions per topic (0: %d; topics kept in --dir keep theirs)", kafkax.DefaultPartitions))
	httpAddr := fs.String("http", "127.0.0.1:8080", "API listen address")
	outboxMode := fs.String("outbox", "wal", "how the relay learns of committed outbox rows: wal (logical replication) or poll")
	var sf sagaFlags
	sf.register(fs)
	var af apiFlags
	af.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := af.check(); err != nil {
		return err
	}
	tokens, devToken, err := devOperators()
	if err != nil {
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

	pool, err := openPool(ctx, dbURL, 0)
	if err != nil {
		return err
	}
	defer pool.Close()
	apiPool, err := openPool(ctx, dbURL, int32(af.dbMaxConns))
	if err != nil {
		return err
	}
	defer apiPool.Close()
	if err := steps.SeedStock(ctx, pool, demoStock); err != nil {
		return err
	}
	stopTracing, err := startTracing(ctx, "sagaflow-dev")
	if err != nil {
		return err
	}
	defer stopTracing()
	stack, err := roles.New(roles.Config{
		Pool: pool, Kafka: kcfg, Topics: kafkax.DefaultTopics(), Roles: []string{roles.All}, HTTPAddr: *httpAddr,
		Saga: sf.config(), DeliveryStallAfter: sf.stallAfter, AllowInjection: true, Crash: crash, OutboxMode: mode,
		APIPool: apiPool, OperatorTokens: tokens, MaxInFlight: af.maxInFlight, MaxSagasInFlight: af.maxSagasInFlight,
		TraceURL: env("SAGAFLOW_TRACE_URL", ""), TraceQuery: env("SAGAFLOW_TRACE_QUERY", ""),
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
	fmt.Fprintf(stdout, "  console       http://%s%s/  (actions ask for the operator token below)\n", stack.Addr, roles.ConsolePath)
	fmt.Fprintf(stdout, "  DATABASE_URL=%s   (migration version %d; log %s)\n", dbURL, v, pg.LogFile())
	fmt.Fprintf(stdout, "  KAFKA_BROKERS=%s   (embedded, data in %s)\n", kafka.Brokers()[0], filepath.Join(*dir, "kafka"))
	fmt.Fprintf(stdout, "  demo stock    %s\n\n", demoStockLine())
	fmt.Fprintf(stdout, "Place an order:\n  curl -s -X POST http://%s/orders -H 'Content-Type: application/json' -H \"Idempotency-Key: $(date +%%s%%N)\" \\\n    -d '%s'\n\n", stack.Addr, demoOrder)
	fmt.Fprintf(stdout, "Read its status (paste the order_id or saga_id from the answer):\n  curl -s http://%s/orders/ORDER_ID\n  curl -s http://%s/sagas/SAGA_ID\n", stack.Addr, stack.Addr)
	fmt.Fprintf(stdout, "  sagaflow status SAGA_ID --database-url '%s'\n\n", dbURL)
	if devToken != "" {
		fmt.Fprintf(stdout, "Operator actions on a stuck saga need the operator token generated for this run (operator \"dev\"):\n")
		fmt.Fprintf(stdout, "  curl -s -X POST http://%s/sagas/SAGA_ID/retry -H 'Authorization: Bearer %s'\n\n", stack.Addr, devToken)
	} else {
		fmt.Fprintf(stdout, "Operator actions on a stuck saga need a token of $%s (operators: %s).\n\n", api.EnvOperatorTokens, describeOperators(tokens))
	}
	fmt.Fprintf(stdout, "Refusals: add \"inject\": {\"payment\": \"refuse\"} to the body (or put 99 of sku-2 in the items) to watch a saga compensate.\n")

	err = <-done
	fmt.Fprintln(stdout, "stopped")
	return err
}

// devOperators are the operator tokens of `sagaflow dev`: those of
// $SAGAFLOW_OPERATOR_TOKENS when it is set, else one generated for this
// run, for operator "dev", which is returned so that the banner can show
// it (dev is for one developer's machine; serve never shows a token).
func devOperators() (tokens *api.Tokens, generated string, err error) {
	if list := os.Getenv(api.EnvOperatorTokens); list != "" {
		tokens, err = api.ParseTokenList(list)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", api.EnvOperatorTokens, err)
		}
		return tokens, "", nil
	}
	generated = rand.Text()
	tokens, err = api.ParseTokenList("dev:" + generated)
	if err != nil {
		return nil, "", fmt.Errorf("generate an operator token: %w", err)
	}
	return tokens, generated, nil
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
