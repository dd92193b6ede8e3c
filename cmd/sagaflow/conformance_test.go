package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/steps"
)

// `sagaflow conformance` against Sagaflow's payment participant: every
// rule passes, in a table; an unknown participant is refused.
func TestConformanceCommand(t *testing.T) {
	t.Parallel()
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	prefix := testenv.Name(t, "cc") + "."
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := steps.SeedStock(ctx, db.Pool, map[string]int{"sku-1": 10}); err != nil {
		t.Fatal(err)
	}
	stacktest.Start(t, roles.Config{Pool: db.Pool, Kafka: kafka, Topics: kafkax.PrefixedTopics(prefix), Roles: []string{roles.Payment, roles.Relay}})
	var out bytes.Buffer
	args := []string{"--kafka-brokers", strings.Join(kafka.Brokers, ","), "--topic-prefix", prefix, "--database-url", db.URL}
	if err := runConformance(ctx, append(args, "--participant", "payment", "--effects-sql", "ours"), &out); err != nil || !strings.Contains(out.String(), "payment: 10 of 10 rules passed") {
		t.Fatalf("conformance: %v\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
	if err := runConformance(ctx, append(args, "--participant", "billing"), &out); err == nil {
		t.Error("an unknown participant was accepted")
	}
}
