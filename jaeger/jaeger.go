// Package jaeger reads a trace back from Jaeger's query API (GET
// /api/traces/{id} of jaeger-query, port 16686), so that the console can
// draw a saga's trace beside its history: the spans every process of the
// deployment exported for one order, with their services, parents, times,
// attributes and events.
package jaeger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"
)

// ErrNotFound says that Jaeger has no trace of that id: not exported yet
// (exporters send spans in batches), sampled out, or expired.
var ErrNotFound = errors.New("jaeger has no such trace")

// Client asks one Jaeger query service.
type Client struct {
	base string
	http *http.Client
}

// New returns a client of the query service at base
// (http://HOST:16686).
func New(base string) *Client {
	return &Client{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 10 * time.Second}}
}

// Span is one span of a trace.
type Span struct {
	ID, ParentID string
	// Name is the operation ("send saga.replies"); Service the process's
	// service.name.
	Name, Service string
	// Kind is the span kind (server, client, producer, consumer,
	// internal).
	Kind     string
	Start    time.Time
	Duration time.Duration
	// Error is set when the span's status is an error.
	Error bool
	// Attrs are the span's attributes, as text.
	Attrs map[string]string
	// Events are the span's events (logs, in Jaeger's words).
	Events []Event
	// Depth is the span's distance from its trace's root (0 for a root, or
	// for a span whose parent is not in the trace).
	Depth int
}

// Event is a span event.
type Event struct {
	At    time.Time
	Name  string
	Attrs map[string]string
}

// Trace is a trace's spans in tree order: each span after its parent, its
// children in the order they started.
type Trace struct {
	ID    string
	Spans []Span
	// Start and End bound every span.
	Start, End time.Time
}

// Services lists the services the trace's spans come from, sorted.
func (t *Trace) Services() []string {
	var out []string
	for _, s := range t.Spans {
		if !slices.Contains(out, s.Service) {
			out = append(out, s.Service)
		}
	}
	slices.Sort(out)
	return out
}

var traceID = regexp.MustCompile(`^[0-9a-f]{1,32}$`)

// Trace fetches trace id (hex, as in a traceparent).
func (c *Client) Trace(ctx context.Context, id string) (*Trace, error) {
	if !traceID.MatchString(id) {
		return nil, fmt.Errorf("%q is not a trace id", id)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/traces/"+url.PathEscape(id), nil)
	if err != nil {
		return nil, fmt.Errorf("ask jaeger for trace %s: %w", id, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask jaeger for trace %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, ErrNotFound
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("ask jaeger for trace %s: HTTP %d: %s", id, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	var a answer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&a); err != nil {
		return nil, fmt.Errorf("read jaeger's trace %s: %w", id, err)
	}
	if len(a.Data) == 0 || len(a.Data[0].Spans) == 0 {
		return nil, ErrNotFound
	}
	return a.Data[0].trace(), nil
}

// answer is the part of Jaeger's GET /api/traces/{id} answer read here.
type answer struct {
	Data []jTrace `json:"data"`
}

type jTrace struct {
	TraceID   string  `json:"traceID"`
	Spans     []jSpan `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

type jSpan struct {
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	StartTime int64 `json:"startTime"` // µs since the epoch
	Duration  int64 `json:"duration"`  // µs
	Tags      []tag `json:"tags"`
	Logs      []struct {
		Timestamp int64 `json:"timestamp"`
		Fields    []tag `json:"fields"`
	} `json:"logs"`
	ProcessID string `json:"processID"`
}

type tag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func attrs(tags []tag) map[string]string {
	m := make(map[string]string, len(tags))
	for _, t := range tags {
		m[t.Key] = fmt.Sprint(t.Value)
	}
	return m
}

func micros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// trace converts one trace of an answer, its spans in tree order.
func (j jTrace) trace() *Trace {
	spans := make([]Span, 0, len(j.Spans))
	for _, js := range j.Spans {
		s := Span{ID: js.SpanID, Name: js.OperationName, Service: j.Processes[js.ProcessID].ServiceName,
			Start: micros(js.StartTime), Duration: time.Duration(js.Duration) * time.Microsecond, Attrs: attrs(js.Tags)}
		for _, r := range js.References {
			if r.RefType == "CHILD_OF" {
				s.ParentID = r.SpanID
			}
		}
		s.Kind = s.Attrs["span.kind"]
		s.Error = s.Attrs["otel.status_code"] == "ERROR" || s.Attrs["error"] == "true"
		for _, l := range js.Logs {
			ev := Event{At: micros(l.Timestamp), Attrs: attrs(l.Fields)}
			ev.Name = ev.Attrs["event"]
			delete(ev.Attrs, "event")
			s.Events = append(s.Events, ev)
		}
		spans = append(spans, s)
	}
	// Children by parent, each list by start; a span whose parent is not
	// in the trace is a root.
	byID := map[string]bool{}
	for _, s := range spans {
		byID[s.ID] = true
	}
	children := map[string][]Span{}
	for _, s := range spans {
		p := s.ParentID
		if !byID[p] {
			p = ""
		}
		children[p] = append(children[p], s)
	}
	for _, c := range children {
		slices.SortStableFunc(c, func(a, b Span) int { return a.Start.Compare(b.Start) })
	}
	t := &Trace{ID: j.TraceID}
	var walk func(parent string, depth int)
	walk = func(parent string, depth int) {
		for _, s := range children[parent] {
			s.Depth = depth
			t.Spans = append(t.Spans, s)
			walk(s.ID, depth+1)
		}
	}
	walk("", 0)
	for i, s := range t.Spans {
		if end := s.Start.Add(s.Duration); i == 0 || end.After(t.End) {
			t.End = end
		}
		if i == 0 || s.Start.Before(t.Start) {
			t.Start = s.Start
		}
	}
	return t
}
