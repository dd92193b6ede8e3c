package main

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/http/httputil"
	neturl "net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/registry"
)

// registryURL is a running schema registry's API (make test sets
// SAGAFLOW_SCHEMA_REGISTRY and SAGAFLOW_REQUIRE_REGISTRY; without them the
// test is skipped).
func registryURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("SAGAFLOW_SCHEMA_REGISTRY")
	if url == "" {
		if os.Getenv("SAGAFLOW_REQUIRE_REGISTRY") != "" {
			t.Fatal("no schema registry: run scripts/registry/registry start (make test does)")
		}
		t.Skip("no schema registry here; make test runs this test")
	}
	return url
}

// serve registers the wire contract at start, and refuses to start when
// the registry refuses it: here the replies subject already holds a schema
// whose readers need a field ours does not write.
func TestServeRefusesWhatTheRegistryRefuses(t *testing.T) {
	url := registryURL(t)
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := "srv-" + uuid.NewString()[:8] + "."
	topics := kafkax.PrefixedTopics(prefix)
	c := registry.New(url)
	subject := registry.Subject(topics.SagaReplies)
	if err := c.SetCompatibility(ctx, subject, registry.DefaultCompatibility); err != nil {
		t.Fatal(err)
	}
	older := `{"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": false,
		"required": ["saga_id", "ticket"], "properties": {"saga_id": {"type": "string"}, "ticket": {"type": "string"}}}`
	if _, err := c.Register(ctx, subject, []byte(older)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := runServe(ctx, []string{"--role", "orchestrator", "--database-url", db.URL, "--kafka-brokers", strings.Join(kafka.Brokers, ","),
		"--topic-prefix", prefix, "--schema-registry", url}, &out)
	if err == nil || !strings.Contains(err.Error(), "refusing to start") || !strings.Contains(err.Error(), subject) {
		t.Fatalf("serve with an incompatible subject: %v\n%s", err, out.String())
	}
	t.Logf("serve refused: %v", err)
	// The subjects before it were registered; the refused one kept its
	// own schema only.
	if vs, err := c.Versions(ctx, subject); err != nil || len(vs) != 1 {
		t.Errorf("subject %s: versions %v, %v", subject, vs, err)
	}
	if vs, err := c.Versions(ctx, registry.Subject(topics.InventoryCommands)); err != nil || len(vs) != len(contract.Versions(contract.OrderCommand)) {
		t.Errorf("the inventory commands' subject: versions %v, %v", vs, err)
	}
}

// A process that starts while the registry is unreachable sends with the
// ids the last registration remembered; without any, it does not start.
func TestRegistryOutageUsesRememberedIDs(t *testing.T) {
	url := registryURL(t)
	db := testenv.DB(t)
	ctx := context.Background()
	target, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	// The registry behind a proxy that the test takes down.
	proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(&neturl.URL{Scheme: target.Scheme, Host: target.Host}))
	viaProxy := proxy.URL + target.Path
	topics := kafkax.PrefixedTopics("out-" + uuid.NewString()[:8] + ".")
	var out bytes.Buffer
	live, err := registerContract(ctx, db.Pool, viaProxy, topics, registry.DefaultCompatibility, &out)
	if err != nil || len(live) != 5 {
		t.Fatalf("registration: %v %v\n%s", live, err, out.String())
	}
	proxy.Close()
	during, err := registerContract(ctx, db.Pool, viaProxy, topics, registry.DefaultCompatibility, &out)
	if err != nil {
		t.Fatalf("a start during the outage: %v", err)
	}
	for topic, id := range live {
		if during[topic] != id {
			t.Errorf("topic %s: id %d during the outage, %d registered", topic, during[topic], id)
		}
	}
	fresh := testenv.DB(t)
	if _, err := registerContract(ctx, fresh.Pool, viaProxy, topics, registry.DefaultCompatibility, &out); err == nil || !strings.Contains(err.Error(), "no ids are remembered") {
		t.Errorf("a first start during the outage: %v", err)
	}
}
