package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/browsertest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// jaeger is the query API of a running Jaeger (scripts/jaeger/jaeger
// start; make test sets SAGAFLOW_JAEGER_QUERY, OTEL_EXPORTER_OTLP_ENDPOINT
// and SAGAFLOW_REQUIRE_JAEGER, and then a missing Jaeger fails the test).
func jaeger(t *testing.T) (query, otlp string) {
	t.Helper()
	query, otlp = os.Getenv("SAGAFLOW_JAEGER_QUERY"), os.Getenv("SAGAFLOW_JAEGER_OTLP")
	if query != "" && otlp != "" {
		return query, otlp
	}
	if os.Getenv("SAGAFLOW_REQUIRE_JAEGER") != "" {
		t.Fatal("no Jaeger: run scripts/jaeger/jaeger start and set SAGAFLOW_JAEGER_QUERY and SAGAFLOW_JAEGER_OTLP (make test does)")
	}
	t.Skip("no Jaeger here (scripts/jaeger/jaeger starts one); make test runs this test")
	return "", ""
}

// jaegerTrace is the part of Jaeger's GET /api/traces/{id} answer the
// test reads.
type jaegerTrace struct {
	Data []struct {
		Spans []struct {
			SpanID        string `json:"spanID"`
			OperationName string `json:"operationName"`
			ProcessID     string `json:"processID"`
			References    []struct {
				RefType string `json:"refType"`
				SpanID  string `json:"spanID"`
			} `json:"references"`
		} `json:"spans"`
		Processes map[string]struct {
			ServiceName string `json:"serviceName"`
		} `json:"processes"`
	} `json:"data"`
}

// The roles run as separate processes, each exporting its spans over OTLP
// to a real Jaeger; one compensated order is one trace in Jaeger, with
// every hop: the API's request, the saga's start, each command and reply
// sent by the relay and processed by a participant or the orchestrator.
func TestTraceInJaeger(t *testing.T) {
	query, otlp := jaeger(t)
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	ctx := context.Background()
	if err := steps.SeedStock(ctx, db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sagaflow")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/sagaflow").CombinedOutput(); err != nil {
		t.Fatalf("build sagaflow: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := ln.Addr().String()
	ln.Close()
	prefix := testenv.Name(t, "jg") + "."
	topics := kafkax.PrefixedTopics(prefix)
	logs := t.TempDir()
	for _, role := range []string{"api", "orchestrator", "inventory,payment,shipping", "relay"} {
		cmd := exec.Command(bin, "serve", "--role", role, "--database-url", db.URL, "--kafka-brokers", strings.Join(kafka.Brokers, ","),
			"--topic-prefix", prefix, "--http", apiAddr, "--allow-fault-injection", "--step-timeout", "30s", "--trace-query", query)
		cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT="+otlp, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
			"OTEL_BSP_SCHEDULE_DELAY=100")
		logFile, err := os.Create(filepath.Join(logs, strings.ReplaceAll(role, ",", "-")+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logFile, logFile
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			_ = cmd.Wait()
			logFile.Close()
			if t.Failed() {
				b, _ := os.ReadFile(logFile.Name())
				t.Logf("%s log:\n%s", role, tail(string(b), 3000))
			}
		})
	}
	// Place a compensated order once the API answers.
	body, _ := json.Marshal(map[string]any{
		"customer_id": "c-jaeger", "items": []map[string]any{{"sku": "sku-1", "quantity": 1}},
		"amount":           map[string]any{"value": "12.50", "currency": "EUR"},
		"shipping_address": map[string]any{"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
		"inject":           map[string]string{"payment": "refuse"},
	})
	var sagaID uuid.UUID
	deadline := time.Now().Add(2 * time.Minute)
	for {
		req, _ := http.NewRequest(http.MethodPost, "http://"+apiAddr+"/orders", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "jaeger-order")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			var p struct {
				SagaID uuid.UUID `json:"saga_id"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&p)
			resp.Body.Close()
			if resp.StatusCode == http.StatusAccepted {
				sagaID = p.SagaID
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API never accepted the order: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var traceParent string
	for {
		in, err := saga.Get(ctx, db.Pool, sagaID)
		if err != nil {
			t.Fatal(err)
		}
		if in.State == saga.Compensated {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("saga %s is %s, not compensated", sagaID, in.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := db.Pool.QueryRow(ctx, "SELECT trace_parent FROM saga.instances WHERE id = $1", sagaID).Scan(&traceParent); err != nil {
		t.Fatalf("the saga kept no trace parent: %v", err)
	}
	traceID := strings.Split(traceParent, "-")[1]

	// Every hop, from four processes, in one trace (the exporters batch:
	// wait until the last hop arrived).
	hop := func(op, topic string) string { return op + " " + topic }
	want := []string{"POST /orders", "start saga order",
		hop("send", topics.InventoryCommands), hop("process", topics.InventoryCommands),
		hop("send", topics.PaymentCommands), hop("process", topics.PaymentCommands),
		hop("send", topics.SagaReplies), hop("process", topics.SagaReplies)}
	var tr jaegerTrace
	var names, services []string
	for {
		tr = jaegerTrace{}
		resp, err := http.Get(query + "/api/traces/" + traceID)
		if err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&tr)
			resp.Body.Close()
		}
		names, services = nil, nil
		if len(tr.Data) == 1 {
			for _, s := range tr.Data[0].Spans {
				names = append(names, s.OperationName)
			}
			for _, p := range tr.Data[0].Processes {
				if !slices.Contains(services, p.ServiceName) {
					services = append(services, p.ServiceName)
				}
			}
		}
		// Three replies: inventory reserved, payment refused, inventory
		// released.
		complete := len(services) == 4 && countOf(names, hop("process", topics.SagaReplies)) == 3
		for _, w := range want {
			complete = complete && slices.Contains(names, w)
		}
		if complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger's trace %s of saga %s: services %v, spans %v; want every hop of %v", traceID, sagaID, services, names, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	slices.Sort(services)
	if got := strings.Join(services, " "); got != "sagaflow-api sagaflow-inventory-payment-shipping sagaflow-orchestrator sagaflow-relay" {
		t.Errorf("services %s", got)
	}
	// One connected trace: every span but the request's has its parent in it.
	ids := map[string]bool{}
	for _, s := range tr.Data[0].Spans {
		ids[s.SpanID] = true
	}
	roots := 0
	for _, s := range tr.Data[0].Spans {
		parent := ""
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				parent = r.SpanID
			}
		}
		switch {
		case parent == "":
			roots++
			if s.OperationName != "POST /orders" {
				t.Errorf("span %s has no parent", s.OperationName)
			}
		case !ids[parent]:
			t.Errorf("span %s's parent %s is not in the trace", s.OperationName, parent)
		}
	}
	if roots != 1 {
		t.Errorf("%d root spans, want the request's alone", roots)
	}
	t.Logf("Jaeger trace %s: %d spans from %v", traceID, len(names), services)

	// The console (the api process's, told where Jaeger's query API is)
	// draws the same trace, as a person sees it in a browser.
	tab := browsertest.Start(t)
	ctx2, cancel2 := context.WithTimeout(tab, time.Minute)
	defer cancel2()
	page := "http://" + apiAddr + "/ui/sagas/" + sagaID.String()
	if err := chromedp.Do(ctx2, chromedp.Navigate(page), chromedp.WaitVisible("#saga-trace-drawn")); err != nil {
		t.Fatalf("the saga's console page: %v", err)
	}
	link, err := chromedp.Run(ctx2, chromedp.Evaluate[string](`document.querySelector("#saga-trace-drawn").getAttribute("href")`))
	if err != nil {
		t.Fatal(err)
	}
	if link != "/ui/sagas/"+sagaID.String()+"/trace" {
		t.Errorf("the saga page links its trace drawing to %q", link)
	}
	if err := chromedp.Do(ctx2, chromedp.Navigate(page+"/trace"), chromedp.WaitVisible("#waterfall svg")); err != nil {
		t.Fatalf("the console's trace page: %v", err)
	}
	legend, err := chromedp.Run(ctx2, chromedp.Text(chromedp.CSS("#trace-services")))
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range services {
		if !strings.Contains(legend, svc) {
			t.Errorf("the trace page's legend %q lacks service %s", legend, svc)
		}
	}
	rows, err := chromedp.Run(ctx2, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#trace-table tbody tr td:first-child")].map(td => td.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < len(names) {
		t.Errorf("the trace page lists %d spans, Jaeger holds %d", len(rows), len(names))
	}
	for _, w := range want {
		if !slices.Contains(rows, w) {
			t.Errorf("the trace page lists no span %q: %v", w, rows)
		}
	}
	if rows[0] != "POST /orders" {
		t.Errorf("the trace page's first span is %q, want the request's", rows[0])
	}
	browsertest.Shot(t, tab, "trace-compensated")
	if out := os.Getenv("SAGAFLOW_TRACE_OUT"); out != "" {
		b, _ := json.MarshalIndent(tr, "", "  ")
		_ = os.WriteFile(out, b, 0o644)
	}
}

func countOf(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprint("…", s[len(s)-n:])
}
