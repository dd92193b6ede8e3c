package roles_test

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// scrape reads /metrics at addr (the Prometheus text format).
func scrape(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}

// sample sums the samples of metric name whose labels include every
// name="value" given; found is false when none matches.
func sample(body, name string, labels ...string) (sum float64, found bool) {
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		if err != nil {
			continue
		}
		sum, found = sum+v, true
	}
	return sum, found
}

// Each metric an operator alerts on moves when its failure happens: sagas
// completed and compensated (durations, step latencies, states), a step
// that never answers (timeouts, resends), redeliveries (duplicates), a
// failing and a malformed command (dead letters by reason), the API's
// requests, every consumer group's lag, and the relay's visibility checks.
func TestMetricsMove(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e := setup(t, func(c *roles.Config) {
		c.MetricsAddr = addr
		c.DuplicateRelay = true // every message twice: the inboxes absorb one
		c.Saga.StepTimeout = time.Second
		c.Saga.Attempts = 2
	})
	for _, inject := range []map[string]string{
		nil,                    // completed
		{"payment": "refuse"},  // compensated
		{"shipping": "drop"},   // timeouts and resends, then compensated
		{"inventory": "error"}, // retried, dead-lettered, then failed
	} {
		if _, code := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), inject, "DE")); code != http.StatusAccepted {
			t.Fatalf("POST /orders (inject %v) answered %d", inject, code)
		}
	}
	// A command no participant can read: dead-lettered at once.
	pub, err := e.kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	bad := message.NewMessage(uuid.NewString(), []byte(`{"saga_id": "not json`))
	bad.Metadata.Set(kafkax.KeyMetadata, "broken")
	bad.Metadata.Set(outbox.HeaderType, "inventory.reserve")
	if err := pub.Publish(e.topics.InventoryCommands, bad); err != nil {
		t.Fatal(err)
	}
	e.waitTerminal(2 * time.Minute)

	inventory := `consumer="` + e.topics.Group("inventory") + `"`
	var body string
	deadline := time.Now().Add(time.Minute)
	for { // the malformed command's dead letter comes on its own time
		body = scrape(t, addr)
		if n, _ := sample(body, "sagaflow_dead_letters_total", inventory, `reason="permanent"`); n >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the malformed command was never counted as a dead letter:\n%s", grep(body, "sagaflow_dead_letters"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	counts, err := saga.CountByState(context.Background(), e.db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name   string
		labels []string
		min    float64
	}{
		{"sagaflow_saga_duration_seconds_count", []string{`type="order"`, `outcome="completed"`}, 1},
		{"sagaflow_saga_duration_seconds_count", []string{`type="order"`, `outcome="compensated"`}, 3},
		{"sagaflow_step_latency_seconds_count", []string{`step="inventory"`, `kind="action"`}, 3},
		{"sagaflow_step_latency_seconds_count", []string{`step="inventory"`, `kind="compensation"`}, 2},
		{"sagaflow_step_timeouts_total", []string{`step="shipping"`, `kind="action"`}, 2},
		{"sagaflow_step_resends_total", []string{`step="shipping"`, `kind="action"`}, 1},
		{"sagaflow_inbox_duplicates_total", []string{inventory}, 1},
		{"sagaflow_dead_letters_total", []string{inventory, `reason="retries_exhausted"`}, 1},
		{"sagaflow_http_requests_total", []string{`route="/orders"`, `method="POST"`, `status="202"`}, 4},
		{"sagaflow_http_request_duration_seconds_count", []string{`route="/orders"`, `method="POST"`}, 4},
		{"sagaflow_sagas", []string{`state="completed"`}, float64(counts[saga.Completed])},
		{"sagaflow_sagas", []string{`state="failed"`}, float64(counts[saga.Failed])},
		{"sagaflow_consumer_lag_messages", []string{`group="` + e.topics.Group("inventory") + `"`}, 0},
		// Placements and inbox transactions are this process's: the WAL
		// relay knows them visible without reading a snapshot.
		{"sagaflow_relay_visibility_checks_total", []string{`by="commit_log"`}, 1},
	}
	for _, c := range checks {
		v, found := sample(body, c.name, c.labels...)
		if !found || v < c.min {
			t.Errorf("%s%v = %v (found %v), want at least %v:\n%s", c.name, c.labels, v, found, c.min, grep(body, c.name))
		}
	}
	if v, _ := sample(body, "sagaflow_sagas", `state="completed"`); v != float64(counts[saga.Completed]) || counts[saga.Completed] != 1 {
		t.Errorf("sagaflow_sagas{state=completed} %v, the database %d (want 1)", v, counts[saga.Completed])
	}

	// The dashboard and the alerts query only metrics a stack exports.
	for _, file := range []string{"../../deploy/grafana/sagaflow.json", "../../deploy/prometheus/alerts.yml"} {
		text, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		names := metricName.FindAllString(string(text), -1)
		if len(names) < 5 {
			t.Fatalf("%s names only %v", file, names)
		}
		for _, name := range names {
			if strings.HasSuffix(name, "_") {
				continue // a family in prose: sagaflow_outbox_*
			}
			_, found := sample(body, name)
			if _, histogram := sample(body, name+"_count"); !found && !histogram {
				t.Errorf("%s queries %s, which the stack does not export", file, name)
			}
		}
	}
}

// metricName matches a Sagaflow metric's name in a query.
var metricName = regexp.MustCompile(`\bsagaflow_[a-z0-9_]+\b`)

// grep returns the lines of body that mention name.
func grep(body, name string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, name) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
