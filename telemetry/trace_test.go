package telemetry_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
	"github.com/sagaflow/sagaflow/telemetry"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is a whole Sagaflow stack whose spans go to an in-memory exporter.
type env struct {
	t      *testing.T
	db     *testenv.Database
	topics kafkax.Topics
	spans  *tracetest.InMemoryExporter
	base   string
}

// setup starts a stack of every role but those left out, with tracing
// on. Not parallel: the tracer is the process's.
func setup(t *testing.T, leaveOut ...string) *env {
	t.Helper()
	e := &env{t: t, db: testenv.DB(t), topics: kafkax.PrefixedTopics(testenv.Name(t, "tr") + "."), spans: tracetest.NewInMemoryExporter()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(e.spans))
	telemetry.Use(tp)
	t.Cleanup(func() { telemetry.Use(nil); _ = tp.Shutdown(context.Background()) })
	if err := steps.SeedStock(context.Background(), e.db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	var rs []string
	for _, r := range []string{roles.API, roles.Orchestrator, roles.Inventory, roles.Payment, roles.Shipping, roles.Relay} {
		if !slices.Contains(leaveOut, r) {
			rs = append(rs, r)
		}
	}
	e.base = "http://" + e.start(rs...)
	return e
}

// start runs a stack of roles rs until the test ends and returns the
// API's address (empty without the api role).
func (e *env) start(rs ...string) string {
	cfg := roles.Config{Pool: e.db.Pool, Kafka: testenv.Kafka(e.t), Topics: e.topics, Roles: rs,
		AllowInjection: true, SweepInterval: 50 * time.Millisecond, TraceURL: "http://jaeger.test/trace/{trace_id}"}
	cfg.Saga.StepTimeout = 30 * time.Second
	return stacktest.Start(e.t, cfg).Addr
}

// place posts an order and returns its saga id.
func (e *env) place(inject map[string]string) uuid.UUID {
	e.t.Helper()
	return stacktest.Place(e.t, strings.TrimPrefix(e.base, "http://"), inject, "").SagaID
}

// chain waits for the span that records saga id's outcome and returns it
// and its ancestors, root first.
func (e *env) chain(id uuid.UUID, outcome string) []tracetest.SpanStub {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		spans := e.spans.GetSpans()
		for _, s := range spans {
			if slices.ContainsFunc(s.Events, func(ev sdktrace.Event) bool { return ev.Name == outcome }) && hasSaga(s, id) {
				return ancestors(spans, s)
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no span recorded saga %s %s (%d spans)", id, outcome, len(spans))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasSaga(s tracetest.SpanStub, id uuid.UUID) bool {
	for _, a := range s.Attributes {
		if a.Key == telemetry.AttrSagaID && a.Value.AsString() == id.String() {
			return true
		}
	}
	return false
}

func ancestors(spans tracetest.SpanStubs, s tracetest.SpanStub) []tracetest.SpanStub {
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, x := range spans {
		byID[x.SpanContext.SpanID()] = x
	}
	out := []tracetest.SpanStub{s}
	for s.Parent.IsValid() {
		p, ok := byID[s.Parent.SpanID()]
		if !ok {
			break
		}
		out, s = append(out, p), p
	}
	slices.Reverse(out)
	return out
}

// describe names each span of a chain as kind:name.
func describe(chain []tracetest.SpanStub) []string {
	var out []string
	for _, s := range chain {
		out = append(out, fmt.Sprintf("%s:%s", s.SpanKind, s.Name))
	}
	return out
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

// One order, from the HTTP request to its terminal state, is one trace:
// each command and reply is a producer span (the relay's) whose consumer
// span (the inbox's) is its child, across the database rows of the
// outboxes; the orchestrator's step transitions are events on them.
func TestOneTracePerSaga(t *testing.T) {
	e := setup(t)
	step := func(cmdTopic string) []string {
		return []string{"producer:send " + cmdTopic, "consumer:process " + cmdTopic,
			"producer:send " + e.topics.SagaReplies, "consumer:process " + e.topics.SagaReplies}
	}
	root := []string{"server:POST /orders", "internal:start saga order"}
	cases := []struct {
		name    string
		inject  map[string]string
		outcome string
		want    []string
		// replies lists the step each reply the orchestrator processed
		// answers (its span's saga.step), and its kind.
		replies []string
	}{
		{"completed", nil, saga.EventCompleted,
			slices.Concat(root, step(e.topics.InventoryCommands), step(e.topics.PaymentCommands), step(e.topics.ShippingCommands)),
			[]string{"inventory action", "payment action", "shipping action"}},
		{"compensated", map[string]string{"payment": "refuse"}, saga.EventCompensated,
			slices.Concat(root, step(e.topics.InventoryCommands), step(e.topics.PaymentCommands), step(e.topics.InventoryCommands)),
			[]string{"inventory action", "payment action", "inventory compensation"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id := e.place(tc.inject)
			chain := e.chain(id, tc.outcome)
			if got := describe(chain); !slices.Equal(got, tc.want) {
				t.Fatalf("the saga's spans, root first:\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tc.want, "\n  "))
			}
			t.Logf("chain: %s", strings.Join(describe(chain), " → "))
			traceID := chain[0].SpanContext.TraceID()
			for _, s := range chain {
				if s.SpanContext.TraceID() != traceID {
					t.Errorf("span %s is in trace %s, not the order's %s", s.Name, s.SpanContext.TraceID(), traceID)
				}
				if strings.Contains(s.Name, id.String()) {
					t.Errorf("span name %q carries the saga id", s.Name)
				}
				switch s.SpanKind {
				case trace.SpanKindProducer, trace.SpanKindConsumer:
					if attr(s, "messaging.system") != "kafka" || attr(s, "messaging.destination.name") == "" || attr(s, "messaging.message.id") == "" ||
						attr(s, "messaging.destination.partition.id") == "" || attr(s, "messaging.kafka.offset") == "" || attr(s, "messaging.message.conversation_id") != id.String() {
						t.Errorf("%s %s lacks messaging attributes: %v", s.SpanKind, s.Name, s.Attributes)
					}
				}
				if s.SpanKind == trace.SpanKindConsumer && attr(s, "messaging.consumer.group.name") == "" {
					t.Errorf("consumer span %s names no consumer group", s.Name)
				}
			}
			var replies []string
			for _, s := range chain {
				if s.SpanKind == trace.SpanKindConsumer && s.Name == "process "+e.topics.SagaReplies {
					replies = append(replies, attr(s, "saga.step")+" "+attr(s, "saga.kind"))
					if attr(s, "saga.participant") != attr(s, "saga.step") {
						t.Errorf("reply span of step %s names participant %q", attr(s, "saga.step"), attr(s, "saga.participant"))
					}
				}
			}
			if !slices.Equal(replies, tc.replies) {
				t.Errorf("the replies' spans are of steps %v, want %v", replies, tc.replies)
			}
			last := chain[len(chain)-1]
			if attr(last, "saga.outcome") != tc.outcome {
				t.Errorf("the last span's saga.outcome is %q, want %q", attr(last, "saga.outcome"), tc.outcome)
			}
			// The API and the console name the saga's trace.
			var view struct {
				TraceID string `json:"trace_id"`
			}
			if err := getJSON(e.base+"/sagas/"+id.String(), &view); err != nil || view.TraceID != traceID.String() {
				t.Errorf("GET /sagas/%s: trace_id %q (%v), want %s", id, view.TraceID, err, traceID)
			}
			if page := get(t, e.base+"/ui/sagas/"+id.String()); !strings.Contains(page, `href="http://jaeger.test/trace/`+traceID.String()+`"`) {
				t.Errorf("the console's saga page does not link trace %s", traceID)
			}
			if !hasExemplar(t, "order", tc.outcome, traceID.String()) {
				t.Errorf("sagaflow_saga_duration_seconds{outcome=%s} has no exemplar of trace %s", tc.outcome, traceID)
			}
		})
	}
}

// The trace context waits in the outbox row: an order placed while no
// relay runs is still one trace once a relay starts and publishes it.
func TestTraceSurvivesRelayRestart(t *testing.T) {
	e := setup(t, roles.Relay)
	id := e.place(nil)
	ob := outbox.New("saga")
	deadline := time.Now().Add(time.Minute)
	for {
		b, err := ob.Backlog(context.Background(), e.db.Pool)
		if err != nil {
			t.Fatal(err)
		}
		if b.Rows > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first command never reached the saga outbox")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, s := range e.spans.GetSpans() {
		if s.SpanKind == trace.SpanKindProducer {
			t.Fatalf("a producer span (%s) before any relay ran", s.Name)
		}
	}
	e.start(roles.Relay)
	chain := e.chain(id, saga.EventCompleted)
	if len(chain) != 14 || chain[0].Name != "POST /orders" {
		t.Fatalf("the saga's spans after the relay started: %s", strings.Join(describe(chain), " → "))
	}
}

// hasExemplar reports whether a bucket of the saga duration histogram of
// typ and outcome carries trace traceID as its exemplar.
func hasExemplar(t *testing.T, typ, outcome, traceID string) bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(telemetry.SagaDuration)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["type"] != typ || labels["outcome"] != outcome {
				continue
			}
			for _, b := range m.GetHistogram().GetBucket() {
				for _, l := range b.GetExemplar().GetLabel() {
					if l.GetName() == "trace_id" && l.GetValue() == traceID {
						return true
					}
				}
			}
		}
	}
	return false
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	if _, err := io.Copy(&b, resp.Body); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// A message dead-lettered after its retries is a producer span to the
// dead-letter topic in the saga's trace, with error.type its reason class.
func TestDeadLetterSpan(t *testing.T) {
	e := setup(t)
	id := e.place(map[string]string{"payment": "error"})
	dlq := outbox.DeadLetterTopicOf(e.topics.Group("payment"))
	deadline := time.Now().Add(time.Minute)
	for {
		for _, s := range e.spans.GetSpans() {
			if s.Name != "send "+dlq {
				continue
			}
			traceID, err := saga.TraceID(context.Background(), e.db.Pool, id)
			if err != nil {
				t.Fatal(err)
			}
			if s.SpanKind != trace.SpanKindProducer || attr(s, "error.type") != "retries_exhausted" || s.SpanContext.TraceID().String() != traceID ||
				attr(s, "messaging.message.conversation_id") != id.String() {
				t.Fatalf("dead-letter span %s: kind %s, error.type %q, trace %s (the saga's %s), attributes %v",
					s.Name, s.SpanKind, attr(s, "error.type"), s.SpanContext.TraceID(), traceID, s.Attributes)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no span sent saga %s's failing charge to %s", id, dlq)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
