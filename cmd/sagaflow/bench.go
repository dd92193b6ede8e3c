package main

import (
	"bytes"
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
	warmup := fs.Duration("warmup", 3*time.Second, "load before the measurement, not counted; it starts once a first saga has ended end to end (consumer groups joined)")
	settle := fs.Duration("settle", bench.DefaultSettle, "how long to wait for the sagas in flight after the load")
	refuse := fs.Float64("refuse", 0, "fraction of orders refused by a step's business rules (0 to 1), spread over inventory, payment and shipping")
	skus := fs.Int("skus", bench.DefaultSKUs, "SKUs the orders spread over (1: every reservation contends for one stock row)")
	dbMaxConns := fs.Int("db-max-conns", bench.DefaultDBMaxConns, "in process: database pool size")
	cpuProfile := fs.String("cpuprofile", "", "write this process's CPU profile of the measured window to `file`")
	pgStatements := fs.Int("pg-statements", 0, "in process: report the `N` statements that took the most time (loads pg_stat_statements)")
	cpuPIDs := fs.String("cpu-pid", "", "more processes to report the CPU time of, name=pid[,name=pid…] (e.g. orchestrator=1234)")
	keepTopics := fs.Bool("keep-topics", false, "in process on a real broker: keep the run's topics and consumer groups")
	outboxMode := fs.String("outbox", "wal", "in process: how the relay learns of committed outbox rows, wal or poll")
	asJSON := fs.Bool("json", false, "print the report as JSON (with --sweep: the sweep's points)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	var sw sweepFlags
	fs.BoolVar(&sw.run, "sweep", false, "run the benchmark once per load (--sweep-concurrency, then --sweep-rates), save the points and draw sagas/s and latency against load")
	fs.StringVar(&sw.concurrency, "sweep-concurrency", joinInts(bench.DefaultSweepConcurrencies), "with --sweep: closed-loop loads, `workers`, comma separated")
	fs.StringVar(&sw.rates, "sweep-rates", "", "with --sweep: open-loop loads, `orders/s`, comma separated (run after the closed loops)")
	fs.StringVar(&sw.svg, "sweep-svg", "sweep.svg", "with --sweep or --sweep-from: write the chart (SVG) to `file`")
	fs.StringVar(&sw.json, "sweep-json", "sweep.json", "with --sweep: save the sweep's points (JSON) to `file`, for --sweep-compare and --sweep-from")
	fs.StringVar(&sw.compare, "sweep-compare", "", "with --sweep or --sweep-from: draw saved sweeps beside it, `name=file.json[,name=file.json…]` (name= optional: the saved name)")
	fs.StringVar(&sw.name, "sweep-name", "", "with --sweep: the sweep's `name` in the chart and its JSON (default: outbox mode and Kafka, e.g. \"wal, kfake\")")
	fs.StringVar(&sw.from, "sweep-from", "", "run nothing: redraw the chart from saved sweeps, `file.json[,name=file.json…]`")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow bench [flags]

Places orders and measures each saga from its placement to its terminal
state (the OrderConfirmed/OrderCancelled event on the order events topic).
Without --api it starts a throwaway PostgreSQL, embedded Kafka (unless
--kafka-brokers or KAFKA_BROKERS) and every role in this process; with
--api it measures running 'sagaflow serve' roles (needs --database-url and
--kafka-brokers). After the load it runs verify and exits 1 if an invariant
is broken. Targets are reported, never asserted.

--sweep runs it once per load, one run after another, each on a fresh
stack with the other flags (--duration, --outbox, --kafka-brokers,
--refuse …): a closed loop per --sweep-concurrency, then an open loop per
--sweep-rates. It prints a table, saves the points as JSON (--sweep-json)
and draws sagas/s and latency p50/p99 against load as SVG (--sweep-svg),
with earlier sweeps from their JSON beside it (--sweep-compare). It exits
1 if a run broke an invariant. --sweep-from redraws saved sweeps without
running anything:

  sagaflow bench --sweep --outbox poll --sweep-json poll.json --sweep-svg poll.svg
  sagaflow bench --sweep --sweep-compare "poll, kfake=poll.json"
  sagaflow bench --sweep-from sweep.json,poll.json --sweep-svg both.svg

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := c.checkBrokers(fs); err != nil {
		return err
	}
	if *apiURL == "" && set["database-url"] {
		return errors.New("--database-url goes with --api: the in-process stack starts its own PostgreSQL")
	}
	if *rate > 0 && set["concurrency"] {
		return errors.New("choose --rate (open loop) or --concurrency (closed loop), not both")
	}
	if err := sw.check(set, *asJSON); err != nil {
		return err
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
		cfg.DatabaseURL = c.dbURL()
	}
	// Running roles use --topic-prefix (or the default names); the
	// in-process stack makes topics of its own unless one is given.
	if *apiURL != "" || set["topic-prefix"] {
		cfg.Topics = c.topics()
	}
	// The in-process stack traces when the OTEL_* environment asks for it
	// (the README's tracing overhead is measured so).
	stopTracing, err := startTracing(ctx, "sagaflow-bench")
	if err != nil {
		return err
	}
	defer stopTracing()
	if sw.on() {
		return sw.exec(ctx, cfg, *asJSON, *quiet, stdout)
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

// sweepFlags are bench's --sweep flags.
type sweepFlags struct {
	run                                          bool
	concurrency, rates, svg, json, compare, name string
	from                                         string
}

// on reports whether the command sweeps (or redraws a sweep) instead of
// making one run.
func (f *sweepFlags) on() bool { return f.run || f.from != "" }

// check rejects flags that do not go together.
func (f *sweepFlags) check(set map[string]bool, asJSON bool) error {
	if !f.on() {
		for _, name := range []string{"sweep-concurrency", "sweep-rates", "sweep-json", "sweep-name"} {
			if set[name] {
				return fmt.Errorf("--%s goes with --sweep", name)
			}
		}
		for _, name := range []string{"sweep-svg", "sweep-compare"} {
			if set[name] {
				return fmt.Errorf("--%s goes with --sweep or --sweep-from", name)
			}
		}
		return nil
	}
	if set["rate"] || set["concurrency"] {
		return errors.New("--sweep sets each run's load: give --sweep-concurrency (closed loops) and --sweep-rates (open loops) instead of --concurrency and --rate")
	}
	if f.from == "" {
		return nil
	}
	if f.run {
		return errors.New("--sweep runs a sweep, --sweep-from redraws saved ones: choose one")
	}
	for _, name := range []string{"sweep-concurrency", "sweep-rates", "sweep-json", "sweep-name"} {
		if set[name] {
			return fmt.Errorf("--sweep-from runs nothing: --%s does not apply (name a saved sweep with name=file.json)", name)
		}
	}
	if asJSON {
		return errors.New("--sweep-from runs nothing: the points are already in its JSON files (--json does not apply)")
	}
	return nil
}

// exec runs the sweep (or reads the saved ones), saves it, draws the chart
// and prints the tables. A sweep cut short, or with a run whose invariants
// broke, is still saved and drawn before the error is returned.
func (f *sweepFlags) exec(ctx context.Context, cfg bench.Config, asJSON, quiet bool, stdout io.Writer) error {
	// Saved sweeps are read first: a typo should not cost a sweep.
	compare, err := readSweeps("--sweep-compare", f.compare)
	if err != nil {
		return err
	}
	out := stdout // where to say what was written
	if asJSON {
		out = os.Stderr
	}
	var series []bench.SweepSeries
	var runErr error
	if f.from != "" {
		if series, err = readSweeps("--sweep-from", f.from); err != nil {
			return err
		}
		if len(series) == 0 {
			return errors.New("--sweep-from names no saved sweep")
		}
	} else {
		concs, err := parseList("--sweep-concurrency", f.concurrency, func(s string) (int, error) {
			n, err := strconv.Atoi(s)
			if err == nil && n <= 0 {
				err = errors.New("not positive")
			}
			return n, err
		})
		if err != nil {
			return err
		}
		rates, err := parseList("--sweep-rates", f.rates, func(s string) (float64, error) {
			r, err := strconv.ParseFloat(s, 64)
			if err == nil && !(r > 0) {
				err = errors.New("not positive")
			}
			return r, err
		})
		if err != nil {
			return err
		}
		if len(concs) == 0 && len(rates) == 0 {
			return errors.New("--sweep-concurrency and --sweep-rates are both empty: no load to run")
		}
		var progress io.Writer = os.Stderr
		if quiet {
			progress = nil
		}
		points, err := bench.Sweep(ctx, cfg, concs, rates, progress)
		if len(points) == 0 {
			return err
		}
		runErr = err
		name := f.name
		if name == "" {
			name = sweepName(points[0].Report)
		}
		cur := bench.SweepSeries{Name: name, Points: points}
		series = []bench.SweepSeries{cur}
		if err := writeFile(f.json, func(w io.Writer) error { return bench.WriteSweepJSON(w, cur) }); err != nil {
			return errors.Join(runErr, err)
		}
		if asJSON {
			if err := bench.WriteSweepJSON(stdout, cur); err != nil {
				return errors.Join(runErr, err)
			}
		}
	}
	drawn := append(series, compare...)
	if err := writeFile(f.svg, func(w io.Writer) error { return bench.WriteSweepSVG(w, "", drawn...) }); err != nil {
		return errors.Join(runErr, err)
	}
	if !asJSON {
		for i, s := range drawn {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			if len(drawn) > 1 {
				fmt.Fprintf(stdout, "[%s]\n", s.Name)
			}
			if err := bench.PrintSweepTable(stdout, s.Points); err != nil {
				return errors.Join(runErr, err)
			}
		}
		fmt.Fprintln(stdout)
	}
	if f.from == "" {
		fmt.Fprintf(out, "sweep points written to %s\n", f.json)
	}
	fmt.Fprintf(out, "sweep chart written to %s\n", f.svg)
	if runErr != nil {
		for _, p := range series[0].Points {
			if !p.Report.OK() && p.Report.Verify.Report != nil {
				fmt.Fprintf(os.Stderr, "%s:\n", p.Load())
				p.Report.Verify.Report.Print(os.Stderr)
			}
		}
		return exitError{1, runErr}
	}
	return nil
}

// sweepName names a sweep after its relay mode and Kafka, e.g. "wal,
// kfake".
func sweepName(r *bench.Report) string {
	var parts []string
	for _, p := range []string{r.Outbox, r.Kafka} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return "sweep"
	}
	return strings.Join(parts, ", ")
}

// readSweeps reads saved sweeps from file.json[,name=file.json…]; a name
// given replaces the saved one.
func readSweeps(flagName, list string) ([]bench.SweepSeries, error) {
	files, err := parseSweepFiles(flagName, list)
	if err != nil {
		return nil, err
	}
	var out []bench.SweepSeries
	for _, f := range files {
		file, err := os.Open(f.path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}
		s, err := bench.ReadSweepJSON(file)
		file.Close()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flagName, f.path, err)
		}
		if f.name != "" {
			s.Name = f.name
		}
		out = append(out, s)
	}
	return out, nil
}

type sweepFile struct{ name, path string }

// parseSweepFiles parses file.json[,name=file.json…]. A name may hold
// commas, as the default ones do ("wal, kfake=wal.json"): a part with no
// "=" is a file when it ends in .json or is one, else the start of a name.
func parseSweepFiles(flagName, list string) ([]sweepFile, error) {
	var out []sweepFile
	var pending []string // a name's parts before its "="
	for _, part := range strings.Split(list, ",") {
		if name, path, ok := strings.Cut(part, "="); ok {
			name = strings.TrimSpace(strings.Join(append(pending, name), ","))
			path = strings.TrimSpace(path)
			if name == "" || path == "" {
				return nil, fmt.Errorf("bad %s %q: want name=file.json or file.json", flagName, part)
			}
			out, pending = append(out, sweepFile{name, path}), nil
			continue
		}
		if p := strings.TrimSpace(part); len(pending) == 0 && (p == "" || strings.HasSuffix(p, ".json") || isFile(p)) {
			if p != "" {
				out = append(out, sweepFile{path: p})
			}
			continue
		}
		pending = append(pending, part)
	}
	if len(pending) > 0 {
		return nil, fmt.Errorf("bad %s %q: want name=file.json or an existing file", flagName, strings.TrimSpace(strings.Join(pending, ",")))
	}
	return out, nil
}

func isFile(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular()
}

// parseList parses a comma-separated list of loads.
func parseList[T any](flagName, list string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, part := range strings.Split(list, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		v, err := parse(part)
		if err != nil {
			return nil, fmt.Errorf("bad %s %q: want positive numbers, comma separated, e.g. 1,8,32", flagName, part)
		}
		out = append(out, v)
	}
	return out, nil
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

// writeFile writes what write makes to path; when write fails, path is
// left as it was.
func writeFile(path string, write func(io.Writer) error) error {
	var buf bytes.Buffer
	if err := write(&buf); err != nil {
		return err
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
