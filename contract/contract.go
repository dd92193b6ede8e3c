// Package contract is Sagaflow's wire contract: which JSON Schema (package
// schemas) each message type has in each version, validation of a payload
// against it, and the compatibility rules between a schema's versions
// (Check), so that participants written in any language, and deployed on
// their own schedule, keep understanding each other.
package contract

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/schemas"
)

// Schema names, the directories of package schemas.
const (
	OrderCommand = "order-command"
	SagaReply    = "saga-reply"
	OrderEvent   = "order-event"
	// DeadLetter is the schema of a dead letter's headers (its envelope):
	// the payload is the original one, whatever it was.
	DeadLetter = "dead-letter"
)

// DeadLetterType is the name under which Validate checks a dead letter's
// headers (as a JSON object) against schema DeadLetter; on the wire a dead
// letter keeps its original type header.
const DeadLetterType = "dead-letter"

// typeSchema maps each message type (the type header) to its schema.
var typeSchema = map[string]string{
	"inventory.reserve": OrderCommand, "inventory.release": OrderCommand,
	"payment.charge": OrderCommand, "payment.refund": OrderCommand,
	"shipping.ship": OrderCommand, "shipping.cancel": OrderCommand,
	"saga.reply":  SagaReply,
	"OrderPlaced": OrderEvent, "OrderConfirmed": OrderEvent, "OrderCancelled": OrderEvent,
	DeadLetterType: DeadLetter,
}

// TopicSchema is the schema of every message on a topic.
type TopicSchema struct {
	Topic, Schema string
}

// TopicSchemas lists each topic of topics that carries messages with a
// schema, and that schema (one per topic: a topic's subject has one).
func TopicSchemas(topics kafkax.Topics) []TopicSchema {
	return []TopicSchema{
		{topics.InventoryCommands, OrderCommand}, {topics.PaymentCommands, OrderCommand}, {topics.ShippingCommands, OrderCommand},
		{topics.SagaReplies, SagaReply}, {topics.OrderEvents, OrderEvent},
	}
}

// SchemaOf names the schema of message type typ ("" when it has none).
func SchemaOf(typ string) string { return typeSchema[typ] }

// Types lists the message types of schema name, sorted.
func Types(name string) []string {
	var out []string
	for t, s := range typeSchema {
		if s == name {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out
}

// Names lists the schemas, sorted.
func Names() []string {
	dirs, _ := fs.ReadDir(schemas.FS, ".")
	var out []string
	for _, d := range dirs {
		if d.IsDir() {
			out = append(out, d.Name())
		}
	}
	return out
}

// Versions lists the versions of schema name, ascending.
func Versions(name string) []int {
	files, _ := fs.Glob(schemas.FS, name+"/v*.json")
	var out []int
	for _, f := range files {
		if v, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(path.Base(f), "v"), ".json")); err == nil {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// Source returns the text of version v of schema name.
func Source(name string, v int) ([]byte, error) {
	b, err := fs.ReadFile(schemas.FS, fmt.Sprintf("%s/v%d.json", name, v))
	if err != nil {
		return nil, fmt.Errorf("schema %s version %d: %w", name, v, err)
	}
	return b, nil
}

var (
	compiled   sync.Map // "name/vN" → *jsonschema.Schema
	compileErr sync.Map
)

func compile(name string, v int) (*jsonschema.Schema, error) {
	key := fmt.Sprintf("%s/v%d", name, v)
	if s, ok := compiled.Load(key); ok {
		return s.(*jsonschema.Schema), nil
	}
	if err, ok := compileErr.Load(key); ok {
		return nil, err.(error)
	}
	src, err := Source(name, v)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("schema %s: %w", key, err)
	}
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	url := "mem:///" + key + ".json"
	if err := c.AddResource(url, doc); err != nil {
		return nil, fmt.Errorf("schema %s: %w", key, err)
	}
	s, err := c.Compile(url)
	if err != nil {
		err = fmt.Errorf("schema %s: %w", key, err)
		compileErr.Store(key, err)
		return nil, err
	}
	compiled.Store(key, s)
	return s, nil
}

// Validate checks payload, a message of type typ in schema version v,
// against its schema. A type without a schema is an error.
func Validate(typ string, v int, payload []byte) error {
	name := SchemaOf(typ)
	if name == "" {
		return fmt.Errorf("message type %q has no schema", typ)
	}
	s, err := compile(name, v)
	if err != nil {
		return err
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("%s v%d: not JSON: %w", typ, v, err)
	}
	if err := s.Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			// The detailed form names each field at fault.
			detail := strings.Join(strings.Fields(strings.ReplaceAll(fmt.Sprintf("%#v", ve), "\n", "; ")), " ")
			return fmt.Errorf("%s v%d: %s", typ, v, detail)
		}
		return fmt.Errorf("%s v%d: %w", typ, v, err)
	}
	return nil
}

// Paths lists the property paths schema version v of name declares
// ("data.items[].sku"), sorted: what a producer of that version may write.
func Paths(name string, v int) ([]string, error) {
	src, err := Source(name, v)
	if err != nil {
		return nil, err
	}
	var root map[string]any
	if err := json.Unmarshal(src, &root); err != nil {
		return nil, fmt.Errorf("schema %s v%d: %w", name, v, err)
	}
	var out []string
	var walk func(node map[string]any, prefix string)
	walk = func(node map[string]any, prefix string) {
		node = resolve(root, node)
		if props, ok := node["properties"].(map[string]any); ok {
			for k, p := range props {
				pm, _ := p.(map[string]any)
				out = append(out, prefix+k)
				walk(pm, prefix+k+".")
			}
		}
		if items, ok := node["items"].(map[string]any); ok {
			walk(items, strings.TrimSuffix(prefix, ".")+"[].")
		}
	}
	walk(root, "")
	slices.Sort(out)
	return out, nil
}

// PayloadPaths lists the property paths a JSON payload holds, in the form
// of Paths (the keys of a free-form map are not descended into when
// stopAt names its path).
func PayloadPaths(payload []byte, stopAt ...string) ([]string, error) {
	var v any
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var walk func(v any, prefix string)
	walk = func(v any, prefix string) {
		switch x := v.(type) {
		case map[string]any:
			for k, c := range x {
				p := prefix + k
				seen[p] = true
				if !slices.Contains(stopAt, p) {
					walk(c, p+".")
				}
			}
		case []any:
			for _, c := range x {
				walk(c, strings.TrimSuffix(prefix, ".")+"[].")
			}
		}
	}
	walk(v, "")
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// resolve follows a local $ref ("#/$defs/order").
func resolve(root, node map[string]any) map[string]any {
	ref, ok := node["$ref"].(string)
	if !ok || !strings.HasPrefix(ref, "#/") {
		return node
	}
	var cur any = root
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return node
		}
		cur = m[part]
	}
	if m, ok := cur.(map[string]any); ok {
		return m
	}
	return node
}
