package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// DefaultSweepConcurrencies are the closed-loop loads a sweep runs when it
// is given none: from one worker (the latency floor) to well past the
// point where throughput stops growing.
var DefaultSweepConcurrencies = []int{1, 8, 32, 64, 256}

// SweepPoint is one run of a sweep: its load (Concurrency workers in a
// closed loop, or Rate orders per second in an open loop; the other is 0)
// and its report.
type SweepPoint struct {
	Concurrency int
	Rate        float64
	Report      *Report
}

// open reports whether the point is an open loop.
func (p SweepPoint) open() bool { return p.Rate > 0 }

// Load names the point's load, e.g. "closed loop 32 workers" or "open loop
// 250 orders/s".
func (p SweepPoint) Load() string {
	if p.open() {
		return fmt.Sprintf("open loop %s orders/s", fmtNum(p.Rate))
	}
	if p.Concurrency == 1 {
		return "closed loop 1 worker"
	}
	return fmt.Sprintf("closed loop %d workers", p.Concurrency)
}

// x is the point's place on a chart's load axis.
func (p SweepPoint) x() float64 {
	if p.open() {
		return p.Rate
	}
	return float64(p.Concurrency)
}

// setup is the report's description without its load: what every run of
// a sweep shares.
func (p SweepPoint) setup() string {
	r := p.Report
	loop := fmt.Sprintf("closed loop, %d workers", r.Concurrency)
	if r.Loop == "open" {
		loop = fmt.Sprintf("open loop, %g orders/s", r.Rate)
	}
	return strings.Replace(r.Describe(), ", "+loop, "", 1)
}

// commitsPerSaga is the database's commits per saga in the window, when
// the run measured them.
func (p SweepPoint) commitsPerSaga() (float64, bool) {
	if p.Report.Postgres == nil {
		return 0, false
	}
	return p.Report.Postgres.CommitsPerSaga, true
}

// SweepSeries is a named sweep, e.g. one relay mode's, so that several can
// be drawn on one chart (WriteSweepSVG) and saved (WriteSweepJSON).
type SweepSeries struct {
	Name   string
	Points []SweepPoint
}

// Sweep runs the benchmark once per load, one run after another: a closed
// loop for each of concurrencies, then an open loop for each of rates
// (none given: DefaultSweepConcurrencies). Every run takes base's other
// settings and, in process, a fresh stack, as Run does; with
// base.CPUProfile each run writes its own profile, named after its load
// (cpu.prof: cpu-c32.prof, cpu-r250.prof). A line per finished run goes to
// progress (nil: none).
//
// A run that cannot be made stops the sweep: Sweep returns the points so
// far and the error. A run whose invariants break (!Report.OK()) does not:
// Sweep finishes the sweep, then returns every point and an error naming
// the broken runs.
func Sweep(ctx context.Context, base Config, concurrencies []int, rates []float64, progress io.Writer) ([]SweepPoint, error) {
	if base.Rate != 0 || base.Concurrency != 0 {
		return nil, errors.New("a sweep sets each run's load: leave Config.Rate and Config.Concurrency zero")
	}
	if len(concurrencies) == 0 && len(rates) == 0 {
		concurrencies = DefaultSweepConcurrencies
	}
	loads, err := sweepLoads(concurrencies, rates)
	if err != nil {
		return nil, err
	}
	var points []SweepPoint
	var broken []string
	for i, p := range loads {
		cfg := base
		cfg.Concurrency, cfg.Rate = p.Concurrency, p.Rate
		if base.CPUProfile != "" {
			cfg.CPUProfile = profileFor(base.CPUProfile, p)
		}
		rep, err := Run(ctx, cfg)
		if err != nil {
			return points, fmt.Errorf("sweep run %d/%d (%s): %w", i+1, len(loads), p.Load(), err)
		}
		p.Report = rep
		points = append(points, p)
		verdict := ""
		if !rep.OK() {
			broken = append(broken, p.Load())
			verdict = ", " + rep.Verify.Summary
		}
		if progress != nil {
			fmt.Fprintf(progress, "sweep %d/%d: %s: %.1f sagas/s, p50 %.1f ms, p99 %.1f ms%s\n",
				i+1, len(loads), p.Load(), rep.SagasPerSecond, rep.Latency.P50, rep.Latency.P99, verdict)
		}
	}
	if len(broken) > 0 {
		return points, fmt.Errorf("invariants broken after %d of %d sweep runs: %s", len(broken), len(loads), strings.Join(broken, "; "))
	}
	return points, nil
}

// sweepLoads checks the loads and lists them in running order.
func sweepLoads(concurrencies []int, rates []float64) ([]SweepPoint, error) {
	var loads []SweepPoint
	for _, c := range concurrencies {
		if c <= 0 {
			return nil, fmt.Errorf("sweep concurrency %d: want a positive number of workers", c)
		}
		if slices.ContainsFunc(loads, func(p SweepPoint) bool { return p.Concurrency == c }) {
			return nil, fmt.Errorf("sweep concurrency %d given twice", c)
		}
		loads = append(loads, SweepPoint{Concurrency: c})
	}
	for _, r := range rates {
		if !(r > 0) || math.IsInf(r, 0) {
			return nil, fmt.Errorf("sweep rate %g: want a positive number of orders per second", r)
		}
		if slices.ContainsFunc(loads, func(p SweepPoint) bool { return p.Rate == r }) {
			return nil, fmt.Errorf("sweep rate %g given twice", r)
		}
		loads = append(loads, SweepPoint{Rate: r})
	}
	return loads, nil
}

// profileFor names a run's CPU profile after its load: cpu.prof becomes
// cpu-c32.prof or cpu-r250.prof.
func profileFor(path string, p SweepPoint) string {
	ext := filepath.Ext(path)
	load := "c" + strconv.Itoa(p.Concurrency)
	if p.open() {
		load = "r" + fmtNum(p.Rate)
	}
	return strings.TrimSuffix(path, ext) + "-" + load + ext
}

// PrintSweepTable writes a sweep as an aligned table, a row per run: its
// load, sagas/s, latency p50 and p99, the database's commits per saga
// (when measured) and what verify found.
func PrintSweepTable(w io.Writer, points []SweepPoint) error {
	if err := checkPoints(points); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "sagaflow bench --sweep: %s\n", sweepSetup([]SweepSeries{{Points: points}}))
	fmt.Fprintf(tw, "  load\t%9s\t%8s\t%8s\t%12s\tverify\n", "sagas/s", "p50 ms", "p99 ms", "commits/saga")
	for _, p := range points {
		r := p.Report
		commits := "-"
		if c, ok := p.commitsPerSaga(); ok {
			commits = fmt.Sprintf("%.1f", c)
		}
		verdict := "ok"
		if !r.OK() {
			verdict = r.Verify.Summary
		}
		fmt.Fprintf(tw, "  %s\t%9.1f\t%8.1f\t%8.1f\t%12s\t%s\n", p.Load(), r.SagasPerSecond, r.Latency.P50, r.Latency.P99, commits, verdict)
	}
	return tw.Flush()
}

// checkPoints checks that every point has a report and a load.
func checkPoints(points []SweepPoint) error {
	for i, p := range points {
		switch {
		case p.Report == nil:
			return fmt.Errorf("sweep point %d (%s) has no report", i+1, p.Load())
		case (p.Concurrency > 0) == (p.Rate > 0):
			return fmt.Errorf("sweep point %d: want a concurrency or a rate, got %d workers and %g orders/s", i+1, p.Concurrency, p.Rate)
		}
	}
	return nil
}

// sweepSetup describes what the series' runs share: each report's
// description without its load, keeping only the parts every run has
// (so "outbox wal" goes when a poll series is drawn beside it).
func sweepSetup(series []SweepSeries) string {
	var common []string
	first := true
	for _, s := range series {
		for _, p := range s.Points {
			parts := strings.Split(p.setup(), ", ")
			if first {
				common, first = parts, false
				continue
			}
			common = slices.DeleteFunc(common, func(c string) bool { return !slices.Contains(parts, c) })
		}
	}
	return strings.Join(common, ", ")
}

// sweepFile is the JSON of a saved sweep.
type sweepFile struct {
	Name   string           `json:"name"`
	Points []sweepPointJSON `json:"points"`
}

// sweepPointJSON is a run of a saved sweep: its load, its figures, and
// enough of its setup to describe it again (Report.Describe).
type sweepPointJSON struct {
	Loop           string   `json:"loop"`
	Concurrency    int      `json:"concurrency,omitempty"`
	Rate           float64  `json:"rate,omitempty"`
	SagasPerSecond float64  `json:"sagas_per_second"`
	P50            float64  `json:"p50_ms"`
	P99            float64  `json:"p99_ms"`
	CommitsPerSaga *float64 `json:"commits_per_saga,omitempty"`
	OK             bool     `json:"ok"`
	Verify         string   `json:"verify"`
	Describe       string   `json:"describe"`

	Stack           string  `json:"stack"`
	Transport       string  `json:"transport"`
	Kafka           string  `json:"kafka"`
	Outbox          string  `json:"outbox,omitempty"`
	Refuse          float64 `json:"refuse"`
	SKUs            int     `json:"skus"`
	DurationSeconds float64 `json:"duration_s"`
	WarmupSeconds   float64 `json:"warmup_s"`
}

// WriteSweepJSON saves a sweep as indented JSON: its name and, per run,
// the load, sagas/s, latency p50 and p99, commits per saga, whether the
// invariants held, and the run's description. ReadSweepJSON reads it back,
// e.g. to draw it beside a later sweep.
func WriteSweepJSON(w io.Writer, s SweepSeries) error {
	if err := checkPoints(s.Points); err != nil {
		return err
	}
	f := sweepFile{Name: s.Name, Points: make([]sweepPointJSON, 0, len(s.Points))}
	for _, p := range s.Points {
		r := p.Report
		pj := sweepPointJSON{
			Loop: "closed", Concurrency: p.Concurrency, Rate: p.Rate,
			SagasPerSecond: r.SagasPerSecond, P50: r.Latency.P50, P99: r.Latency.P99,
			OK: r.OK(), Verify: r.Verify.Summary, Describe: r.Describe(),
			Stack: r.Stack, Transport: r.Transport, Kafka: r.Kafka, Outbox: r.Outbox, Refuse: r.Refuse, SKUs: r.SKUs,
			DurationSeconds: r.DurationSeconds, WarmupSeconds: r.WarmupSeconds,
		}
		if p.open() {
			pj.Loop = "open"
		}
		if c, ok := p.commitsPerSaga(); ok {
			pj.CommitsPerSaga = &c
		}
		f.Points = append(f.Points, pj)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(f); err != nil {
		return fmt.Errorf("write the sweep as JSON: %w", err)
	}
	return nil
}

// ReadSweepJSON reads a sweep WriteSweepJSON saved. Its points' reports
// hold what the JSON kept: the load, sagas/s, latency p50 and p99, commits
// per saga, the verify verdict, and the setup Describe needs.
func ReadSweepJSON(r io.Reader) (SweepSeries, error) {
	var f sweepFile
	dec := json.NewDecoder(r)
	if err := dec.Decode(&f); err != nil {
		return SweepSeries{}, fmt.Errorf("read a saved sweep: %w", err)
	}
	if len(f.Points) == 0 {
		return SweepSeries{}, errors.New("read a saved sweep: it has no points")
	}
	s := SweepSeries{Name: f.Name, Points: make([]SweepPoint, 0, len(f.Points))}
	for _, pj := range f.Points {
		rep := &Report{
			Stack: pj.Stack, Transport: pj.Transport, Kafka: pj.Kafka, Outbox: pj.Outbox,
			Loop: pj.Loop, Concurrency: pj.Concurrency, Rate: pj.Rate, Refuse: pj.Refuse, SKUs: pj.SKUs,
			DurationSeconds: pj.DurationSeconds, WarmupSeconds: pj.WarmupSeconds,
			SagasPerSecond: pj.SagasPerSecond, Latency: Latency{P50: pj.P50, P99: pj.P99},
			Verify: VerifyResult{OK: pj.OK, Summary: pj.Verify},
		}
		if pj.CommitsPerSaga != nil {
			rep.Postgres = &PGStats{CommitsPerSaga: *pj.CommitsPerSaga}
		}
		p := SweepPoint{Report: rep}
		switch pj.Loop {
		case "closed":
			p.Concurrency = pj.Concurrency
		case "open":
			p.Rate = pj.Rate
		default:
			return SweepSeries{}, fmt.Errorf("read a saved sweep: point of loop %q: want closed or open", pj.Loop)
		}
		s.Points = append(s.Points, p)
	}
	if err := checkPoints(s.Points); err != nil {
		return SweepSeries{}, fmt.Errorf("read a saved sweep: %w", err)
	}
	return s, nil
}

// fmtNum formats a number in its shortest form: 250, 2.5, 1500.
func fmtNum(v float64) string {
	return strconv.FormatFloat(round(v, 6), 'f', -1, 64)
}
