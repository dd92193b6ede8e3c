package contract_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// recorded is a message as a consumer received it, recorded off the topics
// by TestProducedMessagesMatchSchemas' watcher.
type recorded struct {
	Topic   string            `json:"topic"`
	ID      string            `json:"id"`
	Headers map[string]string `json:"headers"`
	Payload json.RawMessage   `json:"payload"`
}

// Consumers read the newest version and the one before it. The messages in
// testdata/recorded/v1 were produced by a whole stack of the release before
// schema version 2 (commit 8896202: completed and refused orders). Each is
// valid version 1; today's decoders read it; the upcast message is valid
// in the newest version, keeps every field it had, and fills those version
// 1 lacks as each upcaster documents.
func TestUpcastRecordedMessages(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/recorded/v1/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no recorded messages: %v", err)
	}
	perSchema := map[string]int{}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".json"), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var rec recorded
			if err := json.Unmarshal(b, &rec); err != nil {
				t.Fatal(err)
			}
			typ := rec.Headers[outbox.HeaderType]
			if v := rec.Headers[outbox.HeaderSchemaVersion]; v != "1" {
				t.Fatalf("recorded with schema_version %q, want 1", v)
			}
			if err := contract.Validate(typ, 1, rec.Payload); err != nil {
				t.Fatalf("not a valid version 1 message: %v", err)
			}
			name := contract.SchemaOf(typ)
			vs := contract.Versions(name)
			newest := vs[len(vs)-1]
			if newest != 2 {
				t.Fatalf("schema %s: newest version %d; record messages of version %d and move this test on", name, newest, newest-1)
			}
			perSchema[name]++
			msg := message.NewMessage(rec.ID, message.Payload(rec.Payload))
			for k, v := range rec.Headers {
				msg.Metadata.Set(k, v)
			}
			var upcast any
			switch name {
			case contract.OrderCommand:
				c, err := saga.DecodeCommand(msg)
				if err != nil {
					t.Fatal(err)
				}
				if c.ReplyTo != "" {
					t.Errorf("reply_to %q, want none (version 1 has none)", c.ReplyTo)
				}
				// Without a return address the answer goes to the
				// participant's configured replies topic, in the version
				// asked, which an orchestrator of that version reads.
				reply, err := saga.NewReply(c.Step, "configured.replies", c, msg.UUID, saga.Succeeded, "")
				if err != nil {
					t.Fatal(err)
				}
				if reply.Topic != "configured.replies" || reply.SchemaVersion != 1 {
					t.Errorf("the answer goes to %s in version %d, want configured.replies in 1", reply.Topic, reply.SchemaVersion)
				}
				if err := contract.Validate(saga.ReplyType, 1, reply.Payload); err != nil {
					t.Errorf("the answer: %v", err)
				}
				upcast = c
			case contract.SagaReply:
				r, err := saga.DecodeReply(msg)
				if err != nil {
					t.Fatal(err)
				}
				if r.Participant != r.Step {
					t.Errorf("participant %q, want the step's name %q", r.Participant, r.Step)
				}
				upcast = r
			case contract.OrderEvent:
				v, _ := strconv.Atoi(rec.Headers[outbox.HeaderSchemaVersion])
				ev, err := order.DecodeEvent(v, rec.Payload)
				if err != nil {
					t.Fatal(err)
				}
				if ev.CustomerID != "" || ev.AmountCents != nil || ev.Currency != "" {
					t.Errorf("customer and amount %q %v %q, want unknown", ev.CustomerID, ev.AmountCents, ev.Currency)
				}
				upcast = ev
			default:
				t.Fatalf("no upcaster for schema %s", name)
			}
			out, err := json.Marshal(upcast)
			if err != nil {
				t.Fatal(err)
			}
			if err := contract.Validate(typ, newest, out); err != nil {
				t.Fatalf("upcast to version %d, not valid: %v\n%s", newest, err, out)
			}
			// Nothing the old message said is lost or changed.
			var before, after map[string]any
			_ = json.Unmarshal(rec.Payload, &before)
			_ = json.Unmarshal(out, &after)
			for k, v := range before {
				if !reflect.DeepEqual(after[k], v) {
					t.Errorf("field %s: %v before the upcast, %v after", k, v, after[k])
				}
			}
		})
	}
	for _, name := range contract.Names() {
		if len(contract.Versions(name)) > 1 && perSchema[name] == 0 {
			t.Errorf("no recorded message of schema %s's previous version", name)
		}
	}
}
