package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/bench"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

func runBench(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("bench")
	var c commonFlags
	c.register(fs)
	apiURL := fs.String("api", env("SAGAFLOW_API", ""), "base URL of running roles' API (e.g. http://127.0.0.1:8080); empty starts an in-process stack")
	direct := fs.Bool("direct", false, "in process: call the order service directly instead of POST /orders")
	rate := fs.Float64("rate", 0, "open loop: orders per second, sent on schedule whatever the answers")
	concurrency := fs.Int("concurrency", 0, fmt.Sprintf("closed loop: workers that each place an order and wait for its end (default %d when no --rate)", bench.DefaultConcurrency))
	maxInflight := fs.Int("max-inflight", bench.DefaultMaxInflight, "open loop: most sagas in flight")
	duration := fs.Duration("duration", bench.DefaultDuration, "measured load duration")
	warmup := fs.Duration("warmup", 3*time.Second, "load before the measurement, not counted")
	settle := fs.Duration("settle", bench.DefaultSettle, "how long to wait for the sagas in flight after the load")
	refuse := fs.Float64("refuse", 0, "fraction of orders refused by a step's business rules (0 to 1), spread over inventory, payment and shipping")
	skus := fs.Int("skus", bench.DefaultSKUs, "SKUs the orders spread over (1: every reservation contends for one stock row)")
	dbMaxConns := fs.Int("db-max-conns", bench.DefaultDBMaxConns, "in process: database pool size")
	cpuProfile := fs.String("cpuprofile", "", "write this process's CPU profile of the measured window to `file`")
	pgStatements := fs.Int("pg-statements", 0, "in process: report the `N` statements that took the most time (loads pg_stat_statements)")
	cpuPIDs := fs.String("cpu-pid", "", "more processes to report the CPU time of, name=pid[,name=pid…] (e.g. orchestrator=1234)")
	keepTopics := fs.Bool("keep-topics", false, "in process on a real broker: keep the run's topics and consumer groups")
	outboxMode := fs.String("outbox", "wal", "in process: how the relay learns of committed outbox rows, wal or poll")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	quiet := fs.Bool("quiet", false, "no progress lines")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow bench [flags]

Places orders and measures each saga from its placement to its terminal
state (the OrderConfirmed/OrderCancelled event on the order events topic).
Without --api it starts a throwaway PostgreSQL, embedded Kafka (unless
--kafka-brokers or KAFKA_BROKERS) and every role in this process; with
--api it measures running 'sagaflow serve' roles (needs --database-url and
--kafka-brokers). After the load it runs verify and exits 1 if an invariant
is broken. Targets are reported, never asserted.

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *apiURL == "" && set["database-url"] {
		return errors.New("--database-url goes with --api: the in-process stack starts its own PostgreSQL")
	}
	if *rate > 0 && set["concurrency"] {
		return errors.New("choose --rate (open loop) or --concurrency (closed loop), not both")
	}
	mode, err := outbox.ParseMode(*outboxMode)
	if err != nil {
		return err
	}
	pids, err := parsePIDs(*cpuPIDs)
	if err != nil {
		return err
	}
	cfg := bench.Config{
		API: *apiURL, Brokers: kafkax.ParseBrokers(c.brokers), Partitions: c.partitions, ReplicationFactor: c.replication,
		Direct: *direct, Rate: *rate, Concurrency: *concurrency, MaxInflight: *maxInflight,
		Duration: *duration, Warmup: *warmup, Settle: *settle, Refuse: *refuse, SKUs: *skus, DBMaxConns: *dbMaxConns,
		CPUProfile: *cpuProfile, PGStatements: *pgStatements, CPUPIDs: pids, KeepTopics: *keepTopics, Progress: os.Stderr,
		OutboxMode: mode,
	}
	if *quiet {
		cfg.Progress = nil
	}
	if *apiURL != "" {
		cfg.DatabaseURL = c.databaseURL
	}
	// Running roles use --topic-prefix (or the default names); the
	// in-process stack makes topics of its own unless one is given.
	if *apiURL != "" || set["topic-prefix"] {
		cfg.Topics = c.topics()
	}
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if *asJSON {
		err = rep.WriteJSON(stdout)
	} else {
		err = rep.PrintTable(stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		rep.Verify.Report.Print(os.Stderr)
		return exitError{1, errors.New("invariants broken after the run")}
	}
	return nil
}

// parsePIDs parses name=pid[,name=pid…].
func parsePIDs(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		name, p, ok := strings.Cut(part, "=")
		pid, err := strconv.Atoi(p)
		if !ok || name == "" || err != nil || pid <= 0 {
			return nil, fmt.Errorf("bad --cpu-pid %q: want name=pid, e.g. orchestrator=1234", part)
		}
		out[name] = pid
	}
	return out, nil
}
