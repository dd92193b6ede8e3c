package contract

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/sagaflow/sagaflow/kafkax"
)

// Rules are the participant rules of the protocol, in prose: what a
// participant in any language must do (the AsyncAPI document's
// description, and the README's).
const Rules = `Sagaflow's order saga over Kafka. The orchestrator sends each step's command to the participant's commands topic; the participant answers on the topic the command names in reply_to (saga.replies; a version 1 command names none, and the answer goes to saga.replies). Every message is JSON, keyed by the saga id, with headers type, schema_version, correlation_id (the saga id), causation_id and _watermill_message_uuid (the message id, by which consumers deduplicate).

A participant must:
1. Answer per (saga, step): the same command, redelivered or sent again with a higher attempt, gets the same reply and applies its effect once. Replies may be repeated; the orchestrator ignores answers it no longer waits for.
2. Reply succeeded when the action's effect is applied, refused (with a reason) when a business rule refuses it and nothing changed. A fault (its database down, a bug) is never a reply: let the message be retried, then dead-letter it.
3. Undo on compensation: a compensation of an applied action undoes it and replies succeeded; a compensation of an action never applied (or refused) replies succeeded and leaves a tombstone, so that the action, arriving late, is refused without effect.
4. Refuse what it cannot read without crashing: an unknown message type or a schema_version above what it knows goes to its dead-letter topic (GROUP.dlq) at once.
5. Commit its effect, its record of the answer and its reply together (an outbox), so that a crash between them cannot answer without effect or apply without answering.
6. Answer in the schema version it was asked in (a version 1 command gets a version 1 reply), so that an orchestrator not yet upgraded understands the answer; read the newest version and the one before it.`

// AsyncAPI returns the AsyncAPI 3.0 document of the protocol on topics:
// every topic with its key, headers and message schemas, which role sends
// and which receives in which consumer group, the dead-letter topics, and
// the participant rules.
func AsyncAPI(topics kafkax.Topics) ([]byte, error) {
	schemas := map[string]any{}
	messages := map[string]any{}
	for _, name := range Names() {
		for _, v := range Versions(name) {
			src, err := Source(name, v)
			if err != nil {
				return nil, err
			}
			var s map[string]any
			if err := json.Unmarshal(src, &s); err != nil {
				return nil, fmt.Errorf("schema %s v%d: %w", name, v, err)
			}
			delete(s, "$schema")
			delete(s, "$id")
			id := fmt.Sprintf("%s-v%d", name, v)
			rebase(s, "#/components/schemas/"+id+"/")
			schemas[id] = s
		}
	}
	schemas["headers"] = map[string]any{
		"type": "object", "required": []string{"type", "schema_version", "correlation_id", "_watermill_message_uuid"},
		"properties": map[string]any{
			"type":                    map[string]any{"type": "string", "description": "The message type, which names its schema."},
			"schema_version":          map[string]any{"type": "string", "pattern": "^[1-9][0-9]*$", "description": "The payload's schema version; a consumer dead-letters a version above what it knows."},
			"correlation_id":          map[string]any{"type": "string", "description": "The saga id."},
			"causation_id":            map[string]any{"type": "string", "description": "The id of the message that caused this one."},
			"_watermill_message_uuid": map[string]any{"type": "string", "description": "The message id, by which consumers deduplicate (an inbox)."},
			"kafka_key":               map[string]any{"type": "string", "description": "The key, repeated as a header."},
			"traceparent":             map[string]any{"type": "string", "description": "W3C trace context (when tracing is on)."},
		},
	}
	key := map[string]any{"kafka": map[string]any{"key": map[string]any{"type": "string", "format": "uuid", "description": "The saga id: a saga's messages keep their order."}}}
	for _, name := range Names() {
		vs := Versions(name)
		newest := vs[len(vs)-1]
		for _, typ := range Types(name) {
			if name == DeadLetter {
				continue // the dead-letter message below: these are its headers
			}
			messages[typ] = map[string]any{
				"name": typ, "title": typ, "contentType": "application/json",
				"headers":  map[string]any{"$ref": "#/components/schemas/headers"},
				"payload":  map[string]any{"$ref": fmt.Sprintf("#/components/schemas/%s-v%d", name, newest)},
				"bindings": key,
			}
		}
	}
	dl := Versions(DeadLetter)
	messages[DeadLetterType] = map[string]any{
		"name": DeadLetterType, "title": "A message a consumer gave up on", "contentType": "application/json",
		"headers": map[string]any{"allOf": []any{map[string]any{"$ref": "#/components/schemas/headers"},
			map[string]any{"$ref": fmt.Sprintf("#/components/schemas/%s-v%d", DeadLetter, dl[len(dl)-1])}}},
		"payload": map[string]any{"description": "The original payload, as it was."},
	}
	channels := map[string]any{}
	operations := map[string]any{}
	channel := func(id, address, description string, types []string) {
		refs := map[string]any{}
		for _, t := range types {
			refs[t] = map[string]any{"$ref": "#/components/messages/" + t}
		}
		channels[id] = map[string]any{"address": address, "description": description, "messages": refs}
	}
	operation := func(id, action, channel, role, group string, types []string) {
		var refs []any
		for _, t := range types {
			refs = append(refs, map[string]any{"$ref": "#/channels/" + channel + "/messages/" + t})
		}
		op := map[string]any{"action": action, "channel": map[string]any{"$ref": "#/channels/" + channel},
			"summary": role + " " + action + "s", "messages": refs}
		if group != "" {
			op["bindings"] = map[string]any{"kafka": map[string]any{"groupId": map[string]any{"type": "string", "enum": []string{group}}}}
		}
		operations[id] = op
	}
	for _, p := range []struct{ name, topic string }{{"inventory", topics.InventoryCommands}, {"payment", topics.PaymentCommands}, {"shipping", topics.ShippingCommands}} {
		var types []string
		for _, t := range Types(OrderCommand) {
			if strings.HasPrefix(t, p.name+".") {
				types = append(types, t)
			}
		}
		channel(p.name+"Commands", p.topic, "Commands to the "+p.name+" participant (action and compensation).", types)
		operation("send"+title(p.name)+"Commands", "send", p.name+"Commands", "the orchestrator", "", types)
		operation("receive"+title(p.name)+"Commands", "receive", p.name+"Commands", "the "+p.name+" participant", topics.Group(p.name), types)
		channel(p.name+"DeadLetters", topics.DeadLetter(p.name), "Commands the "+p.name+" participant gave up on.", []string{"dead-letter"})
		operation("send"+title(p.name)+"DeadLetters", "send", p.name+"DeadLetters", "the "+p.name+" participant", "", []string{"dead-letter"})
	}
	channel("sagaReplies", topics.SagaReplies, "Every participant's replies.", Types(SagaReply))
	operation("sendSagaReplies", "send", "sagaReplies", "each participant", "", Types(SagaReply))
	operation("receiveSagaReplies", "receive", "sagaReplies", "the orchestrator", topics.Group("orchestrator"), Types(SagaReply))
	channel("orchestratorDeadLetters", topics.DeadLetter("orchestrator"), "Replies the orchestrator gave up on.", []string{"dead-letter"})
	operation("sendOrchestratorDeadLetters", "send", "orchestratorDeadLetters", "the orchestrator", "", []string{"dead-letter"})
	channel("orderEvents", topics.OrderEvents, "What happened to orders, for other services.", Types(OrderEvent))
	operation("sendOrderEvents", "send", "orderEvents", "the api and the orchestrator", "", Types(OrderEvent))
	doc := map[string]any{
		"asyncapi":           "3.0.0",
		"info":               map[string]any{"title": "Sagaflow order saga", "version": "1", "description": Rules},
		"defaultContentType": "application/json",
		"servers":            map[string]any{"kafka": map[string]any{"host": "localhost:9092", "protocol": "kafka", "description": "Any Kafka cluster; topic and group names take --topic-prefix."}},
		"channels":           channels,
		"operations":         operations,
		"components":         map[string]any{"schemas": schemas, "messages": messages},
	}
	b, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func title(s string) string { return strings.ToUpper(s[:1]) + s[1:] }

// rebase rewrites the local $refs of a schema embedded in the document
// ("#/definitions/order") to point into it from the document's root.
func rebase(node any, prefix string) {
	switch x := node.(type) {
	case map[string]any:
		for k, v := range x {
			if ref, ok := v.(string); ok && k == "$ref" && strings.HasPrefix(ref, "#/") {
				x[k] = prefix + strings.TrimPrefix(ref, "#/")
				continue
			}
			rebase(v, prefix)
		}
	case []any:
		for _, v := range x {
			rebase(v, prefix)
		}
	}
}
