package contract_test

import (
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/contract"
)

func TestMain(m *testing.M) { testenvMain(m) }

const base = `{"type": "object", "additionalProperties": false, "required": ["id", "kind"],
  "properties": {
    "id": {"type": "string"},
    "kind": {"type": "string", "enum": ["action", "compensation"]},
    "note": {"type": "string"},
    "items": {"type": "array", "items": {"type": "object", "additionalProperties": false, "required": ["sku"],
      "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer"}}}}
  }}`

// Compare finds exactly the changes that break readers of older data.
func TestCompare(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, newer string
		want        []string // "path: reason fragment"; none: compatible
	}{
		{"unchanged", base, nil},
		{"optional field added", strings.Replace(base, `"note": {"type": "string"},`, `"note": {"type": "string"}, "extra": {"type": "integer"},`, 1), nil},
		{"enum widened", strings.Replace(base, `["action", "compensation"]`, `["action", "compensation", "query"]`, 1), nil},
		{"integer to number", strings.Replace(base, `"quantity": {"type": "integer"}`, `"quantity": {"type": "number"}`, 1), nil},
		{"new required field", strings.Replace(base, `"required": ["id", "kind"]`, `"required": ["id", "kind", "note"]`, 1),
			[]string{"note: new required field"}},
		{"type changed", strings.Replace(base, `"id": {"type": "string"}`, `"id": {"type": "integer"}`, 1),
			[]string{"id: type [integer] no longer accepts string"}},
		{"field removed", strings.Replace(base, `"note": {"type": "string"},`, ``, 1),
			[]string{"note: field removed from a closed object"}},
		{"enum narrowed", strings.Replace(base, `["action", "compensation"]`, `["action"]`, 1),
			[]string{"kind: value compensation no longer allowed"}},
		{"nested required", strings.Replace(base, `"required": ["sku"]`, `"required": ["sku", "quantity"]`, 1),
			[]string{"items[].quantity: new required field"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := contract.Compare([]byte(base), []byte(tc.newer))
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, g := range got {
				lines = append(lines, g.Path+": "+g.Reason)
			}
			if len(lines) != len(tc.want) {
				t.Fatalf("got %q, want %q", lines, tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(lines[i], w) {
					t.Errorf("got %q, want %q", lines[i], w)
				}
			}
		})
	}
}

// The embedded schemas compile, are closed, and their versions are
// compatible with every earlier one.
func TestEmbeddedSchemas(t *testing.T) {
	t.Parallel()
	if len(contract.Names()) != 4 {
		t.Fatalf("schemas %v", contract.Names())
	}
	for _, name := range contract.Names() {
		if len(contract.Versions(name)) == 0 || len(contract.Types(name)) == 0 {
			t.Errorf("schema %s: versions %v, types %v", name, contract.Versions(name), contract.Types(name))
		}
		for _, v := range contract.Versions(name) {
			for _, typ := range contract.Types(name) {
				if err := contract.Validate(typ, v, []byte(`{"unknown": 1}`)); err == nil {
					t.Errorf("%s v%d accepts an unknown field: not closed", typ, v)
				}
			}
		}
	}
	bad, err := contract.Check()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		t.Errorf("incompatible: %s", b)
	}
	if err := contract.Validate("inventory.explode", 1, []byte(`{}`)); err == nil {
		t.Error("a message type without a schema validated")
	}
}
