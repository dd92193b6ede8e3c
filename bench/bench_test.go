package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
)

func TestBuckets(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1000, 123456789, 1 << 40, 1<<40 + 12345} {
		i := bucketOf(v)
		if up := bucketUpper(i); up < v {
			t.Errorf("bucket %d of %d ends at %d, below it", i, v, up)
		}
		if i > 0 && bucketUpper(i-1) >= v {
			t.Errorf("bucket %d of %d: the bucket before ends at %d, not below it", i, v, bucketUpper(i-1))
		}
		if v >= subCount && float64(bucketUpper(i)-v) > float64(v)/subCount {
			t.Errorf("bucket of %d ends at %d: more than 1/%d off", v, bucketUpper(i), subCount)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Max() != 0 || h.Mean() != 0 {
		t.Fatal("an empty histogram should answer 0")
	}
	r := rand.New(rand.NewPCG(1, 2))
	var exact []time.Duration
	for range 100_000 {
		d := time.Duration(r.ExpFloat64() * float64(20*time.Millisecond))
		exact = append(exact, d)
		h.Record(d)
	}
	slices.Sort(exact)
	for _, q := range []float64{0.5, 0.95, 0.99, 0.999} {
		want := exact[int(q*float64(len(exact)))-1]
		got := h.Quantile(q)
		if diff := float64(got-want) / float64(want); diff < 0 || diff > 0.01 {
			t.Errorf("p%g = %v, exact %v (off by %.2f%%)", 100*q, got, want, 100*diff)
		}
	}
	if h.Max() != exact[len(exact)-1] || h.Quantile(1) != exact[len(exact)-1] {
		t.Errorf("max %v / p100 %v, want %v", h.Max(), h.Quantile(1), exact[len(exact)-1])
	}
	if h.Quantile(0) != exact[0] {
		t.Errorf("p0 = %v, want the minimum %v", h.Quantile(0), exact[0])
	}
	if h.Count() != 100_000 {
		t.Errorf("count %d", h.Count())
	}
	s := h.Summary()
	if s.Count != 100_000 || s.P50 <= 0 || s.P50 > s.P95 || s.P95 > s.P99 || s.P99 > s.Max {
		t.Errorf("summary out of order: %+v", s)
	}
}

func TestMixSpreadsRefusals(t *testing.T) {
	count := func(refuse float64, n int64) map[kind]int {
		c := map[kind]int{}
		for i := range n {
			c[mixKind(i, refuse)]++
		}
		return c
	}
	if c := count(0, 1000); c[happy] != 1000 {
		t.Errorf("refuse 0: %v", c)
	}
	if c := count(1, 999); c[happy] != 0 || c[refuseInventory] != 333 || c[refusePayment] != 333 || c[refuseShipping] != 333 {
		t.Errorf("refuse 1: %v", c)
	}
	c := count(0.3, 3000)
	if c[happy] != 2100 || c[refuseInventory] != 300 || c[refusePayment] != 300 || c[refuseShipping] != 300 {
		t.Errorf("refuse 0.3 over 3000 orders: %v", c)
	}
	// Evenly over time: any 100 consecutive orders hold 30 refusals, ±1.
	for start := int64(0); start < 2900; start += 37 {
		n := 0
		for i := start; i < start+100; i++ {
			if mixKind(i, 0.3) != happy {
				n++
			}
		}
		if n < 29 || n > 31 {
			t.Fatalf("orders %d to %d hold %d refusals", start, start+99, n)
		}
	}
	for k := range kinds {
		if errs := request(k, 7).Validate(); len(errs) > 0 {
			t.Errorf("order of kind %d is invalid: %v", k, errs)
		}
	}
}

func TestTrackerMatchesEventsInAnyOrder(t *testing.T) {
	t0 := time.Now()
	tr := newTracker(t0, t0.Add(time.Minute), 10)
	a, b, c := uuid.New(), uuid.New(), uuid.New()
	tr.slots <- struct{}{}
	tr.slots <- struct{}{}
	tr.begun.Add(3)
	// a: the event comes after the POST answer.
	tr.placed(a, &tracked{start: t0, measured: true, expect: order.EventConfirmed, slot: true})
	tr.event(order.Event{Type: order.EventPlaced, SagaID: a}, t0.Add(time.Millisecond))
	tr.event(order.Event{Type: order.EventConfirmed, SagaID: a}, t0.Add(10*time.Millisecond))
	tr.event(order.Event{Type: order.EventConfirmed, SagaID: a}, t0.Add(90*time.Millisecond)) // redelivered
	// b: the event comes before the POST answer.
	tr.event(order.Event{Type: order.EventCancelled, SagaID: b}, t0.Add(20*time.Millisecond))
	done := make(chan struct{})
	tr.placed(b, &tracked{start: t0, measured: true, expect: order.EventConfirmed, done: done, slot: true})
	select {
	case <-done:
	default:
		t.Error("a saga whose event came first did not end when placed")
	}
	// c: not measured (warm-up), still in flight.
	tr.placed(c, &tracked{start: t0.Add(-time.Second), expect: order.EventConfirmed})

	if got := tr.inflight(); got != 1 {
		t.Errorf("in flight %d, want 1", got)
	}
	if len(tr.slots) != 0 {
		t.Errorf("%d slots still held", len(tr.slots))
	}
	if tr.endedM.Load() != 2 || tr.confirmed.Load() != 1 || tr.cancelled.Load() != 1 || tr.unexpected.Load() != 1 || tr.inWindow.Load() != 2 {
		t.Errorf("ended %d confirmed %d cancelled %d unexpected %d in window %d", tr.endedM.Load(), tr.confirmed.Load(),
			tr.cancelled.Load(), tr.unexpected.Load(), tr.inWindow.Load())
	}
	if got := tr.latency.Max(); got != 20*time.Millisecond {
		t.Errorf("max latency %v, want 20ms", got)
	}
	if got := tr.latency.Quantile(0.5); got < 10*time.Millisecond || got > 10*time.Millisecond+10*time.Millisecond/subCount {
		t.Errorf("p50 %v, want about 10ms", got)
	}
	if ids := tr.ids(); len(ids) != 2 {
		t.Errorf("measured ids %v", ids)
	}
	// An event of a saga nobody placed is forgotten in time.
	tr.event(order.Event{Type: order.EventConfirmed, SagaID: uuid.New()}, time.Now().Add(-time.Hour))
	tr.prune(time.Minute)
	if len(tr.early) != 0 {
		t.Errorf("%d early events kept", len(tr.early))
	}
}

func TestReport(t *testing.T) {
	rep := &Report{Stack: "in-process", Transport: "http", Kafka: "kfake", Loop: "open", Rate: 250, Refuse: 0.3,
		DurationSeconds: 60, WarmupSeconds: 3, SagasPerSecond: 249.5,
		Latency: Latency{Count: 15000, P50: 12, P95: 40, P99: 80, Max: 150, Mean: 15},
		Placed:  15000, Ended: 15000, Confirmed: 10500, Cancelled: 4500, ExpectedRefusals: 4500,
		Refusals:      Refusals{Inventory: 1500, Payment: 1500, Shipping: 1500, Total: 4500},
		Compensations: 4500,
		CPU:           []ProcessCPU{{Name: "this process", Seconds: 30, Cores: 0.5}, {Name: "postgres", PID: 42, Seconds: 20, Cores: 0.33}},
		Verify:        VerifyResult{OK: true, Summary: "all 13 invariants hold"},
	}
	rep.setTargets()
	status := map[string]string{}
	for _, tg := range rep.Targets {
		status[tg.Name] = tg.Status
	}
	if status["≥1500 completed sagas/s (kfake)"] != "missed" || status["p99 ≤ 100 ms at open-loop 250/s"] != "met" ||
		status["p50 ≤ 30 ms at open-loop 250/s"] != "met" || status["sagaflow verify passes"] != "met" {
		t.Errorf("targets: %+v", rep.Targets)
	}
	var buf bytes.Buffer
	if err := rep.PrintTable(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sagas/s completed", "249.5", "latency p99", "80.0 ms", "refusals", "4500 (inventory 1500, payment 1500, shipping 1500)",
		"CPU postgres (pid 42)", "20.00 s (0.33 cores)", "all 13 invariants hold", "open loop, 250 orders/s", "(POST /orders)"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, buf.String())
		}
	}
	buf.Reset()
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back["sagas_per_second"] != 249.5 || back["latency"].(map[string]any)["p99_ms"] != 80.0 ||
		back["refusals"].(map[string]any)["total"] != 4500.0 || back["verify"].(map[string]any)["ok"] != true {
		t.Errorf("JSON: %s", buf.String())
	}
}

func TestParseStat(t *testing.T) {
	st, err := parseStat("1234 (post (gres) x) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0")
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != 77 || st.ticks != 250+50+7+3 {
		t.Errorf("parsed %+v", st)
	}
	if _, err := parseStat("1234 (short) S 1"); err == nil {
		t.Error("a short line parsed")
	}
	if s, err := treeCPUSeconds(os.Getpid()); err != nil || s < 0 {
		t.Errorf("CPU of this process: %v, %v", s, err)
	}
}

// A broker's JVM that had used less than warmBrokerCPU seconds of CPU when
// the window opened is reported as still warming up; a warm one, or a
// process without the check, is not.
func TestNoteForWarmingBroker(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		src  cpuSource
		want string // "" : the note alone
	}{
		{"fresh JVM", cpuSource{note: "broker", start: 12, warmAfter: warmBrokerCPU}, "broker; still warming up: 12 s of CPU since it started, under 60 s"},
		{"warm JVM", cpuSource{note: "broker", start: 75, warmAfter: warmBrokerCPU}, ""},
		{"no check", cpuSource{note: "postmaster and backends", start: 1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.src.noteFor()
			if tt.want == "" {
				if got != tt.src.note {
					t.Errorf("note %q, want %q", got, tt.src.note)
				}
				return
			}
			if !strings.HasPrefix(got, tt.want) || !strings.Contains(got, "run again") {
				t.Errorf("note %q, want it to start with %q and say to run again", got, tt.want)
			}
		})
	}
	if isJVM(os.Getpid()) {
		t.Error("this test binary taken for a JVM")
	}
}

func TestConfig(t *testing.T) {
	for _, c := range []Config{
		{Rate: 10, Concurrency: 2},
		{Refuse: 1.5},
		{API: "http://127.0.0.1:1"},
		{API: "http://127.0.0.1:1", DatabaseURL: "postgres://x", Brokers: []string{"b:9092"}, Direct: true},
	} {
		if err := c.normalise(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	var c Config
	if err := c.normalise(); err != nil || c.Concurrency != DefaultConcurrency || c.Duration != DefaultDuration {
		t.Errorf("defaults: %v %+v", err, c)
	}
}

func needPostgres(t testing.TB) {
	t.Helper()
	if _, err := pgserver.BinDir(); err != nil {
		t.Skip(err)
	}
}

// TestRunInProcess makes a short in-process run with refusals (a few
// seconds of load; skipped with -short).
func TestRunInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, Kafka and every role")
	}
	needPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	brokers := kafkax.ParseBrokers(os.Getenv("KAFKA_BROKERS"))
	rep, err := Run(ctx, Config{Rate: 40, Duration: 2 * time.Second, Warmup: 500 * time.Millisecond, Refuse: 0.3,
		Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	if len(brokers) > 0 {
		// scripts/kafka's broker is a JVM on this machine: its CPU is
		// reported, with the warm-up check.
		srcs := brokerSources(brokers)
		if len(srcs) == 0 || srcs[0].warmAfter != warmBrokerCPU {
			t.Errorf("broker %v: CPU sources %+v, want the JVM with its warm-up check", brokers, srcs)
		}
	}
	var buf bytes.Buffer
	_ = rep.PrintTable(&buf)
	t.Logf("\n%s", buf.String())
	if !rep.OK() {
		t.Errorf("verify: %s", rep.Verify.Summary)
	}
	if rep.Placed == 0 || rep.Ended != rep.Placed || rep.Errors != 0 || rep.UnexpectedOutcomes != 0 {
		t.Errorf("placed %d ended %d errors %d unexpected %d", rep.Placed, rep.Ended, rep.Errors, rep.UnexpectedOutcomes)
	}
	if rep.Refusals.Total != rep.ExpectedRefusals || rep.Refusals.Inventory == 0 || rep.Refusals.Payment == 0 || rep.Refusals.Shipping == 0 {
		t.Errorf("refusals %+v, expected %d", rep.Refusals, rep.ExpectedRefusals)
	}
	// A payment refusal undoes the reservation, a shipping one the charge
	// and the reservation.
	if want := rep.Refusals.Payment + 2*rep.Refusals.Shipping; rep.Compensations != want {
		t.Errorf("compensations %d, want %d", rep.Compensations, want)
	}
}

// BenchmarkSagas runs a closed loop of 32 workers for 5 s (after a 1 s
// warm-up) on an in-process stack (kfake, or KAFKA_BROKERS) and reports
// completed sagas/s and latency percentiles. One run is one iteration:
//
//	go test -run '^$' -bench Sagas -benchtime 1x ./bench/
func BenchmarkSagas(b *testing.B) {
	needPostgres(b)
	for b.Loop() {
		rep, err := Run(b.Context(), Config{Concurrency: 32, Duration: 5 * time.Second, Warmup: time.Second,
			Brokers: kafkax.ParseBrokers(os.Getenv("KAFKA_BROKERS"))})
		if err != nil {
			b.Fatal(err)
		}
		if !rep.OK() {
			b.Errorf("verify after the run: %s", rep.Verify.Summary)
		}
		b.ReportMetric(rep.SagasPerSecond, "sagas/s")
		b.ReportMetric(rep.Latency.P50, "p50-ms")
		b.ReportMetric(rep.Latency.P99, "p99-ms")
	}
}

// endingPlacer places orders whose sagas end after delay (the terminal
// event reaches the tracker as the watcher would hand it over), or never
// when delay is negative.
type endingPlacer struct {
	t     *tracker
	delay time.Duration
}

func (p endingPlacer) place(ctx context.Context, key string, k kind, sku int) (uuid.UUID, error) {
	id := uuid.New()
	if p.delay >= 0 {
		time.AfterFunc(p.delay, func() {
			p.t.event(order.Event{Type: order.EventConfirmed, SagaID: id}, time.Now())
		})
	}
	return id, nil
}

// The clock starts only once a first saga has ended: a slow start-up (a
// consumer group still taking its partitions) cannot fill the warm-up and
// the measured window, and the first saga counts in neither. A first saga
// that never ends fails the run instead of measuring nothing. Before, a
// closed loop of one worker on the real broker measured 0 sagas in a
// one-second window when the first saga took longer than the warm-up.
func TestPrimeStartsTheClockAfterAFirstSaga(t *testing.T) {
	t.Parallel()
	tr := newTracker(time.Time{}, time.Time{}, 10)
	took, err := prime(t.Context(), endingPlacer{t: tr, delay: 300 * time.Millisecond}, tr, "first", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if took < 300*time.Millisecond {
		t.Errorf("prime returned after %s, before the saga ended", took)
	}
	if tr.inflight() != 0 || tr.placedM.Load() != 0 || tr.endedM.Load() != 0 || tr.inWindow.Load() != 0 {
		t.Errorf("the first saga counts: in flight %d, measured placed %d ended %d, in window %d",
			tr.inflight(), tr.placedM.Load(), tr.endedM.Load(), tr.inWindow.Load())
	}

	stuck := newTracker(time.Time{}, time.Time{}, 10)
	if _, err := prime(t.Context(), endingPlacer{t: stuck, delay: -1}, stuck, "first", 200*time.Millisecond); err == nil ||
		!strings.Contains(err.Error(), "did not end within 200ms") {
		t.Errorf("a first saga that never ends: error %v", err)
	}
}

// TestWALTargets checks the goals of the issue that moved the outbox onto
// the WAL: each reported for the run it is about, met or missed by the
// figures of the run.
func TestWALTargets(t *testing.T) {
	t.Parallel()
	pg := func(commits float64) *PGStats { return &PGStats{CommitsPerSaga: commits} }
	for _, tc := range []struct {
		name string
		rep  Report
		want map[string]string // target name → status; a goal of the WAL issue absent here must be absent from the report
	}{
		{"8 workers on kfake, both met", Report{Kafka: "kfake", Loop: "closed", Concurrency: 8, SagasPerSecond: 201.2, Latency: Latency{P50: 28}, Postgres: pg(6.5)},
			map[string]string{"≥200 sagas/s and p50 ≤ 30 ms at 8 workers (kfake)": "met", "≤8 PostgreSQL commits per saga": "met"}},
		{"8 workers on kfake, fast enough but p50 too high", Report{Kafka: "kfake", Loop: "closed", Concurrency: 8, SagasPerSecond: 201.2, Latency: Latency{P50: 38.3}, Postgres: pg(6.6)},
			map[string]string{"≥200 sagas/s and p50 ≤ 30 ms at 8 workers (kfake)": "missed", "≤8 PostgreSQL commits per saga": "met"}},
		{"8 workers on kfake, too slow", Report{Kafka: "kfake", Loop: "closed", Concurrency: 8, SagasPerSecond: 176.7, Latency: Latency{P50: 25}, Postgres: pg(8.1)},
			map[string]string{"≥200 sagas/s and p50 ≤ 30 ms at 8 workers (kfake)": "missed", "≤8 PostgreSQL commits per saga": "missed"}},
		{"64 workers on kfake", Report{Kafka: "kfake", Loop: "closed", Concurrency: 64, SagasPerSecond: 292.9, Postgres: pg(4.1)},
			map[string]string{"≥450 sagas/s at 64 workers (kfake)": "missed", "≤8 PostgreSQL commits per saga": "met"}},
		{"64 workers on a real broker", Report{Kafka: "127.0.0.1:19092", Loop: "closed", Concurrency: 64, SagasPerSecond: 300, Postgres: pg(4.0)},
			map[string]string{"≥300 sagas/s at 64 workers (real broker)": "met", "≤8 PostgreSQL commits per saga": "met"}},
		{"8 workers on a real broker: no throughput goal", Report{Kafka: "127.0.0.1:19092", Loop: "closed", Concurrency: 8, SagasPerSecond: 300, Postgres: pg(6.0)},
			map[string]string{"≤8 PostgreSQL commits per saga": "met"}},
		{"open loop, running roles (no commits measured)", Report{Kafka: "kfake", Loop: "open", Rate: 250, SagasPerSecond: 250},
			map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rep := tc.rep
			rep.setTargets()
			got := map[string]string{}
			for _, tg := range rep.Targets {
				got[tg.Name] = tg.Status
			}
			for name, want := range tc.want {
				if got[name] != want {
					t.Errorf("target %q: %q, want %q (targets %+v)", name, got[name], want, rep.Targets)
				}
			}
			for name := range got {
				if _, ok := tc.want[name]; !ok && (strings.Contains(name, "workers") || strings.Contains(name, "commits per saga")) {
					t.Errorf("target %q reported for a run it is not about", name)
				}
			}
		})
	}
}
