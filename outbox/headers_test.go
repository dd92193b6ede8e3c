package outbox_test

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/outbox"
)

// Headers the relay sets itself — the message id by which inboxes dedupe,
// the key — cannot be passed in Message.Headers: a writer could otherwise
// override the dedupe id (before: accepted, and the consumer saw the
// writer's value).
func TestWriteRefusesReservedHeaders(t *testing.T) {
	t.Parallel()
	ob := outbox.New("inventory")
	for _, name := range []string{"_watermill_message_uuid", "kafka_key", "Kafka_Key"} {
		var b pgx.Batch
		err := ob.Queue(&b, outbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`), Headers: map[string]string{name: "x"}})
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("header %q: error %v, want a refusal naming it", name, err)
		}
		if b.Len() != 0 {
			t.Errorf("header %q: %d statements queued, want none", name, b.Len())
		}
	}
	var b pgx.Batch
	if err := ob.Queue(&b, outbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`), Headers: map[string]string{"tenant": "acme"}}); err != nil {
		t.Fatalf("an ordinary header: %v", err)
	}
}
