package console

import (
	"fmt"
	"html/template"
	"math"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/overview"
	"github.com/sagaflow/sagaflow/saga"
)

// The charts are small inline SVGs built here, from numbers only (every
// text in them is escaped), so the page needs no script.

const (
	chartW, chartH = 600.0, 120.0
	chartPad       = 28.0
)

// minuteIndex places t in the last hour's 60 minutes ending at now.
func minuteIndex(t, now time.Time) int {
	return 59 - int(now.Truncate(time.Minute).Sub(t.Truncate(time.Minute))/time.Minute)
}

// endedChart draws the sagas ended per minute over the last hour as bars.
func endedChart(minutes []overview.Minute, now time.Time) template.HTML {
	var counts [60]int64
	var peak int64 = 1
	for _, m := range minutes {
		if i := minuteIndex(m.At, now); i >= 0 && i < 60 {
			counts[i] = m.Ended
			peak = max(peak, m.Ended)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="sagas ended per minute, last hour" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f">`,
		chartW, chartH, chartW, chartH)
	axes(&b, fmt.Sprintf("%d/min", peak))
	bw := (chartW - chartPad) / 60
	for i, c := range counts {
		if c == 0 {
			continue
		}
		h := (chartH - 20) * float64(c) / float64(peak)
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%d ended</title></rect>`,
			chartPad+float64(i)*bw, chartH-12-h, math.Max(bw-1, 1), h, c)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and fixed markup
}

// durationChart draws the p50 and p99 saga durations per minute.
func durationChart(minutes []overview.Minute, now time.Time) template.HTML {
	peak := 1.0
	for _, m := range minutes {
		peak = math.Max(peak, m.P99ms)
	}
	var p50, p99, dots []string
	bw := (chartW - chartPad) / 60
	for _, m := range minutes {
		i := minuteIndex(m.At, now)
		if i < 0 || i >= 60 {
			continue
		}
		x := chartPad + (float64(i)+0.5)*bw
		y50, y99 := chartH-12-(chartH-20)*m.P50ms/peak, chartH-12-(chartH-20)*m.P99ms/peak
		p50 = append(p50, fmt.Sprintf("%.1f,%.1f", x, y50))
		p99 = append(p99, fmt.Sprintf("%.1f,%.1f", x, y99))
		dots = append(dots, fmt.Sprintf(`<circle class="p50" cx="%.1f" cy="%.1f" r="2.5"><title>p50 %.0f ms</title></circle><circle class="p99" cx="%.1f" cy="%.1f" r="2.5"><title>p99 %.0f ms</title></circle>`,
			x, y50, m.P50ms, x, y99, m.P99ms))
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" aria-label="saga duration p50 and p99 per minute, last hour" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f">`,
		chartW, chartH, chartW, chartH)
	axes(&b, fmt.Sprintf("%.0f ms", peak))
	if len(p50) > 0 {
		fmt.Fprintf(&b, `<polyline class="p50" points="%s"/><polyline class="p99" points="%s"/>`, strings.Join(p50, " "), strings.Join(p99, " "))
		b.WriteString(strings.Join(dots, ""))
	}
	fmt.Fprintf(&b, `<text class="legend p50" x="%.0f" y="12">p50</text><text class="legend p99" x="%.0f" y="12">p99</text>`, chartW-70, chartW-35)
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and fixed markup
}

func axes(b *strings.Builder, top string) {
	fmt.Fprintf(b, `<line class="axis" x1="%.0f" y1="8" x2="%.0f" y2="%.0f"/><line class="axis" x1="%.0f" y1="%.0f" x2="%.0f" y2="%.0f"/>`,
		chartPad, chartPad, chartH-12, chartPad, chartH-12, chartW, chartH-12)
	fmt.Fprintf(b, `<text class="tick" x="2" y="14">%s</text><text class="tick" x="%.0f" y="%.0f">−60 min</text><text class="tick" x="%.0f" y="%.0f">now</text>`,
		template.HTMLEscapeString(top), chartPad, chartH-1, chartW-24, chartH-1)
}

// timeline draws a saga's history on a time axis: one row per step and
// kind, a bar from each command sent to the event that ended its wait
// (reply, timeout), a mark for every other event (stale reply, hold,
// operator action). It draws at most maxTimelineEvents events.
func timeline(in *saga.Instance, steps []string, history []saga.HistoryEntry, now time.Time) template.HTML {
	type rowKey struct{ step, kind string }
	var rows []rowKey
	rowOf := map[rowKey]int{}
	row := func(step, kind string) int {
		k := rowKey{step, kind}
		if i, ok := rowOf[k]; ok {
			return i
		}
		rows = append(rows, k)
		rowOf[k] = len(rows) - 1
		return len(rows) - 1
	}
	// Rows in step order: actions, then compensations in reverse.
	for _, s := range steps {
		row(s, string(saga.KindAction))
	}
	for i := len(steps) - 1; i >= 0; i-- {
		if hasKind(history, steps[i], saga.KindCompensation) {
			row(steps[i], string(saga.KindCompensation))
		}
	}
	start := in.CreatedAt
	end := now
	if in.EndedAt != nil {
		end = *in.EndedAt
	}
	if len(history) > 0 && history[len(history)-1].At.After(end) {
		end = history[len(history)-1].At
	}
	total := end.Sub(start)
	if total <= 0 {
		total = time.Millisecond
	}
	const labelW, rowH, top = 170.0, 26.0, 22.0
	width := 900.0
	x := func(t time.Time) float64 {
		return labelW + (width-labelW-10)*float64(t.Sub(start))/float64(total)
	}
	var bars, marks strings.Builder
	open := map[rowKey]saga.HistoryEntry{}
	for _, h := range history {
		k := rowKey{h.Step, h.Kind}
		if h.Kind == "" {
			k.kind = string(saga.KindAction)
		}
		y := top + float64(row(k.step, k.kind))*rowH
		bar := func(sent saga.HistoryEntry, class, what string) {
			fmt.Fprintf(&bars, `<rect class="span %s" x="%.1f" y="%.1f" width="%.1f" height="%.0f"><title>%s %s attempt %d: %s after %s</title></rect>`,
				class, x(sent.At), y+4, math.Max(x(h.At)-x(sent.At), 2), rowH-10,
				template.HTMLEscapeString(sent.Step), template.HTMLEscapeString(k.kind), sent.Attempt,
				template.HTMLEscapeString(what), h.At.Sub(sent.At).Round(time.Millisecond))
		}
		switch h.Event {
		case saga.EventSent:
			if sent, ok := open[k]; ok { // sent again without an answer
				bar(sent, "timeout", "unanswered, sent again")
			}
			open[k] = h
			continue
		case saga.EventStuck:
			if sent, ok := open[k]; ok {
				delete(open, k)
				bar(sent, "timeout", "unanswered")
			}
		case saga.EventSucceeded, saga.EventRefused, saga.EventTimedOut:
			if sent, ok := open[k]; ok {
				delete(open, k)
				bar(sent, cssEvent(h.Event), h.Event)
				continue
			}
		}
		fmt.Fprintf(&marks, `<circle class="mark %s" cx="%.1f" cy="%.1f" r="5"><title>%s %s attempt %d: %s %s</title></circle>`,
			cssEvent(h.Event), x(h.At), y+rowH/2-1, template.HTMLEscapeString(h.Step), template.HTMLEscapeString(k.kind), h.Attempt,
			template.HTMLEscapeString(h.Event), template.HTMLEscapeString(h.Reason))
	}
	for k, sent := range open { // still waiting
		y := top + float64(rowOf[k])*rowH
		fmt.Fprintf(&bars, `<rect class="span waiting" x="%.1f" y="%.1f" width="%.1f" height="%.0f"><title>%s %s attempt %d: waiting for %s</title></rect>`,
			x(sent.At), y+4, math.Max(x(end)-x(sent.At), 2), rowH-10, template.HTMLEscapeString(k.step), template.HTMLEscapeString(k.kind),
			sent.Attempt, end.Sub(sent.At).Round(time.Millisecond))
	}
	height := top + float64(len(rows))*rowH + 18
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="timeline" role="img" aria-label="saga timeline" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f">`, width, height, width, height)
	for i, k := range rows {
		y := top + float64(i)*rowH
		fmt.Fprintf(&b, `<text class="row-label" x="4" y="%.1f">%s %s</text><line class="grid" x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f"/>`,
			y+rowH/2+4, template.HTMLEscapeString(k.step), template.HTMLEscapeString(k.kind), labelW, y+rowH, width-10, y+rowH)
	}
	fmt.Fprintf(&b, `<text class="tick" x="%.0f" y="14">0</text><text class="tick" x="%.0f" y="14" text-anchor="end">%s</text>`,
		labelW, width-10, total.Round(time.Millisecond))
	b.WriteString(bars.String())
	b.WriteString(marks.String())
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // every text is escaped above
}

func hasKind(history []saga.HistoryEntry, step string, kind saga.Kind) bool {
	for _, h := range history {
		if h.Step == step && h.Kind == string(kind) {
			return true
		}
	}
	return false
}

// cssEvent is an event's CSS class.
func cssEvent(event string) string {
	switch event {
	case saga.EventSucceeded:
		return "ok"
	case saga.EventRefused:
		return "refused"
	case saga.EventTimedOut:
		return "timeout"
	case saga.EventStaleReply:
		return "stale"
	case saga.EventDeadlineHeld:
		return "held"
	case saga.EventStuck, saga.EventFailed:
		return "bad"
	case saga.EventOperatorRetry, saga.EventOperatorResolved, saga.EventOperatorAborted:
		return "operator"
	}
	return "other"
}
