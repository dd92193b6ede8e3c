// Package bench measures Sagaflow end to end: it places orders through the
// API (or, in process, through the order service) and times each saga from
// its placement to its terminal state, observed as the OrderConfirmed or
// OrderCancelled event on the order events topic (never by polling sagas).
//
// A run drives the load in one of two ways. An open loop (Config.Rate)
// sends orders at fixed times whatever the answers and counts a saga's
// latency from its scheduled time, so a system that stalls cannot hide its
// latency by slowing the load down (coordinated omission). A closed loop
// (Config.Concurrency) runs workers that each place an order and wait for
// its saga to end before placing the next: it finds the throughput.
// Config.Refuse makes a fraction of the orders fail through the steps' real
// business rules (a sold-out SKU, a blocked customer, an undeliverable
// country), spread evenly over inventory, payment and shipping.
//
// Run measures either roles that already run (`sagaflow serve`; Config.API,
// DatabaseURL and Brokers say where) or a stack it starts in process: a
// throwaway PostgreSQL server (synchronous_commit on), the embedded kfake
// broker unless Brokers names real ones, and every role on a loopback
// listener with topics of its own. After the load it waits for the sagas
// in flight, counts refusals and compensations from the sagas' history,
// runs `sagaflow verify`'s checks, and returns a Report. `sagaflow bench`
// is its command line; BenchmarkSagas runs a short in-process run under
// `go test -bench`.
//
// Figures are reported, never asserted: see Report.Targets.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/verify"
)

// Defaults of Config's zero fields.
const (
	DefaultConcurrency = 64
	DefaultDuration    = 30 * time.Second
	DefaultSettle      = 60 * time.Second
	DefaultMaxInflight = 2000
	DefaultDBMaxConns  = 32
	DefaultSKUs        = 100
)

// Config configures a run.
type Config struct {
	// API is the base URL of running roles' API (http://host:port). Empty
	// starts an in-process stack.
	API string
	// DatabaseURL is the running roles' database (needed with API).
	DatabaseURL string
	// Brokers are Kafka's bootstrap brokers: needed with API; in process,
	// empty starts the embedded kfake broker.
	Brokers []string
	// Topics are the running roles' topics (default kafkax.DefaultTopics);
	// in process, the zero value makes topics with a fresh prefix.
	Topics kafkax.Topics
	// Partitions and ReplicationFactor of the topics an in-process stack
	// creates (default kafkax.DefaultPartitions and 1).
	Partitions        int
	ReplicationFactor int
	// Direct places orders by calling the in-process order service instead
	// of POST /orders (in process only).
	Direct bool

	// Rate runs an open loop of Rate orders per second; Concurrency runs a
	// closed loop of Concurrency workers. Set one (default: a closed loop
	// of DefaultConcurrency).
	Rate        float64
	Concurrency int
	// MaxInflight bounds an open loop's sagas in flight (default 2000).
	MaxInflight int
	// Duration is the measured part of the load (default 30 s); Warmup
	// runs before it and is not counted.
	Duration time.Duration
	Warmup   time.Duration
	// Settle bounds the wait for the sagas in flight after the load, and a
	// closed-loop worker's wait for one saga (default 60 s).
	Settle time.Duration
	// Refuse is the fraction (0 to 1) of orders built to be refused.
	Refuse float64
	// SKUs is how many SKUs the orders spread over (default 100); 1 makes
	// a hot-SKU benchmark, every reservation waiting for the same row lock.
	SKUs int

	// OutboxMode is the in-process relay's mode (default outbox.ModeWAL).
	OutboxMode outbox.Mode

	// DBMaxConns is the in-process stack's database pool size (default 32).
	DBMaxConns int
	// CPUProfile, when set, is a file to write this process's CPU profile
	// of the measured window to.
	CPUProfile string
	// PGStatements, in process, loads pg_stat_statements and reports the
	// PGStatements statements that took the most time in the window.
	PGStatements int
	// CPUPIDs are more processes (and their children) whose CPU time to
	// report, by name.
	CPUPIDs map[string]int
	// KeepTopics keeps the topics and consumer groups an in-process stack
	// made on a real broker (they are deleted by default).
	KeepTopics bool

	// Progress receives a line a second; nil is silent.
	Progress io.Writer
	// Logger receives the stack's warnings (default: warnings to stderr).
	Logger *slog.Logger
}

func (c *Config) normalise() error {
	switch {
	case c.Rate < 0:
		return errors.New("the rate must be positive")
	case c.Concurrency < 0:
		return errors.New("the concurrency must be positive")
	case c.Rate > 0 && c.Concurrency > 0:
		return errors.New("choose an open loop (--rate) or a closed loop (--concurrency), not both")
	case c.Refuse < 0 || c.Refuse > 1:
		return fmt.Errorf("--refuse %g: want a fraction from 0 to 1", c.Refuse)
	case c.Duration < 0 || c.Warmup < 0 || c.Settle < 0:
		return errors.New("durations must not be negative")
	case c.MaxInflight < 0 || c.DBMaxConns < 0 || c.Partitions < 0 || c.ReplicationFactor < 0 || c.PGStatements < 0 || c.SKUs < 0:
		return errors.New("sizes must not be negative")
	}
	if c.API != "" {
		if c.DatabaseURL == "" {
			return errors.New("measuring running roles (--api) needs their database: --database-url or DATABASE_URL")
		}
		if len(c.Brokers) == 0 {
			return errors.New("measuring running roles (--api) needs their Kafka brokers to watch the order events: --kafka-brokers or KAFKA_BROKERS")
		}
		if c.Direct {
			return errors.New("--direct places orders in process: it cannot go with --api")
		}
		if c.PGStatements > 0 {
			return errors.New("--pg-statements resets pg_stat_statements: in process only, not with --api")
		}
	}
	if c.Rate == 0 && c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.SKUs == 0 {
		c.SKUs = DefaultSKUs
	}
	if c.Settle == 0 {
		c.Settle = DefaultSettle
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.DBMaxConns == 0 {
		c.DBMaxConns = DefaultDBMaxConns
	}
	if c.OutboxMode == "" && c.API == "" {
		c.OutboxMode = outbox.ModeWAL
	}
	if c.Partitions == 0 {
		c.Partitions = kafkax.DefaultPartitions
	}
	if c.ReplicationFactor == 0 {
		c.ReplicationFactor = 1
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return nil
}

// Run runs a benchmark and returns its report. The report says whether the
// invariants hold afterwards (Report.OK); Run's error is for a run that
// could not be made. Everything Run started is stopped when it returns.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.normalise(); err != nil {
		return nil, err
	}
	var e *env
	var err error
	if cfg.API != "" {
		e, err = startRemote(ctx, &cfg)
	} else {
		e, err = startInProcess(ctx, &cfg)
	}
	if err != nil {
		return nil, err
	}
	defer e.close()
	for _, name := range slices.Sorted(maps.Keys(cfg.CPUPIDs)) {
		e.cpu = addSource(e.cpu, &cpuSource{name: name, pid: cfg.CPUPIDs[name], note: "with its child processes"})
	}
	return run(ctx, &cfg, e)
}

func run(ctx context.Context, cfg *Config, e *env) (*Report, error) {
	runID := uuid.NewString()[:8]
	// The measured window is set once a first saga has ended: until then
	// no saga counts.
	t := newTracker(time.Time{}, time.Time{}, cfg.MaxInflight)

	w, err := startWatcher(ctx, e.kafka, e.topics.OrderEvents, t.event)
	if err != nil {
		return nil, err
	}
	var closeWatcher sync.Once
	stopWatcher := func() { closeWatcher.Do(w.close) }
	defer stopWatcher()

	first, err := prime(ctx, e.placer, t, "bench-"+runID+"-first", cfg.Settle)
	if err != nil {
		return nil, err
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "bench  first saga ended in %.1fs; warm-up starts\n", first.Seconds())
	}
	t0 := time.Now().Add(50 * time.Millisecond)
	mStart := t0.Add(cfg.Warmup)
	mEnd := mStart.Add(cfg.Duration)
	t.setWindow(mStart, mEnd)

	// Progress lines, and the measured window's CPU samples and profile.
	var bgWG sync.WaitGroup
	defer bgWG.Wait()
	bg, stopBG := context.WithCancel(ctx)
	defer stopBG()
	phase := make(chan string, 1)
	phase <- "warm-up"
	bgWG.Go(func() { progress(bg, cfg.Progress, t, t0, phase) })
	win := &window{cfg: cfg, sources: e.cpu, pool: e.pool, relay: e.relay, t: t}
	winDone := make(chan struct{})
	bgWG.Go(func() {
		defer close(winDone)
		win.run(ctx, mStart, mEnd)
	})

	l := &loader{t: t, p: e.placer, refuse: cfg.Refuse, skus: cfg.SKUs, keyBase: "bench-" + runID + "-", t0: t0, end: mEnd, settle: cfg.Settle}
	if cfg.Rate > 0 {
		l.openLoop(ctx, cfg.Rate)
	} else {
		l.closedLoop(ctx, cfg.Concurrency)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("interrupted: %w", err)
	}
	setPhase(phase, "draining")
	// The sagas in flight end; then no saga of anyone runs and every
	// outbox is empty, for verify.
	settle := time.Now().Add(cfg.Settle)
	for t.inflight() > 0 && time.Now().Before(settle) {
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return nil, fmt.Errorf("interrupted: %w", err)
		}
	}
	<-winDone // at the window's end
	stopBG()
	quiet := max(time.Until(settle), 10*time.Second)
	if err := waitQuiet(ctx, e.pool, quiet); err != nil {
		cfg.Logger.Warn("the database did not settle before verify", "err", err)
	}
	stopWatcher()

	rep := &Report{
		Stack: e.stack, Transport: e.transport, Kafka: e.kafkaName, Outbox: e.outbox,
		Refuse: cfg.Refuse, SKUs: cfg.SKUs, DurationSeconds: cfg.Duration.Seconds(), WarmupSeconds: cfg.Warmup.Seconds(),
		SagasPerSecond: round(float64(t.inWindow.Load())/cfg.Duration.Seconds(), 2),
		Latency:        t.latency.Summary(), Post: t.post.Summary(),
		Placed: t.placedM.Load(), Ended: t.endedM.Load(), Confirmed: t.confirmed.Load(), Cancelled: t.cancelled.Load(),
		ExpectedRefusals: t.expectedRefusals.Load(), Errors: t.failed.Load(), ErrorSamples: t.samples(),
		UnexpectedOutcomes: t.unexpected.Load(), WatchErrors: w.errors.Load(),
		CPU: win.results(), CPUProfile: win.profile, Postgres: win.pg, Visibility: win.vis,
	}
	rep.Unfinished = rep.Placed - rep.Ended
	if hp, ok := e.placer.(*httpPlacer); ok && hp.rejected.Count() > 0 {
		rejected := hp.rejected.Summary()
		rep.Rejected = &rejected
	}
	if cfg.Rate > 0 {
		rep.Loop, rep.Rate = "open", cfg.Rate
		rep.Unsent = t.unsent.Load()
		rep.MaxSendLagMS = round(float64(t.maxLag.Load())/1e6, 3)
	} else {
		rep.Loop, rep.Concurrency = "closed", cfg.Concurrency
	}
	if msg, ok := w.lastErr.Load().(string); ok {
		rep.ErrorSamples = append(rep.ErrorSamples, "watching order events: "+msg)
	}
	for _, err := range win.errs {
		rep.ErrorSamples = append(rep.ErrorSamples, err.Error())
	}
	if err := history(ctx, e.pool, t.ids(), rep); err != nil {
		return nil, err
	}
	if rep.Stages, err = stages(ctx, e.pool, t.confirmedAt()); err != nil {
		return nil, err
	}
	vr, err := verify.Run(ctx, e.pool, verify.Options{DeadLetters: func(ctx context.Context) (map[string]int64, error) {
		return e.kafka.CountMessages(ctx, e.topics.DeadLetterTopics()...)
	}})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rep.Verify = summarise(vr)
	rep.setTargets()
	return rep, nil
}

func setPhase(ch chan string, p string) {
	select {
	case <-ch:
	default:
	}
	ch <- p
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// progress writes a line a second: elapsed time, phase, sagas ended in the
// last second, sagas in flight, p99 so far.
func progress(ctx context.Context, w io.Writer, t *tracker, t0 time.Time, phase chan string) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	cur := "warm-up"
	last := t.ended.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		select {
		case cur = <-phase:
		default:
		}
		if cur == "warm-up" && !time.Now().Before(t.mStart) {
			cur = "measuring"
		}
		t.prune(2 * time.Minute)
		if w == nil {
			continue
		}
		n := t.ended.Load()
		h, which := &t.latency, "p99"
		if h.Count() == 0 {
			h, which = &t.all, "p99 (warm-up)"
		}
		fmt.Fprintf(w, "bench %5.1fs  %-9s  %6d sagas/s  in flight %5d  %s %.1f ms  errors %d\n",
			time.Since(t0).Seconds(), cur, n-last, t.inflight(), which,
			float64(h.Quantile(0.99))/float64(time.Millisecond), t.failed.Load())
		last = n
	}
}

// window samples the CPU time of the processes and the database's
// statistics at the start and the end of the measured window, and profiles
// this process during it.
type window struct {
	cfg     *Config
	sources []*cpuSource
	pool    *pgxpool.Pool
	relay   *outbox.Relay
	t       *tracker
	secs    float64
	end     map[*cpuSource]float64
	profile string
	pg      *PGStats
	vis     *Visibility
	errs    []error
}

func (w *window) run(ctx context.Context, start, end time.Time) {
	if sleep(ctx, time.Until(start)) != nil {
		return
	}
	began := time.Now()
	for _, s := range w.sources {
		v, err := s.sample()
		s.start, s.ok = v, err == nil
	}
	if w.cfg.PGStatements > 0 {
		if err := resetStatements(ctx, w.pool); err != nil {
			w.errs = append(w.errs, err)
		}
	}
	pgStart, pgErr := takePGSnapshot(ctx, w.pool)
	var logStart, readsStart int64
	if w.relay != nil {
		logStart, readsStart = w.relay.Visibility()
	}
	if w.cfg.CPUProfile != "" {
		f, err := os.Create(w.cfg.CPUProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			w.errs = append(w.errs, fmt.Errorf("CPU profile: %w", err))
		} else {
			w.profile = w.cfg.CPUProfile
			defer func() {
				pprof.StopCPUProfile()
				if err := f.Close(); err != nil {
					w.errs = append(w.errs, fmt.Errorf("CPU profile: %w", err))
				}
			}()
		}
	}
	if sleep(ctx, time.Until(end)) != nil {
		return
	}
	w.secs = time.Since(began).Seconds()
	w.end = map[*cpuSource]float64{}
	for _, s := range w.sources {
		if v, err := s.sample(); err == nil && s.ok {
			w.end[s] = v
		}
	}
	if w.relay != nil && w.relay.Mode() == outbox.ModeWAL {
		l, r := w.relay.Visibility()
		w.vis = &Visibility{FromLog: l - logStart, SnapshotReads: r - readsStart}
	}
	sagas := w.t.inWindow.Load()
	if pgErr == nil {
		var pgEnd pgSnapshot
		if pgEnd, pgErr = takePGSnapshot(ctx, w.pool); pgErr == nil {
			w.pg = pgEnd.since(pgStart, sagas)
		}
	}
	if pgErr != nil {
		w.errs = append(w.errs, pgErr)
	}
	if w.cfg.PGStatements > 0 && w.pg != nil {
		var err error
		if w.pg.Statements, err = topStatements(ctx, w.pool, w.cfg.PGStatements, sagas); err != nil {
			w.errs = append(w.errs, err)
		}
		if err := statementTotals(ctx, w.pool, w.pg, sagas); err != nil {
			w.errs = append(w.errs, err)
		}
	}
}

func (w *window) results() []ProcessCPU {
	var out []ProcessCPU
	for _, s := range w.sources {
		v, ok := w.end[s]
		if !ok || w.secs <= 0 {
			continue
		}
		out = append(out, ProcessCPU{Name: s.name, PID: s.pid, Seconds: round(v-s.start, 3), Cores: round((v-s.start)/w.secs, 3), Note: s.noteFor()})
	}
	return out
}

// waitQuiet waits until no saga runs or compensates and every outbox is
// empty, or for at most d.
func waitQuiet(ctx context.Context, pool *pgxpool.Pool, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		var busy int64
		err := pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM saga.instances WHERE state IN ('running', 'compensating'))
			+ (SELECT count(*) FROM orders.outbox) + (SELECT count(*) FROM saga.outbox)
			+ (SELECT count(*) FROM inventory.outbox) + (SELECT count(*) FROM payment.outbox)
			+ (SELECT count(*) FROM shipping.outbox)`).Scan(&busy)
		if err == nil && busy == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return fmt.Errorf("%d sagas running or messages in outboxes after %s", busy, d)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// history counts the measured sagas' refusals, compensations and step
// timeouts from saga.history.
func history(ctx context.Context, pool *pgxpool.Pool, ids []uuid.UUID, rep *Report) error {
	if len(ids) == 0 {
		return nil
	}
	rows, err := pool.Query(ctx, `SELECT step, kind, event, count(*) FROM saga.history
		WHERE saga_id = ANY($1::uuid[])
		  AND ((kind = 'action' AND event IN ('refused', 'timed out')) OR (kind = 'compensation' AND event = 'succeeded'))
		GROUP BY step, kind, event`, ids)
	if err != nil {
		return fmt.Errorf("count refusals and compensations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var step, kind, event string
		var n int64
		if err := rows.Scan(&step, &kind, &event, &n); err != nil {
			return fmt.Errorf("count refusals and compensations: %w", err)
		}
		switch {
		case kind == "compensation":
			rep.Compensations += n
		case event == "timed out":
			rep.StepTimeouts += n
		default:
			rep.Refusals.Total += n
			switch step {
			case order.StepInventory:
				rep.Refusals.Inventory += n
			case order.StepPayment:
				rep.Refusals.Payment += n
			case order.StepShipping:
				rep.Refusals.Shipping += n
			}
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count refusals and compensations: %w", err)
	}
	return nil
}

func summarise(r *verify.Report) VerifyResult {
	res := VerifyResult{OK: r.OK(), Report: r}
	var broken, skipped []string
	for _, c := range r.Checks {
		switch {
		case c.Skipped != "":
			skipped = append(skipped, c.Name)
		case !c.OK:
			broken = append(broken, c.Name)
		}
	}
	if res.OK {
		res.Summary = fmt.Sprintf("all %d invariants hold", len(r.Checks)-len(skipped))
		if len(skipped) > 0 {
			res.Summary += fmt.Sprintf(" (%d skipped)", len(skipped))
		}
	} else {
		res.Summary = "INVARIANTS BROKEN: " + strings.Join(broken, "; ")
	}
	return res
}
