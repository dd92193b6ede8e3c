package roles_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/internal/roles"
)

// A command the payment participant gives up on (a fault on every try) is
// dead-lettered, recorded by the relay role's ingester with its origin, its
// saga and its step, and served by GET /dead-letters?saga_id=…; the saga
// itself still ends (its step deadline compensates it).
func TestDeadLetterRecordedAndServed(t *testing.T) {
	t.Parallel()
	e := setup(t, nil)
	p, code := e.place(uuid.NewString(), orderBody(oneItem("sku-1", 1), map[string]string{"payment": "error"}, "DE"))
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders answered %d", code)
	}
	var list api.DeadLetterList
	deadline := time.Now().Add(2 * time.Minute)
	for len(list.DeadLetters) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter of saga %s served", p.SagaID)
		}
		time.Sleep(50 * time.Millisecond)
		status, _, body := e.request(http.MethodGet, "/dead-letters?saga_id="+p.SagaID.String(), nil)
		if status != http.StatusOK {
			t.Fatalf("GET /dead-letters: %d %s", status, body)
		}
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatal(err)
		}
	}
	d := list.DeadLetters[0]
	if d.ConsumerGroup != e.topics.Group(roles.Payment) || d.OriginTopic != e.topics.PaymentCommands || d.Step != "payment" ||
		d.Type != "payment.charge" || d.Key != p.SagaID.String() || d.OriginOffset == nil || d.Attempts == nil || *d.Attempts < 2 {
		t.Fatalf("dead letter %+v: want payment.charge of saga %s from %s, with its offset and attempts", d, p.SagaID, e.topics.PaymentCommands)
	}
}
