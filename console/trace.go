package console

import (
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/jaeger"
	"github.com/sagaflow/sagaflow/saga"
)

// traceData is the trace page: a saga's trace as Jaeger holds it.
type traceData struct {
	SagaID    uuid.UUID
	TraceID   string
	TraceLink string
	// Trace is nil when Jaeger has none (yet); Missing then says why.
	Trace    *jaeger.Trace
	Missing  string
	Services []string
	Drawing  template.HTML
	Rows     []traceRow
}

// traceRow is a span as the table lists it.
type traceRow struct {
	jaeger.Span
	Offset time.Duration
	// Facts are the span's Sagaflow and messaging attributes worth a
	// glance, and its events.
	Facts []string
}

// factKeys are the attributes the table shows, in this order.
var factKeys = []string{"saga.step", "saga.attempt", "saga.outcome", "messaging.destination.name",
	"messaging.destination.partition.id", "messaging.kafka.offset", "messaging.consumer.group.name",
	"messaging.sagaflow.duplicate", "http.response.status_code", "error.type"}

func (s *server) trace(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	ctx := r.Context()
	id, err := uuid.Parse(r.PathValue("id"))
	if err != nil {
		return "", view{}, fail(http.StatusBadRequest, "%q is not a saga id", r.PathValue("id"))
	}
	if s.cfg.Traces == nil {
		return "", view{}, fail(http.StatusNotFound, "this console reads no traces: start it with --trace-query (Jaeger's query API)")
	}
	if _, err := saga.Get(ctx, s.cfg.Pool, id); errors.Is(err, saga.ErrNotFound) {
		return "", view{}, fail(http.StatusNotFound, "no saga has id %s", id)
	} else if err != nil {
		return "", view{}, err
	}
	d := traceData{SagaID: id}
	if d.TraceID, err = saga.TraceID(ctx, s.cfg.Pool, id); err != nil {
		return "", view{}, err
	}
	if d.TraceID == "" {
		return "", view{}, fail(http.StatusNotFound, "saga %s has no trace: tracing was off when it started", id)
	}
	if s.cfg.TraceURL != "" {
		d.TraceLink = strings.ReplaceAll(s.cfg.TraceURL, "{trace_id}", d.TraceID)
	}
	v := view{Title: "Trace of saga " + id.String(), Nav: "sagas", Data: &d}
	d.Trace, err = s.cfg.Traces.Trace(ctx, d.TraceID)
	switch {
	case errors.Is(err, jaeger.ErrNotFound):
		d.Missing = "Jaeger has no spans of this trace yet: processes export spans in batches (a few seconds), or the trace was sampled out or has expired."
		return "trace", v, nil
	case err != nil:
		return "", view{}, fail(http.StatusBadGateway, "Jaeger did not answer: %v", err)
	}
	d.Services = d.Trace.Services()
	d.Drawing = waterfall(d.Trace, d.Services)
	for _, sp := range d.Trace.Spans {
		row := traceRow{Span: sp, Offset: sp.Start.Sub(d.Trace.Start)}
		for _, k := range factKeys {
			if v, ok := sp.Attrs[k]; ok {
				row.Facts = append(row.Facts, k+"="+v)
			}
		}
		for _, ev := range sp.Events {
			row.Facts = append(row.Facts, "event "+ev.Name)
		}
		d.Rows = append(d.Rows, row)
	}
	return "trace", v, nil
}

// waterfall draws a trace's spans, one row each in tree order, indented by
// depth, a bar from its start to its end coloured by its service (the
// services list gives each its colour), red when its status is an error.
func waterfall(t *jaeger.Trace, services []string) template.HTML {
	const labelW, rowH, top, width = 300.0, 20.0, 22.0, 1000.0
	total := t.End.Sub(t.Start)
	if total <= 0 {
		total = time.Microsecond
	}
	x := func(at time.Time) float64 {
		return labelW + (width-labelW-10)*float64(at.Sub(t.Start))/float64(total)
	}
	height := top + float64(len(t.Spans))*rowH + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="trace" role="img" aria-label="trace waterfall" viewBox="0 0 %.0f %.0f" width="%.0f" height="%.0f">`, width, height, width, height)
	fmt.Fprintf(&b, `<text class="tick" x="%.0f" y="14">0</text><text class="tick" x="%.0f" y="14" text-anchor="end">%s</text>`,
		labelW, width-10, total.Round(time.Microsecond))
	for i, sp := range t.Spans {
		y := top + float64(i)*rowH
		class := fmt.Sprintf("svc%d", slices.Index(services, sp.Service)%6)
		if sp.Error {
			class += " error"
		}
		label := sp.Name
		fmt.Fprintf(&b, `<text class="row-label span-name" x="%.0f" y="%.1f">%s</text>`,
			4+8*math.Min(float64(sp.Depth), 12), y+rowH/2+4, template.HTMLEscapeString(label))
		fmt.Fprintf(&b, `<line class="grid" x1="%.0f" y1="%.1f" x2="%.0f" y2="%.1f"/>`, labelW, y+rowH, width-10, y+rowH)
		fmt.Fprintf(&b, `<rect class="tspan %s" x="%.1f" y="%.1f" width="%.1f" height="%.0f"><title>%s (%s): %s at +%s</title></rect>`,
			class, x(sp.Start), y+4, math.Max(x(sp.Start.Add(sp.Duration))-x(sp.Start), 2), rowH-8,
			template.HTMLEscapeString(sp.Name), template.HTMLEscapeString(sp.Service), sp.Duration.Round(time.Microsecond),
			sp.Start.Sub(t.Start).Round(time.Microsecond))
		for _, ev := range sp.Events {
			fmt.Fprintf(&b, `<circle class="tevent" cx="%.1f" cy="%.1f" r="2.5"><title>%s</title></circle>`,
				x(ev.At), y+rowH/2, template.HTMLEscapeString(ev.Name))
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // every text is escaped above
}
