package outbox

import (
	"encoding/binary"
	"strconv"

	"github.com/ThreeDotsLabs/watermill/message"
)

// HeaderSchemaID names the metadata in which a consumer keeps the registry
// schema id of a message that came in the Confluent wire format.
const HeaderSchemaID = "schema_id"

// Frame returns payload in the Confluent wire format: a zero magic byte,
// schema id in 4 bytes big-endian, then the payload.
func Frame(id int, payload []byte) []byte {
	out := make([]byte, 5+len(payload))
	binary.BigEndian.PutUint32(out[1:5], uint32(id))
	copy(out[5:], payload)
	return out
}

// Unframe returns the JSON of a payload in the Confluent wire format, and
// its schema id; a payload that is not framed (plain JSON never starts
// with a zero byte) comes back as it is, with ok false.
func Unframe(payload []byte) (json []byte, id int, ok bool) {
	if len(payload) < 5 || payload[0] != 0 {
		return payload, 0, false
	}
	return payload[5:], int(binary.BigEndian.Uint32(payload[1:5])), true
}

// unframe is a consumer middleware: a message in the Confluent wire format
// is handled as its JSON, its schema id kept in the schema_id metadata; a
// plain JSON message as it is. Consumers accept both.
func unframe(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if body, id, ok := Unframe(msg.Payload); ok {
			msg.Payload = body
			msg.Metadata.Set(HeaderSchemaID, strconv.Itoa(id))
		}
		return h(msg)
	}
}
