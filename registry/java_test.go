package registry_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/registry"
	"github.com/sagaflow/sagaflow/saga"
)

// javaConsumer returns the script that runs contract/testdata/java's
// ReadWire.java (kafka-clients with Apicurio's stock JSON Schema
// deserializer). It needs java and mvn: without them the test is skipped,
// or fails where the registry tests must run (SAGAFLOW_REQUIRE_REGISTRY).
func javaConsumer(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"java", "mvn"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("SAGAFLOW_REQUIRE_REGISTRY") != "" {
				t.Fatalf("%s is not on PATH: the Java consumer needs OpenJDK 17 and Maven (apt-get install openjdk-17-jre-headless maven)", tool)
			}
			t.Skipf("%s is not on PATH; the Java consumer needs OpenJDK 17 and Maven", tool)
		}
	}
	script, err := filepath.Abs(filepath.Join("..", "contract", "testdata", "java", "run"))
	if err != nil {
		t.Fatal(err)
	}
	return script
}

// coreAPI is the URL of Apicurio's own API (which its serdes talk to)
// beside its Confluent-compatible one.
func coreAPI(t *testing.T, ccompat string) string {
	t.Helper()
	base, ok := strings.CutSuffix(strings.TrimRight(ccompat, "/"), "/apis/ccompat/v7")
	if !ok {
		t.Fatalf("SAGAFLOW_SCHEMA_REGISTRY %s is not Apicurio's Confluent-compatible API (…/apis/ccompat/v7), which the Java consumer's deserializer needs", ccompat)
	}
	return base + "/apis/registry/v3"
}

// A record as the Go side read it off Kafka, or as the Java consumer
// printed it.
type wireRecord struct {
	Topic     string          `json:"topic"`
	Partition int32           `json:"partition"`
	Offset    int64           `json:"offset"`
	SchemaID  int             `json:"schema_id"`
	Type      string          `json:"type"`
	Payload   json.RawMessage `json:"payload"`
}

func (r wireRecord) at() string { return fmt.Sprintf("%s/%d@%d", r.Topic, r.Partition, r.Offset) }

func (r wireRecord) sagaID() string {
	var p struct {
		SagaID string `json:"saga_id"`
	}
	_ = json.Unmarshal(r.Payload, &p)
	return p.SagaID
}

// A Java consumer with a stock JSON Schema deserializer (Apicurio
// Registry's Kafka serde, from Maven Central, set for the Confluent
// framing: a 4-byte id from the payload, the id being the contentId that
// the Confluent-compatible API hands out) reads every message that whole
// sagas write in the wire format, on the command, reply and order-event
// topics: each validates against the schema its frame names, and comes out
// as the JSON Go reads from the same record.
func TestJavaConsumerReadsWireFormat(t *testing.T) {
	t.Parallel()
	c, topics := setup(t)
	core := coreAPI(t, url(t))
	script := javaConsumer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// Fetch the jars first (Maven, on a machine's first run), so that the
	// stack does not wait on it.
	fetchCtx, fetchDone := context.WithTimeout(ctx, 8*time.Minute)
	start := time.Now()
	if out, err := exec.CommandContext(fetchCtx, script, "--classpath").CombinedOutput(); err != nil {
		t.Fatalf("the Java consumer's classpath: %v\n%s", err, out)
	}
	fetchDone()
	t.Logf("classpath ready in %s", time.Since(start).Round(time.Millisecond))

	db := testenv.DB(t)
	kafkaCfg := testenv.Kafka(t)
	// The same schemas under other subjects first: then each of ours is a
	// new version (a new globalId) of content the registry has (an older
	// contentId), so the two ids differ even on a fresh registry, and the
	// check below tells which one the Confluent-compatible API hands out.
	_, decoys := setup(t)
	if _, err := registry.RegisterContract(ctx, c, decoys, registry.DefaultCompatibility); err != nil {
		t.Fatal(err)
	}
	regs, err := registry.RegisterContract(ctx, c, topics, registry.DefaultCompatibility)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int{}
	var names []string
	for _, r := range regs {
		ids[r.Topic] = r.ID
	}
	for _, ts := range contract.TopicSchemas(topics) {
		names = append(names, ts.Topic)
	}
	// The id the Confluent-compatible API handed out, which our frames
	// carry, is the version's contentId (what ReadWire.java tells the
	// deserializer to look up), not its globalId, which here differs.
	for _, topic := range names {
		var found bool
		for _, v := range apicurioVersions(ctx, t, core, registry.Subject(topic)) {
			if v.ContentID == ids[topic] {
				found = true
				if v.GlobalID == v.ContentID {
					t.Errorf("%s version %s: globalId and contentId are both %d, so the test cannot tell them apart", registry.Subject(topic), v.Version, v.GlobalID)
				}
			}
		}
		if !found {
			t.Errorf("id %d that the Confluent-compatible API gave for %s is no contentId of the subject's versions", ids[topic], registry.Subject(topic))
		}
	}
	stack, sub := startWire(ctx, t, db, kafkaCfg, topics, ids)

	// Go reads every record too, by its place in the log.
	var mu sync.Mutex
	seen := map[string]wireRecord{}
	for _, topic := range names {
		msgs, err := sub.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for m := range msgs {
				body, id, ok := outbox.Unframe(m.Payload)
				if !ok {
					t.Errorf("a message on %s is not in the wire format: %q", topic, m.Payload)
				}
				p, _ := kafka.MessagePartitionFromCtx(m.Context())
				o, _ := kafka.MessagePartitionOffsetFromCtx(m.Context())
				r := wireRecord{Topic: topic, Partition: p, Offset: o, SchemaID: id, Type: m.Metadata.Get(outbox.HeaderType), Payload: body}
				mu.Lock()
				seen[r.at()] = r
				mu.Unlock()
				m.Ack()
			}
		}()
	}

	sagas := []uuid.UUID{stacktest.Place(t, stack.Addr, nil, "").SagaID, stacktest.Place(t, stack.Addr, map[string]string{"payment": "refuse"}, "").SagaID}
	ends := []struct {
		state saga.State
		event string
	}{{saga.Completed, "OrderConfirmed"}, {saga.Compensated, "OrderCancelled"}}

	// The sagas are over once each has ended and its last order event is
	// out; then nothing more is written, and Go has read all there is.
	deadline := time.Now().Add(time.Minute)
	var want int
	for {
		over := true
		for i, end := range ends {
			in, err := saga.Get(ctx, db.Pool, sagas[i])
			if err != nil {
				t.Fatal(err)
			}
			over = over && in.State == end.state && seenEvent(&mu, seen, end.event, sagas[i])
		}
		if over {
			counts, err := kafkaCfg.CountMessages(ctx, names...)
			if err != nil {
				t.Fatal(err)
			}
			var total int64
			for _, n := range counts {
				total += n
			}
			mu.Lock()
			want = len(seen)
			mu.Unlock()
			if int64(want) == total {
				break
			}
		}
		if time.Now().After(deadline) {
			mu.Lock()
			n := len(seen)
			mu.Unlock()
			t.Fatalf("the sagas did not end with every record read: %d records read, sagas %v", n, sagas)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The Java consumer reads them all.
	runCtx, runDone := context.WithTimeout(ctx, 3*time.Minute)
	defer runDone()
	args := append([]string{strings.Join(kafkaCfg.Brokers, ","), core, strconv.Itoa(want), "120"}, names...)
	cmd := exec.CommandContext(runCtx, script, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start = time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("the Java consumer: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	t.Logf("the Java consumer read %d records in %s", want, time.Since(start).Round(time.Millisecond))

	mu.Lock()
	defer mu.Unlock()
	read := map[string]bool{}
	perTopic := map[string]map[string]bool{} // topic → saga ids read there
	lines := bufio.NewScanner(&stdout)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		var j wireRecord
		if err := json.Unmarshal(lines.Bytes(), &j); err != nil {
			t.Fatalf("a line the Java consumer printed: %v\n%s", err, lines.Bytes())
		}
		g, ok := seen[j.at()]
		switch {
		case read[j.at()]:
			t.Errorf("the Java consumer read %s twice", j.at())
		case !ok:
			t.Errorf("the Java consumer read %s, which Go did not: %s", j.at(), lines.Bytes())
		case j.SchemaID != g.SchemaID || j.SchemaID != ids[j.Topic]:
			t.Errorf("%s: the Java consumer found schema id %d in the frame, Go %d; the registry's is %d", j.at(), j.SchemaID, g.SchemaID, ids[j.Topic])
		case j.Type != g.Type:
			t.Errorf("%s: the Java consumer read type %q, Go %q", j.at(), j.Type, g.Type)
		case !sameJSON(j.Payload, g.Payload):
			t.Errorf("%s: the Java consumer's payload differs from Go's:\njava: %s\ngo:   %s", j.at(), j.Payload, g.Payload)
		}
		read[j.at()] = true
		if perTopic[j.Topic] == nil {
			perTopic[j.Topic] = map[string]bool{}
		}
		perTopic[j.Topic][j.sagaID()] = true
	}
	if err := lines.Err(); err != nil {
		t.Fatal(err)
	}
	if len(read) != want {
		t.Errorf("the Java consumer printed %d records, want %d", len(read), want)
	}
	// Both sagas' messages are among them, on the topics both sagas use
	// (the refused order is never shipped).
	for _, topic := range []string{topics.InventoryCommands, topics.PaymentCommands, topics.SagaReplies, topics.OrderEvents} {
		for _, id := range sagas {
			if !perTopic[topic][id.String()] {
				t.Errorf("the Java consumer read nothing of saga %s on %s", id, topic)
			}
		}
	}
	if !perTopic[topics.ShippingCommands][sagas[0].String()] {
		t.Errorf("the Java consumer read no shipping command of saga %s", sagas[0])
	}
}

type apicurioVersion struct {
	Version   string `json:"version"`
	GlobalID  int    `json:"globalId"`
	ContentID int    `json:"contentId"`
}

// apicurioVersions lists the versions of subject (an artifact of group
// default) in Apicurio's core API.
func apicurioVersions(ctx context.Context, t *testing.T, core, subject string) []apicurioVersion {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, core+"/groups/default/artifacts/"+neturl.PathEscape(subject)+"/versions", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Versions []apicurioVersion `json:"versions"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
		t.Fatalf("GET the versions of %s from %s: %s", subject, core, resp.Status)
	}
	return out.Versions
}

// seenEvent reports whether an order event of type typ for saga id is among
// the records read.
func seenEvent(mu *sync.Mutex, seen map[string]wireRecord, typ string, id uuid.UUID) bool {
	mu.Lock()
	defer mu.Unlock()
	for _, r := range seen {
		if r.Type == typ && r.sagaID() == id.String() {
			return true
		}
	}
	return false
}

func sameJSON(a, b []byte) bool {
	var x, y any
	return json.Unmarshal(a, &x) == nil && json.Unmarshal(b, &y) == nil && reflect.DeepEqual(x, y)
}
