package saga_test

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// fuzzMessage is the Kafka message a consumer would hand a decoder: payload
// with headers type and schema_version.
func fuzzMessage(payload []byte, typ, version string) *message.Message {
	msg := message.NewMessage("0190a3c4-0000-7000-8000-000000000001", payload)
	msg.Metadata.Set(outbox.HeaderType, typ)
	msg.Metadata.Set(outbox.HeaderSchemaVersion, version)
	return msg
}

// checkVersionHeader asserts that a message accepted by a decoder carried
// a schema version this build understands.
func checkVersionHeader(t *testing.T, version string) {
	t.Helper()
	if n, err := strconv.Atoi(version); err != nil || n < 1 || n > saga.SchemaVersion {
		t.Fatalf("accepted a message of schema version %q (this build understands 1 to %d)", version, saga.SchemaVersion)
	}
}

const (
	fuzzSagaID    = "0190a3c4-1111-7000-8000-00000000000a"
	fuzzOrderData = `{"order_id":"0190a3c4-2222-7000-8000-00000000000b","customer_id":"c-1","items":[{"sku":"A","quantity":2}],` +
		`"amount_cents":1999,"currency":"EUR","shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin",` +
		`"postal_code":"10115","country":"DE"}}`
)

// FuzzDecodeCommand proves that DecodeCommand, which every participant
// runs on every message of its command topic, never panics; that each of
// its errors is permanent (retrying cannot fix the message, so it is
// dead-lettered at once); and that a command it accepts came with a schema
// version this build understands and has a saga id, a step, a known kind
// and an attempt of at least 1.
func FuzzDecodeCommand(f *testing.F) {
	for _, s := range []struct{ payload, typ, version string }{
		{`{"saga_id":"` + fuzzSagaID + `","saga_type":"order","step":"inventory","kind":"action","attempt":1,"data":` + fuzzOrderData + `}`, "inventory.reserve", "1"},
		{`{"saga_id":"` + fuzzSagaID + `","saga_type":"order","step":"payment","kind":"compensation","attempt":3,"data":{}}`, "payment.refund", "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":1,"data":{}}`, "inventory.reserve", "3"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory\u0000","kind":"action","attempt":1,"data":{}}`, "inventory.reserve", "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"undo","attempt":0}`, "inventory.reserve", "1"},
		{`{"saga_id":"00000000-0000-0000-0000-000000000000","step":"x","kind":"action","attempt":1}`, "", "1"},
		{`{"saga_id":`, "inventory.reserve", "1"},
		{"\xff\x00x", "inventory.reserve", "1"},
		{`null`, "inventory.reserve", "+1"},
		{`{}`, "inventory.reserve", ""},
	} {
		f.Add([]byte(s.payload), s.typ, s.version)
	}
	f.Fuzz(func(t *testing.T, payload []byte, typ, version string) {
		c, err := saga.DecodeCommand(fuzzMessage(payload, typ, version))
		if err != nil {
			if !outbox.IsPermanent(err) {
				t.Fatalf("DecodeCommand error is not permanent: %v", err)
			}
			return
		}
		checkVersionHeader(t, version)
		if c.SagaID == uuid.Nil || c.Step == "" || c.Attempt < 1 || (c.Kind != saga.KindAction && c.Kind != saga.KindCompensation) {
			t.Fatalf("DecodeCommand accepted a command without saga id, step, attempt or known kind: %+v", c)
		}
		if len(c.Data) > 0 && !json.Valid(c.Data) {
			t.Fatalf("DecodeCommand accepted a command whose data is not JSON: %q", c.Data)
		}
	})
}

// FuzzDecodeReply proves that DecodeReply, which the orchestrator runs on
// every message of the replies topic, never panics; that each of its
// errors is permanent; and that a reply it accepts had message type
// saga.reply and a schema version this build understands, has a saga id, a
// step, a known kind and outcome and an attempt of at least 1, and holds no
// NUL character in the step or reason, which the orchestrator stores in
// PostgreSQL text columns (saga.history) that cannot hold one: such a reply
// could only fail on every delivery.
func FuzzDecodeReply(f *testing.F) {
	for _, s := range []struct{ payload, typ, version string }{
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":1,"outcome":"succeeded"}`, saga.ReplyType, "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"payment","kind":"action","attempt":2,"outcome":"refused","reason":"card declined"}`, saga.ReplyType, "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"payment","kind":"action","attempt":2,"outcome":"refused","reason":"x\u0000y"}`, saga.ReplyType, "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"shipping\u0000","kind":"compensation","attempt":1,"outcome":"succeeded"}`, saga.ReplyType, "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":1,"outcome":"succeeded"}`, saga.ReplyType, "3"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":1,"outcome":"maybe"}`, saga.ReplyType, "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":1,"outcome":"succeeded"}`, "inventory.reserve", "1"},
		{`{"saga_id":"` + fuzzSagaID + `","step":"inventory","kind":"action","attempt":-1,"outcome":"succeeded"}`, saga.ReplyType, "01"},
		{`{"saga_id":"` + fuzzSagaID + `","step":`, saga.ReplyType, "1"},
		{`[1,2]`, saga.ReplyType, "1"},
		{``, saga.ReplyType, "x"},
	} {
		f.Add([]byte(s.payload), s.typ, s.version)
	}
	f.Fuzz(func(t *testing.T, payload []byte, typ, version string) {
		r, err := saga.DecodeReply(fuzzMessage(payload, typ, version))
		if err != nil {
			if !outbox.IsPermanent(err) {
				t.Fatalf("DecodeReply error is not permanent: %v", err)
			}
			return
		}
		checkVersionHeader(t, version)
		if typ != saga.ReplyType {
			t.Fatalf("DecodeReply accepted a message of type %q", typ)
		}
		if r.SagaID == uuid.Nil || r.Step == "" || r.Attempt < 1 || (r.Kind != saga.KindAction && r.Kind != saga.KindCompensation) ||
			(r.Outcome != saga.Succeeded && r.Outcome != saga.Refused) {
			t.Fatalf("DecodeReply accepted a reply without saga id, step, attempt, known kind or known outcome: %+v", r)
		}
		if strings.ContainsRune(r.Step, 0) || strings.ContainsRune(r.Reason, 0) {
			t.Fatalf("DecodeReply accepted a NUL character in the step or reason, which PostgreSQL cannot store: %+v", r)
		}
	})
}
