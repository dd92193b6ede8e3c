package contract_test

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/kafkax"
)

// docs/asyncapi.json is the document the code generates (regenerate it
// with `sagaflow schemas asyncapi > docs/asyncapi.json`), and it names every
// topic, consumer group, dead-letter topic and message type of the code.
func TestAsyncAPIDocument(t *testing.T) {
	t.Parallel()
	doc, err := contract.AsyncAPI(kafkax.DefaultTopics())
	if err != nil {
		t.Fatal(err)
	}
	file, err := os.ReadFile("../docs/asyncapi.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(doc, file) {
		t.Error("docs/asyncapi.json is not what the code generates: run sagaflow schemas asyncapi > docs/asyncapi.json")
	}
	var d struct {
		AsyncAPI string `json:"asyncapi"`
		Channels map[string]struct {
			Address  string         `json:"address"`
			Messages map[string]any `json:"messages"`
		} `json:"channels"`
		Operations map[string]struct {
			Action   string `json:"action"`
			Bindings struct {
				Kafka struct {
					GroupID struct {
						Enum []string `json:"enum"`
					} `json:"groupId"`
				} `json:"kafka"`
			} `json:"bindings"`
		} `json:"operations"`
		Components struct {
			Messages map[string]struct {
				Payload map[string]any `json:"payload"`
			} `json:"messages"`
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	if d.AsyncAPI != "3.0.0" {
		t.Errorf("asyncapi %q", d.AsyncAPI)
	}
	topics := kafkax.DefaultTopics()
	var addresses, groups []string
	for _, c := range d.Channels {
		addresses = append(addresses, c.Address)
	}
	for _, o := range d.Operations {
		groups = append(groups, o.Bindings.Kafka.GroupID.Enum...)
	}
	for _, topic := range topics.All() {
		if !slices.Contains(addresses, topic) {
			t.Errorf("topic %s has no channel", topic)
		}
	}
	for _, c := range kafkax.Consumers {
		if !slices.Contains(groups, topics.Group(c)) {
			t.Errorf("consumer group %s is in no operation", topics.Group(c))
		}
	}
	for _, name := range contract.Names() {
		for _, typ := range contract.Types(name) {
			if _, ok := d.Components.Messages[typ]; !ok {
				t.Errorf("message type %s is not in the document", typ)
			}
		}
	}
}

// The README's worked example of a command and its reply is valid, and is
// the text of docs/examples.
func TestWorkedExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for typ, file := range map[string]string{"payment.charge": "../docs/examples/payment.charge.json", "saga.reply": "../docs/examples/saga.reply.json"} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		vs := contract.Versions(contract.SchemaOf(typ))
		if err := contract.Validate(typ, vs[len(vs)-1], b); err != nil {
			t.Errorf("%s: %v", file, err)
		}
		if !bytes.Contains(readme, bytes.TrimSpace(b)) {
			t.Errorf("the README does not show %s as it is", file)
		}
	}
}
