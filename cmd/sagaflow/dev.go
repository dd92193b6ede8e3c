package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/migrations"
)

// devDB is the database `sagaflow dev` creates in its private cluster.
const devDB = "sagaflow"

func runDev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("dev")
	dir := fs.String("dir", ".sagaflow", "directory for PostgreSQL and Kafka data (kept across runs)")
	pgPort := fs.Int("pg-port", 15432, "PostgreSQL port at 127.0.0.1")
	kafkaPort := fs.Int("kafka-port", 19092, "embedded Kafka port at 127.0.0.1")
	partitions := fs.Int("partitions", kafkax.DefaultPartitions, "partitions per topic")
	if err := parse(fs, args); err != nil {
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
	if err := kcfg.EnsureTopics(ctx, kafkax.DefaultTopics().All()...); err != nil {
		return err
	}

	fmt.Fprintf(stdout, "sagaflow dev is running (Ctrl-C stops it)\n")
	fmt.Fprintf(stdout, "  DATABASE_URL=%s   (migration version %d; log %s)\n", dbURL, v, pg.LogFile())
	fmt.Fprintf(stdout, "  KAFKA_BROKERS=%s   (embedded, data in %s)\n", kafka.Brokers()[0], filepath.Join(*dir, "kafka"))

	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping")
	return nil
}

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
