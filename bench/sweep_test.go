package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/kafkax"
)

// sweepReport is a synthetic run's report.
func sweepReport(outbox string, concurrency int, rate, tput, p50, p99 float64, ok bool) *Report {
	r := &Report{Stack: "in-process", Transport: "http", Kafka: "kfake", Outbox: outbox, Loop: "closed", Concurrency: concurrency,
		SKUs: 100, DurationSeconds: 30, WarmupSeconds: 3, SagasPerSecond: tput, Latency: Latency{P50: p50, P99: p99},
		Verify: VerifyResult{OK: ok, Summary: "all 13 invariants hold"}}
	if rate > 0 {
		r.Loop, r.Concurrency, r.Rate = "open", 0, rate
	}
	if !ok {
		r.Verify.Summary = "INVARIANTS BROKEN: exactly one terminal event"
	}
	return r
}

// syntheticSweep is a closed-loop sweep over 1, 8, 32, 64 and 256 workers,
// then an open loop at each of rates.
func syntheticSweep(name, outbox string, scale float64, rates ...float64) SweepSeries {
	s := SweepSeries{Name: name}
	for i, c := range []int{1, 8, 32, 64, 256} {
		tput := scale * float64(c) * 40 / (1 + float64(c)/32)
		rep := sweepReport(outbox, c, 0, tput, 20+float64(i)*30/scale, 40+float64(i)*80/scale, true)
		rep.Postgres = &PGStats{CommitsPerSaga: 12.5 - float64(i)}
		s.Points = append(s.Points, SweepPoint{Concurrency: c, Report: rep})
	}
	for _, r := range rates {
		s.Points = append(s.Points, SweepPoint{Rate: r, Report: sweepReport(outbox, 0, r, r*0.99, 15, 60, r < 1000)})
	}
	return s
}

// svgElement is an element of the chart, with its attributes and text.
type svgElement struct {
	name  string
	attrs map[string]string
	text  string
}

// parseSVG parses the chart with encoding/xml (failing on markup that is
// not well-formed) and returns its elements in document order.
func parseSVG(t *testing.T, data []byte) []*svgElement {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(data))
	var out, open []*svgElement
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v\n%s", err, data)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			e := &svgElement{name: tok.Name.Local, attrs: map[string]string{}}
			if tok.Name.Space != "http://www.w3.org/2000/svg" {
				t.Errorf("<%s> in namespace %q", tok.Name.Local, tok.Name.Space)
			}
			for _, a := range tok.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			out, open = append(out, e), append(open, e)
		case xml.EndElement:
			open = open[:len(open)-1]
		case xml.CharData:
			if len(open) > 0 {
				open[len(open)-1].text += string(tok)
			}
		}
	}
	if len(out) == 0 || out[0].name != "svg" {
		t.Fatalf("the document is not an <svg>:\n%s", data)
	}
	return out
}

func TestWriteSweepSVG(t *testing.T) {
	wal := syntheticSweep("wal & kfake <new>", "wal", 2, 100, 250, 1000)
	poll := syntheticSweep("poll, kfake", "poll", 1)
	var buf bytes.Buffer
	if err := WriteSweepSVG(&buf, "", wal, poll); err != nil {
		t.Fatal(err)
	}
	els := parseSVG(t, buf.Bytes())

	root := els[0]
	for _, a := range []string{"width", "height", "viewBox"} {
		if root.attrs[a] == "" {
			t.Errorf("<svg> has no %s", a)
		}
	}
	if els[1].name != "title" || els[2].name != "rect" || els[2].attrs["fill"] != "#fff" || els[2].attrs["width"] != "100%" {
		t.Errorf("the chart does not start with its title and a white background: %+v %+v", els[1], els[2])
	}

	// One line per series, per loop the series ran, per metric.
	lines := map[string]int{}
	colours := map[string]string{}
	for _, e := range els {
		if e.name != "polyline" || e.attrs["data-metric"] == "offered" {
			continue
		}
		key := e.attrs["data-series"] + "|" + e.attrs["data-loop"] + "|" + e.attrs["data-metric"]
		lines[key]++
		if e.attrs["data-metric"] == "p99" && e.attrs["stroke-dasharray"] == "" {
			t.Errorf("%s: p99 is not dashed", key)
		}
		if e.attrs["data-metric"] == "p50" && e.attrs["stroke-dasharray"] != "" {
			t.Errorf("%s: p50 is dashed", key)
		}
		if c, ok := colours[e.attrs["data-series"]]; ok && c != e.attrs["stroke"] {
			t.Errorf("series %s drawn in %s and %s", e.attrs["data-series"], c, e.attrs["stroke"])
		}
		colours[e.attrs["data-series"]] = e.attrs["stroke"]
	}
	want := map[string]int{}
	for _, m := range []string{"sagas_per_second", "p50", "p99"} {
		want[wal.Name+"|closed|"+m] = 1
		want[poll.Name+"|closed|"+m] = 1
		want[wal.Name+"|open|"+m] = 1
	}
	for k, n := range want {
		if lines[k] != n {
			t.Errorf("%d lines %q, want %d", lines[k], k, n)
		}
	}
	if len(lines) != len(want) {
		t.Errorf("lines %v, want %v", lines, want)
	}
	if colours[wal.Name] == colours[poll.Name] {
		t.Errorf("both series drawn in %s", colours[wal.Name])
	}

	texts := map[string]bool{}
	for _, e := range els {
		if e.name == "text" {
			texts[strings.TrimSpace(e.text)] = true
		}
	}
	for _, label := range []string{"1", "8", "32", "64", "256", "100", "250", "1000", wal.Name, poll.Name,
		"latency p50", "latency p99", "invariants broken", DefaultSweepTitle, "sagas/s", "latency (ms)",
		// What both series share; the outbox mode is not.
		"in-process (POST /orders), Kafka kfake, refuse 0%, 100 SKUs, 30s measured after 3s warm-up"} {
		if !texts[label] {
			t.Errorf("no text %q in the chart", label)
		}
	}
}

func TestWriteSweepSVGRejects(t *testing.T) {
	for name, series := range map[string][]SweepSeries{
		"nothing":      nil,
		"no points":    {{Name: "empty"}},
		"no report":    {{Name: "x", Points: []SweepPoint{{Concurrency: 1}}}},
		"no load":      {{Name: "x", Points: []SweepPoint{{Report: sweepReport("wal", 1, 0, 1, 1, 1, true)}}}},
		"two loads":    {{Name: "x", Points: []SweepPoint{{Concurrency: 1, Rate: 5, Report: sweepReport("wal", 1, 0, 1, 1, 1, true)}}}},
		"one is wrong": {syntheticSweep("a", "wal", 1), {Name: "b", Points: []SweepPoint{{Concurrency: 2}}}},
	} {
		if err := WriteSweepSVG(io.Discard, "t", series...); err == nil {
			t.Errorf("%s: drawn", name)
		}
	}
}

func TestSweepJSONRoundTrip(t *testing.T) {
	in := syntheticSweep("wal, kfake", "wal", 1, 250, 1500)
	in.Points[1].Report.Postgres = nil // commits not measured
	var buf bytes.Buffer
	if err := WriteSweepJSON(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadSweepJSON(bytes.NewReader(buf.Bytes()))
	if err != nil {
		t.Fatalf("%v\n%s", err, buf.String())
	}
	if out.Name != in.Name || len(out.Points) != len(in.Points) {
		t.Fatalf("read %q with %d points, want %q with %d", out.Name, len(out.Points), in.Name, len(in.Points))
	}
	for i, p := range in.Points {
		q := out.Points[i]
		r, s := p.Report, q.Report
		if q.Concurrency != p.Concurrency || q.Rate != p.Rate || s.SagasPerSecond != r.SagasPerSecond ||
			s.Latency.P50 != r.Latency.P50 || s.Latency.P99 != r.Latency.P99 || s.OK() != r.OK() || s.Verify.Summary != r.Verify.Summary {
			t.Errorf("point %d: read %+v %+v, want %+v %+v", i, q, *s, p, *r)
		}
		if s.Describe() != r.Describe() {
			t.Errorf("point %d describes itself as %q, want %q", i, s.Describe(), r.Describe())
		}
		if (r.Postgres == nil) != (s.Postgres == nil) || r.Postgres != nil && r.Postgres.CommitsPerSaga != s.Postgres.CommitsPerSaga {
			t.Errorf("point %d: commits per saga %+v, want %+v", i, s.Postgres, r.Postgres)
		}
	}
	// What the file holds, by name.
	var raw struct {
		Points []map[string]any `json:"points"`
	}
	if err := json.Unmarshal(buf.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"concurrency", "sagas_per_second", "p50_ms", "p99_ms", "commits_per_saga", "ok", "describe"} {
		if _, ok := raw.Points[0][k]; !ok {
			t.Errorf("a saved point lacks %q: %v", k, raw.Points[0])
		}
	}
	if raw.Points[len(raw.Points)-1]["rate"] != 1500.0 {
		t.Errorf("the last saved point: %v", raw.Points[len(raw.Points)-1])
	}

	for _, bad := range []string{``, `{}`, `{"points": []}`, `{"points": [{"loop": "sideways", "concurrency": 1}]}`, `{"points": [{"loop": "closed"}]}`} {
		if _, err := ReadSweepJSON(strings.NewReader(bad)); err == nil {
			t.Errorf("%q read", bad)
		}
	}
}

func TestPrintSweepTable(t *testing.T) {
	s := syntheticSweep("wal, kfake", "wal", 1, 1500)
	s.Points[0].Report.Postgres = nil
	var buf bytes.Buffer
	if err := PrintSweepTable(&buf, s.Points); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"load", "sagas/s", "p50 ms", "p99 ms", "commits/saga", "verify",
		"closed loop 1 worker", "closed loop 256 workers", "open loop 1500 orders/s", "INVARIANTS BROKEN",
		"outbox wal, refuse 0%"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 2+len(s.Points) {
		t.Errorf("%d lines, want a heading, a header and %d rows:\n%s", len(lines), len(s.Points), out)
	}
}

func TestSweepRejects(t *testing.T) {
	for _, tc := range []struct {
		name  string
		base  Config
		concs []int
		rates []float64
	}{
		{"a rate in the base", Config{Rate: 10}, []int{1}, nil},
		{"a concurrency in the base", Config{Concurrency: 4}, []int{1}, nil},
		{"no workers", Config{}, []int{0}, nil},
		{"the same concurrency twice", Config{}, []int{8, 8}, nil},
		{"a negative rate", Config{}, nil, []float64{-5}},
		{"the same rate twice", Config{}, nil, []float64{50, 50}},
	} {
		points, err := Sweep(t.Context(), tc.base, tc.concs, tc.rates, nil)
		if err == nil || len(points) != 0 {
			t.Errorf("%s: %d points, err %v", tc.name, len(points), err)
		}
	}
	if got := profileFor("out/cpu.prof", SweepPoint{Concurrency: 32}); got != "out/cpu-c32.prof" {
		t.Errorf("profile %q", got)
	}
	if got := profileFor("cpu", SweepPoint{Rate: 2.5}); got != "cpu-r2.5" {
		t.Errorf("profile %q", got)
	}
}

// TestSweepInProcess sweeps two closed loops of two seconds each (after
// half a second's warm-up, which starts once a first saga has ended, so
// that a slow start does not fill the window), each on its own in-process
// stack (skipped with -short).
func TestSweepInProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL, Kafka and every role, twice")
	}
	needPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	base := Config{Duration: 2 * time.Second, Warmup: 500 * time.Millisecond, Brokers: kafkax.ParseBrokers(os.Getenv("KAFKA_BROKERS"))}
	points, err := Sweep(ctx, base, []int{1, 2}, nil, &progress)
	defer func() {
		if t.Failed() {
			for _, p := range points {
				var buf bytes.Buffer
				_ = p.Report.PrintTable(&buf)
				t.Logf("\n%s", buf.String())
			}
		}
	}()
	t.Logf("\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2 {
		t.Fatalf("%d points, want 2", len(points))
	}
	for i, want := range []int{1, 2} {
		p := points[i]
		if p.Concurrency != want || p.Report == nil || p.Report.Concurrency != want || p.Report.Loop != "closed" {
			t.Errorf("point %d: %+v, want a closed loop of %d", i, p, want)
			continue
		}
		// Every saga the run placed ended, and the invariants hold; how many
		// fell in a one-second window is a timing, never asserted.
		if p.Report.Placed == 0 || p.Report.Ended != p.Report.Placed || !p.Report.OK() {
			t.Errorf("point %d: placed %d, ended %d, verify: %s", i, p.Report.Placed, p.Report.Ended, p.Report.Verify.Summary)
		}
	}
	if lines := strings.Split(strings.TrimSpace(progress.String()), "\n"); len(lines) != 2 ||
		!strings.HasPrefix(lines[0], "sweep 1/2: closed loop 1 worker: ") || !strings.HasPrefix(lines[1], "sweep 2/2: closed loop 2 workers: ") {
		t.Errorf("progress lines:\n%s", progress.String())
	}
	var buf bytes.Buffer
	if err := PrintSweepTable(&buf, points); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", buf.String())
}
