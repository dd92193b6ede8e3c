package contract_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/stacktest"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/steps"
)

func testenvMain(m *testing.M) { testenv.Main(m) }

// stackEnv is a whole stack on the test's own database and topics, and a
// subscriber to read what it writes.
type stackEnv struct {
	db     *testenv.Database
	kafka  kafkax.Config
	topics kafkax.Topics
	stack  *roles.Stack
	sub    message.Subscriber
}

// setupStack starts a stack (cfg with the test's pool, Kafka and topics
// filled in) with stock to sell, and a subscriber; both stop when t ends.
func setupStack(t *testing.T, cfg roles.Config) *stackEnv {
	t.Helper()
	e := &stackEnv{db: testenv.DB(t), kafka: testenv.Kafka(t), topics: kafkax.PrefixedTopics(testenv.Name(t, "ct") + ".")}
	if err := steps.SeedStock(context.Background(), e.db.Pool, map[string]int{"sku-1": 100}); err != nil {
		t.Fatal(err)
	}
	cfg.Pool, cfg.Kafka, cfg.Topics, cfg.Roles, cfg.SweepInterval = e.db.Pool, e.kafka, e.topics, []string{roles.All}, 50*time.Millisecond
	e.stack = stacktest.Start(t, cfg)
	sub, err := e.kafka.NewSubscriber(testenv.Name(t, "watch"), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	e.sub = sub
	return e
}
