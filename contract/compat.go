package contract

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
)

// Incompatibility is a change between two versions of a schema that breaks
// a reader: data the older version allows that the newer one refuses.
type Incompatibility struct {
	Schema   string
	Old, New int
	// Path is the property path ("data.items[].quantity"; "" the root).
	Path   string
	Reason string
}

func (i Incompatibility) String() string {
	where := i.Path
	if where == "" {
		where = "(root)"
	}
	return fmt.Sprintf("%s v%d → v%d: %s: %s", i.Schema, i.Old, i.New, where, i.Reason)
}

// Check compares every version of every schema with all earlier ones of
// the same schema (backward transitive: a consumer of the newest version
// reads what any older producer wrote) and returns what breaks.
func Check() ([]Incompatibility, error) {
	var out []Incompatibility
	for _, name := range Names() {
		vs := Versions(name)
		for j, nv := range vs {
			newer, err := Source(name, nv)
			if err != nil {
				return nil, err
			}
			for _, ov := range vs[:j] {
				older, err := Source(name, ov)
				if err != nil {
					return nil, err
				}
				found, err := Compare(older, newer)
				if err != nil {
					return nil, fmt.Errorf("schema %s v%d → v%d: %w", name, ov, nv, err)
				}
				for _, f := range found {
					f.Schema, f.Old, f.New = name, ov, nv
					out = append(out, f)
				}
			}
		}
	}
	return out, nil
}

// Compare lists what schema newer refuses of the data schema older allows
// (the rules a registry applies to JSON Schemas under BACKWARD): a new
// required property; a property removed from a closed object; a closed
// object that was open; a type, const or enum narrowed. Constraints on
// values (minimum, pattern, length) are not compared.
func Compare(older, newer []byte) ([]Incompatibility, error) {
	var o, n map[string]any
	if err := json.Unmarshal(older, &o); err != nil {
		return nil, fmt.Errorf("older schema: %w", err)
	}
	if err := json.Unmarshal(newer, &n); err != nil {
		return nil, fmt.Errorf("newer schema: %w", err)
	}
	c := comparer{oldRoot: o, newRoot: n}
	c.node(o, n, "")
	sort.Slice(c.found, func(i, j int) bool { return c.found[i].Path < c.found[j].Path })
	return c.found, nil
}

type comparer struct {
	oldRoot, newRoot map[string]any
	found            []Incompatibility
}

func (c *comparer) add(path, format string, args ...any) {
	c.found = append(c.found, Incompatibility{Path: path, Reason: fmt.Sprintf(format, args...)})
}

func join(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

func (c *comparer) node(o, n map[string]any, path string) {
	o, n = resolve(c.oldRoot, o), resolve(c.newRoot, n)
	ot, nt := types(o), types(n)
	if len(nt) > 0 {
		for _, t := range ot {
			if !slices.Contains(nt, t) && !(t == "integer" && slices.Contains(nt, "number")) {
				c.add(path, "type %v no longer accepts %s", nt, t)
			}
		}
		if len(ot) == 0 {
			c.add(path, "now restricted to type %v", nt)
		}
	}
	if nc, ok := n["const"]; ok {
		if oc, ok := o["const"]; !ok || fmt.Sprint(oc) != fmt.Sprint(nc) {
			c.add(path, "now must be %v", nc)
		}
	}
	if ne, ok := n["enum"].([]any); ok {
		oe, ok := o["enum"].([]any)
		if !ok {
			c.add(path, "now limited to %v", ne)
		}
		for _, v := range oe {
			if !slices.ContainsFunc(ne, func(x any) bool { return fmt.Sprint(x) == fmt.Sprint(v) }) {
				c.add(path, "value %v no longer allowed", v)
			}
		}
	}
	oReq, nReq := strs(o["required"]), strs(n["required"])
	oProps, _ := o["properties"].(map[string]any)
	nProps, _ := n["properties"].(map[string]any)
	for _, r := range nReq {
		if !slices.Contains(oReq, r) {
			c.add(join(path, r), "new required field (older producers do not write it)")
		}
	}
	if closed(n) {
		if !closed(o) && (o["type"] == "object" || oProps != nil) {
			c.add(path, "closed to properties it did not declare (additionalProperties false), which the older version allowed")
		}
		for k := range oProps {
			if _, ok := nProps[k]; !ok {
				c.add(join(path, k), "field removed from a closed object (older producers write it)")
			}
		}
	}
	for k, op := range oProps {
		np, ok := nProps[k]
		if !ok {
			continue
		}
		om, _ := op.(map[string]any)
		nm, _ := np.(map[string]any)
		c.node(om, nm, join(path, k))
	}
	if oi, ok := o["items"].(map[string]any); ok {
		if ni, ok := n["items"].(map[string]any); ok {
			c.node(oi, ni, path+"[]")
		}
	}
}

func closed(s map[string]any) bool {
	ap, ok := s["additionalProperties"].(bool)
	return ok && !ap
}

func types(s map[string]any) []string {
	switch t := s["type"].(type) {
	case string:
		return []string{t}
	case []any:
		return strs(t)
	}
	return nil
}

func strs(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}
