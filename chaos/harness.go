package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/steps"
	"github.com/sagaflow/sagaflow/verify"
)

// Config configures a run.
type Config struct {
	// Bin is the sagaflow binary the role processes run.
	Bin string
	// Dir keeps the run's PostgreSQL, Kafka data and process logs.
	Dir string
	// KafkaScript runs a real Apache Kafka broker (scripts/kafka/kafka);
	// empty uses an embedded kfake broker.
	KafkaScript string
	// Duration of the load (default 30 s) and its rate in orders per second
	// (default 40).
	Duration time.Duration
	Rate     int
	// Seed makes the fault schedule and the order mix replayable.
	Seed uint64
	// Settle bounds the wait for every saga to end after the load (default
	// 3 minutes).
	Settle time.Duration
	// Progress receives a line a second; nil is silent.
	Progress io.Writer
}

// Harness is a running scenario: the processes, the database, Kafka, the load.
type Harness struct {
	cfg    Config
	sc     Scenario
	dir    string
	rng    *rand.Rand
	rngMu  sync.Mutex
	pg     *pgserver.Server
	dbURL  string
	pool   *pgxpool.Pool
	kafka  *kafkaCluster
	apiURL string

	procs    map[string][]*proc
	procsMu  sync.Mutex
	restarts atomic.Int64
	closed   atomic.Bool

	placed, accepted, apiErrors atomic.Int64
	faultsMu                    sync.Mutex
	faults                      []fault
	logMu                       sync.Mutex
	events                      *os.File
}

type fault struct {
	what       string
	start, end time.Time
}

// Result is one scenario's row.
type Result struct {
	Scenario    string `json:"scenario"`
	Seed        uint64 `json:"seed"`
	Started     int64  `json:"sagas_started"`
	Completed   int64  `json:"completed"`
	Compensated int64  `json:"compensated"`
	Failed      int64  `json:"failed"`
	Stuck       int64  `json:"stuck"`
	// Refused counts the sagas cancelled by a business refusal (sold out,
	// card declined, address blocked): the cancellations the order mix
	// asks for. Every other cancellation is one the faults caused.
	Refused        int64         `json:"refused_by_business_rules"`
	InFlight       int64         `json:"in_flight"`
	Duplicates     int64         `json:"duplicates_absorbed"`
	DeadLettered   int64         `json:"dead_lettered"`
	Restarts       int64         `json:"process_restarts"`
	APIErrors      int64         `json:"api_errors_retried"`
	Recovery       time.Duration `json:"longest_recovery"`
	VerifyOK       bool          `json:"verify_ok"`
	Verify         string        `json:"verify_report"`
	Dir            string        `json:"dir"`
	LoadDuration   time.Duration `json:"load_duration"`
	SettleDuration time.Duration `json:"settle_duration"`
}

// OK reports whether the scenario passed: every saga ended and every
// invariant holds.
func (r *Result) OK() bool { return r.VerifyOK && r.InFlight == 0 && r.Stuck == 0 }

// CancelledShare is the share of sagas that ended compensated or failed, in
// percent; RefusedShare the share refused by business rules.
func (r *Result) CancelledShare() float64 { return pct(r.Compensated+r.Failed, r.Started) }

// RefusedShare is the share of sagas refused by business rules, in percent.
func (r *Result) RefusedShare() float64 { return pct(r.Refused, r.Started) }

func pct(n, of int64) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// MaxFaultCancelledPP is how many percentage points the cancelled share of
// a DelayNotCancel scenario may exceed its business refusals' share.
const MaxFaultCancelledPP = 2.0

func (h *Harness) closing() bool { return h.closed.Load() }

func (h *Harness) logf(format string, args ...any) {
	h.logMu.Lock()
	defer h.logMu.Unlock()
	fmt.Fprintf(h.events, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (h *Harness) intn(n int) int {
	h.rngMu.Lock()
	defer h.rngMu.Unlock()
	return h.rng.IntN(n)
}

// Run runs scenario sc and returns its result. A scenario whose invariants
// fail returns a result with OK() false and keeps its directory; err is
// for a harness that could not run at all.
func Run(ctx context.Context, cfg Config, sc Scenario) (*Result, error) {
	if cfg.Duration <= 0 {
		cfg.Duration = 30 * time.Second
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 40
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 3 * time.Minute
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	dir := filepath.Join(cfg.Dir, fmt.Sprintf("%s-%d", sc.Name, cfg.Seed))
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	events, err := os.Create(filepath.Join(dir, "logs", "harness.log"))
	if err != nil {
		return nil, err
	}
	defer events.Close()
	h := &Harness{cfg: cfg, sc: sc, dir: dir, rng: rand.New(rand.NewPCG(cfg.Seed, 99)), procs: map[string][]*proc{}, events: events}
	defer h.shutdown()
	if err := h.boot(ctx); err != nil {
		return nil, err
	}
	res, err := h.run(ctx)
	if err != nil {
		return nil, err
	}
	res.Dir = dir
	if res.OK() {
		h.shutdown()
		_ = os.RemoveAll(dir)
		res.Dir = ""
	} else {
		_ = os.WriteFile(filepath.Join(dir, "verify.txt"), []byte(res.Verify), 0o644)
	}
	return res, nil
}

func (h *Harness) boot(ctx context.Context) error {
	var err error
	pgPort, err := pgserver.StablePort(1)
	if err != nil {
		return err
	}
	h.pg, err = pgserver.Start(ctx, pgserver.Options{Dir: filepath.Join(h.dir, "pg"), Port: pgPort, Settings: map[string]string{"max_connections": "300"}})
	if err != nil {
		return err
	}
	h.dbURL = h.pg.URL("postgres")
	if out, err := exec.CommandContext(ctx, h.cfg.Bin, "migrate", "--database-url", h.dbURL).CombinedOutput(); err != nil {
		return fmt.Errorf("migrate: %w: %s", err, out)
	}
	h.pool, err = pgxpool.New(ctx, h.dbURL)
	if err != nil {
		return err
	}
	if err := steps.SeedStock(ctx, h.pool, map[string]int{"chaos-sku": 100_000_000, "sold-out": 0}); err != nil {
		return err
	}
	nodes := 1
	if h.sc.Brokers > 0 {
		nodes = h.sc.Brokers
	}
	h.kafka, err = startKafka(ctx, h.cfg.KafkaScript, filepath.Join(h.dir, "kafka"), nodes)
	if err != nil {
		return err
	}
	if h.sc.Setup != nil {
		if err := h.sc.Setup(ctx, h); err != nil {
			return err
		}
	}
	kcfg := h.kafkaConfig()
	if err := kcfg.EnsureTopics(ctx, kafkax.DefaultTopics().All()...); err != nil {
		return err
	}
	port, err := pgserver.StablePort(1) // the API restarts on it after kill -9
	if err != nil {
		return err
	}
	h.apiURL = "http://127.0.0.1:" + strconv.Itoa(port)
	for _, role := range []string{"relay", "orchestrator", "inventory", "payment", "shipping"} {
		if err := h.addProc(role, nil); err != nil {
			return err
		}
	}
	if err := h.addProc("api", []string{"--http", "127.0.0.1:" + strconv.Itoa(port)}); err != nil {
		return err
	}
	return h.waitHealthy(ctx)
}

func (h *Harness) kafkaConfig() kafkax.Config {
	rf := int16(1)
	if h.kafka.nodes >= 3 {
		rf = 3
	}
	if h.sc.ReplicationFactor > 0 {
		rf = h.sc.ReplicationFactor
	}
	return kafkax.Config{Brokers: h.kafka.brokers(), Partitions: kafkax.DefaultPartitions, ReplicationFactor: rf, ClientID: "sagaflow-chaos"}
}

// addProc starts one more instance of role.
func (h *Harness) addProc(role string, extra []string) error {
	h.procsMu.Lock()
	idx := len(h.procs[role])
	kcfg := h.kafkaConfig()
	args := []string{"serve", "--role", role, "--database-url", h.dbURL, "--kafka-brokers", strings.Join(kcfg.Brokers, ","),
		"--replication-factor", strconv.Itoa(int(kcfg.ReplicationFactor)), "--db-max-conns", "8"}
	args = append(args, h.sc.ServeArgs...)
	args = append(args, extra...)
	// A stable instance id per slot: a restarted process is a static
	// consumer-group member that takes its partitions back at once.
	args = append(args, "--instance-id", fmt.Sprintf("%s-%d", role, idx))
	p := &proc{h: h, role: role, index: idx, args: args}
	h.procs[role] = append(h.procs[role], p)
	h.procsMu.Unlock()
	h.logf("start %s", p.name())
	return p.start()
}

// instances returns the processes of role.
func (h *Harness) instances(role string) []*proc {
	h.procsMu.Lock()
	defer h.procsMu.Unlock()
	return append([]*proc(nil), h.procs[role]...)
}

func (h *Harness) waitHealthy(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(h.apiURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("the API did not become ready within 60 s; logs in %s", filepath.Join(h.dir, "logs"))
}

func (h *Harness) shutdown() {
	if h.closed.Swap(true) {
		return
	}
	h.procsMu.Lock()
	var all []*proc
	for _, ps := range h.procs {
		all = append(all, ps...)
	}
	h.procsMu.Unlock()
	var wg sync.WaitGroup
	for _, p := range all {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop() }()
	}
	wg.Wait()
	if h.pool != nil {
		h.pool.Close()
	}
	if h.kafka != nil {
		_ = h.kafka.stop(context.Background())
	}
	if h.pg != nil {
		_ = h.pg.Stop()
	}
}

// markFault records a fault window for the recovery measure.
func (h *Harness) markFault(what string, start, end time.Time) {
	h.faultsMu.Lock()
	defer h.faultsMu.Unlock()
	h.faults = append(h.faults, fault{what, start, end})
	h.logf("fault %s from %s to %s", what, start.Format("15:04:05.000"), end.Format("15:04:05.000"))
}

// orderMix picks an order: about 80% succeed and 20% are refused, spread
// over the three steps (out of stock, card declined, address blocked).
func (h *Harness) orderMix() []byte {
	customer, sku, qty, country := "c-"+strconv.Itoa(h.intn(1000)), "chaos-sku", 1+h.intn(3), "DE"
	switch n := h.intn(100); {
	case n < 7:
		sku = "sold-out"
	case n < 14:
		customer = "blocked-" + customer
	case n < 20:
		country = "XX"
	}
	body := map[string]any{
		"customer_id": customer,
		"items":       []map[string]any{{"sku": sku, "quantity": qty}},
		"amount":      map[string]any{"value": fmt.Sprintf("%d.%02d", 5+h.intn(200), h.intn(100)), "currency": "EUR"},
		"shipping_address": map[string]any{
			"name": "Chaos", "line1": "1 Fault Line", "city": "Berlin", "postal_code": "10115", "country": country,
		},
	}
	if h.sc.Inject != nil {
		if inj := h.sc.Inject(h); inj != nil {
			body["inject"] = inj
		}
	}
	b, _ := json.Marshal(body)
	return b
}

// load places orders at the configured rate until ctx ends. Each order is
// retried with its idempotency key until the API accepts it (the API may be
// down, restarting, or without its database): no order is lost, none is
// placed twice.
func (h *Harness) load(ctx context.Context) {
	client := &http.Client{Timeout: 5 * time.Second}
	tick := time.NewTicker(time.Second / time.Duration(h.cfg.Rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		key, body := uuid.NewString(), h.orderMix()
		h.placed.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Keep trying after the load window: an order the client sent
			// must end up placed (the settle wait bounds this).
			deadline := time.Now().Add(h.cfg.Settle)
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest(http.MethodPost, h.apiURL+"/orders", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Idempotency-Key", key)
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK {
						h.accepted.Add(1)
						return
					}
					if resp.StatusCode < 500 {
						h.logf("order %s refused by the API: %d", key, resp.StatusCode)
						return
					}
				}
				h.apiErrors.Add(1)
				time.Sleep(100 * time.Millisecond)
			}
			h.logf("order %s never accepted", key)
		}()
	}
}

func (h *Harness) counts(ctx context.Context) (map[string]int64, error) {
	rows, err := h.pool.Query(ctx, `SELECT state, count(*) FROM saga.instances GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return nil, err
		}
		out[s] = n
	}
	return out, rows.Err()
}

func (h *Harness) progress(ctx context.Context, start time.Time, phase string) {
	if h.cfg.Progress == nil {
		return
	}
	c, err := h.counts(ctx)
	if err != nil {
		fmt.Fprintf(h.cfg.Progress, "%-12s %5.0fs %s: database unavailable (%v)\n", h.sc.Name, time.Since(start).Seconds(), phase, firstLine(err))
		return
	}
	fmt.Fprintf(h.cfg.Progress, "%-12s %5.0fs %s: placed=%d accepted=%d running=%d compensating=%d completed=%d compensated=%d failed=%d stuck=%d api_retries=%d restarts=%d\n",
		h.sc.Name, time.Since(start).Seconds(), phase, h.placed.Load(), h.accepted.Load(), c["running"], c["compensating"], c["completed"],
		c["compensated"], c["failed"], c["stuck"], h.apiErrors.Load(), h.restarts.Load())
}

func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func (h *Harness) run(ctx context.Context) (*Result, error) {
	start := time.Now()
	loadCtx, stopLoad := context.WithTimeout(ctx, h.cfg.Duration)
	defer stopLoad()
	var wg sync.WaitGroup
	wg.Add(1)
	loadDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(loadDone); h.load(loadCtx) }()
	faultErr := make(chan error, 1)
	go func() {
		if h.sc.Fault == nil {
			faultErr <- nil
			return
		}
		faultErr <- h.sc.Fault(loadCtx, h)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// Load phase.
loadPhase:
	for {
		select {
		case <-loadDone:
			break loadPhase
		case <-tick.C:
			h.progress(ctx, start, "load")
		}
	}
	if err := <-faultErr; err != nil {
		return nil, fmt.Errorf("scenario %s: inject fault: %w", h.sc.Name, err)
	}
	wg.Wait()
	loadDur := time.Since(start)
	// Every role must be back before the settle: bring stopped ones back.
	if h.sc.After != nil {
		if err := h.sc.After(ctx, h); err != nil {
			return nil, fmt.Errorf("scenario %s: after: %w", h.sc.Name, err)
		}
	}
	settleStart := time.Now()
	deadline := settleStart.Add(h.cfg.Settle)
	for {
		c, err := h.counts(ctx)
		if err == nil && c["running"]+c["compensating"] == 0 && h.drained(ctx) {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
			h.progress(ctx, start, "settle")
		}
	}
	h.progress(ctx, start, "done")
	return h.result(ctx, loadDur, time.Since(settleStart))
}

func (h *Harness) drained(ctx context.Context) bool {
	for _, s := range []string{"orders", "saga", "inventory", "payment", "shipping"} {
		b, err := outbox.New(s).Backlog(ctx, h.pool)
		if err != nil || b.Rows > 0 {
			return false
		}
	}
	return true
}

func (h *Harness) result(ctx context.Context, loadDur, settleDur time.Duration) (*Result, error) {
	r := &Result{Scenario: h.sc.Name, Seed: h.cfg.Seed, Restarts: h.restarts.Load(), APIErrors: h.apiErrors.Load(),
		LoadDuration: loadDur, SettleDuration: settleDur}
	c, err := h.counts(ctx)
	if err != nil {
		return nil, fmt.Errorf("count sagas: %w", err)
	}
	r.Completed, r.Compensated, r.Failed, r.Stuck = c["completed"], c["compensated"], c["failed"], c["stuck"]
	r.InFlight = c["running"] + c["compensating"]
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM saga.instances
WHERE state IN ('compensated', 'failed') AND reason LIKE '% refused: %'`).Scan(&r.Refused); err != nil {
		return nil, fmt.Errorf("count business refusals: %w", err)
	}
	for _, n := range c {
		r.Started += n
	}
	for _, s := range []string{"orders", "saga", "inventory", "payment", "shipping"} {
		n, err := outbox.DuplicatesAbsorbed(ctx, h.pool, s)
		if err != nil {
			return nil, err
		}
		r.Duplicates += n
	}
	kcfg := h.kafkaConfig()
	dl, err := kcfg.CountMessages(ctx, kafkax.DefaultTopics().DeadLetterTopics()...)
	if err != nil {
		return nil, fmt.Errorf("count dead letters: %w", err)
	}
	for _, n := range dl {
		r.DeadLettered += n
	}
	h.faultsMu.Lock()
	faults := append([]fault(nil), h.faults...)
	h.faultsMu.Unlock()
	for _, f := range faults {
		var last *time.Time
		if err := h.pool.QueryRow(ctx, `SELECT max(ended_at) FROM saga.instances WHERE created_at <= $1`, f.end).Scan(&last); err != nil {
			return nil, err
		}
		if last != nil && last.Sub(f.end) > r.Recovery {
			r.Recovery = last.Sub(f.end)
		}
	}
	if lost := h.placed.Load() - h.accepted.Load(); lost != 0 {
		r.Verify += fmt.Sprintf("FAIL %d order(s) sent by the load were never accepted by the API\n", lost)
	}
	if int64(r.Started) != h.accepted.Load() {
		r.Verify += fmt.Sprintf("FAIL %d orders accepted but %d sagas exist\n", h.accepted.Load(), r.Started)
	}
	rep, err := verify.Run(ctx, h.pool, verify.Options{
		AllowedDeadLetters: h.sc.DeadLettersAllowed,
		DeadLetters: func(ctx context.Context) (map[string]int64, error) {
			return kcfg.CountMessages(ctx, kafkax.DefaultTopics().DeadLetterTopics()...)
		},
	})
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	rep.Print(&b)
	r.Verify += b.String()
	r.VerifyOK = rep.OK() && !strings.HasPrefix(r.Verify, "FAIL")
	if h.sc.DelayNotCancel {
		if over := r.CancelledShare() - r.RefusedShare(); over > MaxFaultCancelledPP {
			r.VerifyOK = false
			r.Verify += fmt.Sprintf("FAIL the faults cancelled sagas: %.1f%% cancelled against %.1f%% refused by business rules (%.1f pp over, at most %.0f allowed)\n",
				r.CancelledShare(), r.RefusedShare(), over, MaxFaultCancelledPP)
		}
	}
	if h.sc.Check != nil {
		if err := h.sc.Check(ctx, h); err != nil {
			r.VerifyOK = false
			r.Verify += "FAIL scenario check: " + err.Error() + "\n"
		}
	}
	return r, nil
}

// PrintTable writes results as a table.
func PrintTable(w io.Writer, results []*Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tstarted\tcompleted\tcompensated\tfailed\tcancelled %\trefused %\tstuck\tdup absorbed\tdead-lettered\trestarts\tapi retries\trecovery\tverify\t")
	for _, r := range results {
		v := "ok"
		if !r.OK() {
			v = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%.1f\t%.1f\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t\n", r.Scenario, r.Started, r.Completed, r.Compensated, r.Failed,
			r.CancelledShare(), r.RefusedShare(), r.Stuck, r.Duplicates, r.DeadLettered, r.Restarts, r.APIErrors, r.Recovery.Round(100*time.Millisecond), v)
	}
	_ = tw.Flush()
}
