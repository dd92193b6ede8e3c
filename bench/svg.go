package bench

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"unicode/utf8"
)

// The sweep chart's geometry, in pixels.
const (
	svgWidth     = 1200
	svgMargin    = 24
	svgRowHeight = 340
	// The plot area's margins inside its panel: room for the panel's
	// title above, the y axis's ticks and title on the left, the x axis's
	// below.
	plotLeft   = 76
	plotRight  = 20
	plotTop    = 34
	plotBottom = 54
	legendLine = 20
	legendTop  = 56
)

// seriesColours tell series apart (the Tableau 10 palette's first ones).
var seriesColours = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"}

const (
	inkColour  = "#222"
	axisColour = "#444"
	gridColour = "#e4e4e4"
	keyColour  = "#555" // legend entries that are not a series
	p99Dash    = "7 4"
	// The open loop's offered load, drawn under what was done.
	offeredColour = "#999"
	offeredDash   = "2 3"
)

// DefaultSweepTitle heads a sweep chart drawn without a title.
const DefaultSweepTitle = "sagaflow bench --sweep: throughput and latency against load"

// WriteSweepSVG draws one or more sweeps as a standalone SVG image: a row
// of two panels for the closed-loop runs (completed sagas/s, and latency
// p50 and p99, against the workers, evenly spaced whatever their values)
// and, when a series has open-loop runs, a second row against the offered
// rate. Each series has a colour; p50 is a solid line, p99 a dashed one;
// a run whose invariants broke is a hollow marker. The chart is headed by
// title (default DefaultSweepTitle) and by what every run shares, from the
// reports' descriptions.
func WriteSweepSVG(w io.Writer, title string, series ...SweepSeries) error {
	n := 0
	for _, s := range series {
		if err := checkPoints(s.Points); err != nil {
			return fmt.Errorf("draw sweep %q: %w", s.Name, err)
		}
		n += len(s.Points)
	}
	if n == 0 {
		return errors.New("draw a sweep: no points")
	}
	if title == "" {
		title = DefaultSweepTitle
	}
	var closedX, openX []float64
	broken := false
	for _, s := range series {
		for _, p := range s.Points {
			if p.open() {
				openX = append(openX, p.x())
			} else {
				closedX = append(closedX, p.x())
			}
			broken = broken || !p.Report.OK()
		}
	}
	slices.Sort(closedX)
	slices.Sort(openX)
	closedX, openX = slices.Compact(closedX), slices.Compact(openX)

	// The legend: a key per series, then the line styles.
	var keys []legendKey
	for i, s := range series {
		keys = append(keys, legendKey{colour: seriesColour(i), label: seriesName(s, i), marker: true})
	}
	keys = append(keys, legendKey{colour: keyColour, label: "latency p50"}, legendKey{colour: keyColour, label: "latency p99", dash: p99Dash})
	if len(openX) > 0 {
		keys = append(keys, legendKey{colour: offeredColour, label: "offered load", dash: offeredDash})
	}
	if broken {
		keys = append(keys, legendKey{colour: keyColour, label: "invariants broken", marker: true, hollow: true, noLine: true})
	}
	lines := layoutLegend(keys)
	headerH := legendTop + 8 + float64(lines)*legendLine

	type row struct {
		open  bool
		ticks []float64
	}
	var rows []row
	if len(closedX) > 0 {
		rows = append(rows, row{false, closedX})
	}
	if len(openX) > 0 {
		rows = append(rows, row{true, openX})
	}
	height := headerH + float64(len(rows))*svgRowHeight + 8

	c := &canvas{}
	c.printf(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	c.printf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%s" viewBox="0 0 %d %s" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" fill="%s">`+"\n",
		svgWidth, num(height), svgWidth, num(height), inkColour)
	c.printf("<title>%s</title>\n", esc(title))
	c.printf(`<rect x="0" y="0" width="100%%" height="100%%" fill="#fff"/>` + "\n")
	c.text(svgMargin, 28, 18, "start", inkColour, `font-weight="bold"`, title)
	if setup := sweepSetup(series); setup != "" {
		c.fitText(svgMargin, 48, 12.5, "#444", svgWidth-2*svgMargin, setup)
	}
	c.legend(keys, legendTop)

	half := float64(svgWidth-2*svgMargin) / 2
	for ri, r := range rows {
		top := headerH + float64(ri)*svgRowHeight
		loop, xTitle := "closed", "concurrency (closed-loop workers)"
		if r.open {
			loop, xTitle = "open", "offered load (open loop, orders/s)"
		}
		ticks := make([]string, len(r.ticks))
		for i, t := range r.ticks {
			ticks[i] = fmtNum(t)
		}
		var tput, lat []plotLine
		var offered plotLine
		maxTput, maxLat := 0.0, 0.0
		for si, s := range series {
			colour, name := seriesColour(si), seriesName(s, si)
			tl := plotLine{series: name, metric: "sagas_per_second", loop: loop, colour: colour}
			p50 := plotLine{series: name, metric: "p50", loop: loop, colour: colour}
			p99 := plotLine{series: name, metric: "p99", loop: loop, colour: colour, dash: p99Dash}
			for _, p := range s.Points {
				if p.open() != r.open {
					continue
				}
				i := slices.Index(r.ticks, p.x())
				rep := p.Report
				tip := fmt.Sprintf("%s — %s: %.1f sagas/s, p50 %.1f ms, p99 %.1f ms", name, p.Load(), rep.SagasPerSecond, rep.Latency.P50, rep.Latency.P99)
				if !rep.OK() {
					tip += ", " + rep.Verify.Summary
				}
				bad := !rep.OK()
				tl.pts = append(tl.pts, plotPoint{i, rep.SagasPerSecond, tip, bad})
				p50.pts = append(p50.pts, plotPoint{i, rep.Latency.P50, tip, bad})
				p99.pts = append(p99.pts, plotPoint{i, rep.Latency.P99, tip, bad})
				maxTput = max(maxTput, rep.SagasPerSecond)
				maxLat = max(maxLat, rep.Latency.P50, rep.Latency.P99)
			}
			if len(tl.pts) == 0 {
				continue
			}
			tput = append(tput, tl)
			lat = append(lat, p50, p99)
		}
		if r.open {
			// What was asked for, beside what was done.
			offered = plotLine{metric: "offered", loop: loop, colour: offeredColour, dash: offeredDash}
			for i, t := range r.ticks {
				offered.pts = append(offered.pts, plotPoint{i: i, v: t})
				maxTput = max(maxTput, t)
			}
		}
		left := panel{x: svgMargin + plotLeft, y: top + plotTop, w: half - plotLeft - plotRight, h: svgRowHeight - plotTop - plotBottom, ticks: ticks}
		right := left
		right.x += half
		tputTitle, latTitle := "Completed sagas/s, closed loop", "Saga latency, closed loop"
		if r.open {
			tputTitle, latTitle = "Completed sagas/s, open loop", "Saga latency, open loop"
		}
		left.yMax, left.yStep = niceAxis(maxTput)
		c.frame(left, tputTitle, xTitle, "sagas/s")
		if r.open {
			c.line(left, offered, false)
		}
		for _, l := range tput {
			c.line(left, l, true)
		}
		right.yMax, right.yStep = niceAxis(maxLat)
		c.frame(right, latTitle, xTitle, "latency (ms)")
		for _, l := range lat {
			c.line(right, l, true)
		}
	}
	c.printf("</svg>\n")
	if _, err := w.Write(c.Bytes()); err != nil {
		return fmt.Errorf("write the sweep chart: %w", err)
	}
	return nil
}

func seriesColour(i int) string { return seriesColours[i%len(seriesColours)] }

func seriesName(s SweepSeries, i int) string {
	if s.Name != "" {
		return s.Name
	}
	return fmt.Sprintf("sweep %d", i+1)
}

// panel is a plot area: its place, its categorical x axis and its y axis
// from 0 to yMax.
type panel struct {
	x, y, w, h  float64
	ticks       []string
	yMax, yStep float64
}

// px is the x of the i-th tick: ticks are evenly spaced, half a step from
// either edge.
func (p panel) px(i int) float64 { return p.x + (float64(i)+0.5)*p.w/float64(len(p.ticks)) }

func (p panel) py(v float64) float64 {
	v = min(max(v, 0), p.yMax)
	return p.y + p.h*(1-v/p.yMax)
}

// plotLine is one metric of one series in one panel.
type plotLine struct {
	series, metric, loop string
	colour, dash         string
	pts                  []plotPoint
}

type plotPoint struct {
	i      int // the x tick
	v      float64
	tip    string
	broken bool
}

type legendKey struct {
	colour, label, dash    string
	marker, hollow, noLine bool
}

// keyWidth is the room a legend key takes: its sample, its label, a gap.
func keyWidth(k legendKey) float64 { return 30 + textWidth(k.label, 12) + 22 }

// layoutLegend places the keys in lines and returns how many lines they
// take.
func layoutLegend(keys []legendKey) int {
	lines, x := 1, float64(svgMargin)
	for _, k := range keys {
		if w := keyWidth(k); x+w > svgWidth-svgMargin && x > svgMargin {
			lines++
			x = svgMargin
		}
		x += keyWidth(k)
	}
	return lines
}

// textWidth estimates a sans-serif label's width: no font is at hand to
// measure it.
func textWidth(s string, size float64) float64 {
	return 0.6 * size * float64(utf8.RuneCountInString(s))
}

// niceAxis returns a y axis's top and tick step for values up to maxV:
// steps of 1, 2, 2.5 or 5 times a power of ten, three to six of them, with
// a little room above the highest value.
func niceAxis(maxV float64) (top, step float64) {
	if !(maxV > 0) || math.IsInf(maxV, 0) {
		return 1, 0.2
	}
	maxV *= 1.05
	raw := maxV / 6
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	switch f := raw / mag; {
	case f <= 1:
		step = mag
	case f <= 2:
		step = 2 * mag
	case f <= 2.5:
		step = 2.5 * mag
	case f <= 5:
		step = 5 * mag
	default:
		step = 10 * mag
	}
	return math.Ceil(maxV/step-1e-9) * step, step
}

// canvas accumulates the SVG's markup.
type canvas struct{ bytes.Buffer }

func (c *canvas) printf(format string, args ...any) { fmt.Fprintf(&c.Buffer, format, args...) }

// text writes a label; extra is more attributes, already escaped.
func (c *canvas) text(x, y, size float64, anchor, fill, extra, s string) {
	if extra != "" {
		extra = " " + extra
	}
	c.printf(`<text x="%s" y="%s" font-size="%s" text-anchor="%s" fill="%s"%s>%s</text>`+"\n",
		num(x), num(y), num(size), anchor, fill, extra, esc(s))
}

// fitText writes a label squeezed into width when it would be wider.
func (c *canvas) fitText(x, y, size float64, fill string, width float64, s string) {
	extra := ""
	if textWidth(s, size) > width {
		extra = fmt.Sprintf(`textLength="%s" lengthAdjust="spacingAndGlyphs"`, num(width))
	}
	c.text(x, y, size, "start", fill, extra, s)
}

// legend draws the keys in lines from y, as layoutLegend placed them.
func (c *canvas) legend(keys []legendKey, y float64) {
	x := float64(svgMargin)
	y += legendLine / 2
	for _, k := range keys {
		if w := keyWidth(k); x+w > svgWidth-svgMargin && x > svgMargin {
			x, y = svgMargin, y+legendLine
		}
		if !k.noLine {
			c.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="2.5"%s/>`+"\n",
				num(x), num(y), num(x+24), num(y), k.colour, dashAttr(k.dash))
		}
		if k.marker {
			c.marker(x+12, y, k.colour, k.hollow, "")
		}
		c.text(x+30, y+4, 12, "start", inkColour, "", k.label)
		x += keyWidth(k)
	}
}

// frame draws a panel's grid, axes, ticks and titles.
func (c *canvas) frame(p panel, title, xTitle, yTitle string) {
	c.text(p.x, p.y-12, 13.5, "start", inkColour, `font-weight="bold"`, title)
	for i := 0; ; i++ {
		v := float64(i) * p.yStep
		if v > p.yMax+p.yStep/2 {
			break
		}
		y := p.py(v)
		if i > 0 {
			c.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1"/>`+"\n", num(p.x), num(y), num(p.x+p.w), num(y), gridColour)
		}
		c.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1"/>`+"\n", num(p.x-5), num(y), num(p.x), num(y), axisColour)
		c.text(p.x-8, y+4, 11, "end", axisColour, "", fmtNum(v))
	}
	for i, t := range p.ticks {
		x := p.px(i)
		c.printf(`<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1"/>`+"\n", num(x), num(p.y+p.h), num(x), num(p.y+p.h+5), axisColour)
		c.text(x, p.y+p.h+19, 11.5, "middle", axisColour, "", t)
	}
	c.printf(`<path d="M%s %sV%sH%s" fill="none" stroke="%s" stroke-width="1.2"/>`+"\n", num(p.x), num(p.y), num(p.y+p.h), num(p.x+p.w), axisColour)
	c.text(p.x+p.w/2, p.y+p.h+42, 12, "middle", inkColour, "", xTitle)
	c.printf(`<text transform="translate(%s %s) rotate(-90)" font-size="12" text-anchor="middle" fill="%s">%s</text>`+"\n",
		num(p.x-plotLeft+16), num(p.y+p.h/2), inkColour, esc(yTitle))
}

// line draws a metric as a polyline through its points, in the order of
// the x axis, with a marker per point when markers is set.
func (c *canvas) line(p panel, l plotLine, markers bool) {
	pts := slices.Clone(l.pts)
	slices.SortStableFunc(pts, func(a, b plotPoint) int { return a.i - b.i })
	var coords []string
	for _, pt := range pts {
		coords = append(coords, num(p.px(pt.i))+","+num(p.py(pt.v)))
	}
	width := "2.2"
	if !markers {
		width = "1.5"
	}
	c.printf(`<polyline points="%s" fill="none" stroke="%s" stroke-width="%s" stroke-linejoin="round"%s data-series="%s" data-metric="%s" data-loop="%s"/>`+"\n",
		strings.Join(coords, " "), l.colour, width, dashAttr(l.dash), esc(l.series), l.metric, l.loop)
	if !markers {
		return
	}
	for _, pt := range pts {
		c.marker(p.px(pt.i), p.py(pt.v), l.colour, pt.broken, pt.tip)
	}
}

// marker draws a point: filled, or hollow for a run whose invariants
// broke, with its figures as a tooltip.
func (c *canvas) marker(x, y float64, colour string, hollow bool, tip string) {
	fill, r := colour, "3.5"
	if hollow {
		fill, r = "#fff", "4.5"
	}
	c.printf(`<circle cx="%s" cy="%s" r="%s" fill="%s" stroke="%s" stroke-width="2">`, num(x), num(y), r, fill, colour)
	if tip != "" {
		c.printf("<title>%s</title>", esc(tip))
	}
	c.printf("</circle>\n")
}

func dashAttr(dash string) string {
	if dash == "" {
		return ""
	}
	return fmt.Sprintf(` stroke-dasharray="%s"`, dash)
}

// num formats a coordinate.
func num(v float64) string { return fmtNum(math.Round(v*10) / 10) }

// esc escapes text and attribute values for XML.
func esc(s string) string { return html.EscapeString(s) }
