package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
)

func TestOpenAPIDocumentMatchesRoutes(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.do(http.MethodGet, "/openapi.json", "")
	if res.status != http.StatusOK || res.header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /openapi.json: %d %s", res.status, res.header.Get("Content-Type"))
	}
	var raw map[string]any
	res.decode(t, &raw)
	var d openAPIDoc
	res.decode(t, &d)
	if !strings.HasPrefix(d.OpenAPI, "3.") {
		t.Errorf("openapi %q", d.OpenAPI)
	}

	// The routes the mux registers and the operations documented are the
	// same set.
	var registered, documented []string
	for _, r := range api.Routes() {
		registered = append(registered, r[0]+" "+r[1])
	}
	for path, ops := range d.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	sort.Strings(registered)
	sort.Strings(documented)
	if !slices.Equal(registered, documented) {
		t.Errorf("routes and document differ:\nregistered %q\ndocumented %q", registered, documented)
	}

	// Every $ref resolves.
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if ref, ok := c.(string); ok && k == "$ref" {
					if resolve(raw, ref) == nil {
						t.Errorf("$ref %s resolves to nothing", ref)
					}
				}
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(raw)

	// Every path parameter is declared; every error answer is a problem.
	param := regexp.MustCompile(`\{([^}]+)\}`)
	for path, ops := range raw["paths"].(map[string]any) {
		for method, op := range ops.(map[string]any) {
			op := op.(map[string]any)
			declared := map[string]bool{}
			params, _ := op["parameters"].([]any)
			for _, p := range params {
				p := p.(map[string]any)
				if ref, ok := p["$ref"].(string); ok {
					p = resolve(raw, ref).(map[string]any)
				}
				if p["in"] == "path" {
					declared[p["name"].(string)] = true
				}
			}
			for _, m := range param.FindAllStringSubmatch(path, -1) {
				if !declared[m[1]] {
					t.Errorf("%s %s: path parameter %s is not declared", method, path, m[1])
				}
			}
			for code, r := range op["responses"].(map[string]any) {
				r := r.(map[string]any)
				if ref, ok := r["$ref"].(string); ok {
					r = resolve(raw, ref).(map[string]any)
				}
				content, _ := r["content"].(map[string]any)
				if code >= "400" && content[api.ContentTypeProblem] == nil {
					t.Errorf("%s %s: response %s is not application/problem+json", method, path, code)
				}
			}
		}
	}

	// The mux agrees: each documented operation reaches a handler, and any
	// other method on a documented path is refused with 405 and an Allow
	// header listing exactly the documented methods.
	for path, ops := range d.Paths {
		concrete := param.ReplaceAllString(path, uuid.NewString())
		var allowed []string
		for method := range ops {
			allowed = append(allowed, strings.ToUpper(method))
		}
		for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			res := e.do(method, concrete, "")
			var p api.Problem
			if strings.HasPrefix(res.header.Get("Content-Type"), api.ContentTypeProblem) {
				res.decode(t, &p)
			}
			if slices.Contains(allowed, method) {
				if p.Type == api.TypeUnknownRoute || p.Type == api.TypeMethodNotAllowed {
					t.Errorf("documented %s %s does not reach a handler: %s", method, path, res.body)
				}
				continue
			}
			if res.status != http.StatusMethodNotAllowed || p.Type != api.TypeMethodNotAllowed {
				t.Errorf("undocumented %s %s answered %d: %s", method, path, res.status, res.body)
				continue
			}
			got := strings.Split(strings.ReplaceAll(res.header.Get("Allow"), " ", ""), ",")
			want := slices.Clone(allowed)
			if slices.Contains(want, http.MethodGet) {
				want = append(want, http.MethodHead)
			}
			sort.Strings(got)
			sort.Strings(want)
			if !slices.Equal(got, want) {
				t.Errorf("%s %s: Allow %v, documented %v", method, path, got, want)
			}
		}
	}
}

// resolve follows a local JSON pointer such as #/components/schemas/Item.
func resolve(doc map[string]any, ref string) any {
	if !strings.HasPrefix(ref, "#/") {
		return nil
	}
	var cur any = doc
	for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[strings.ReplaceAll(strings.ReplaceAll(part, "~1", "/"), "~0", "~")]
	}
	return cur
}

func TestUnknownRouteAndWrongMethod(t *testing.T) {
	t.Parallel()
	e := setup(t)
	for _, path := range []string{"/", "/order", "/orders/" + uuid.NewString() + "/items", "/sagas/a/b/c"} {
		p := e.do(http.MethodGet, path, "").problem(t, http.StatusNotFound)
		if p.Type != api.TypeUnknownRoute || p.Instance != path {
			t.Errorf("GET %s: %+v", path, p)
		}
	}
	res := e.do(http.MethodGet, "/orders", "")
	p := res.problem(t, http.StatusMethodNotAllowed)
	if p.Type != api.TypeMethodNotAllowed || res.header.Get("Allow") != http.MethodPost || !strings.Contains(p.Detail, "POST") {
		t.Errorf("GET /orders: Allow %q, %+v", res.header.Get("Allow"), p)
	}
	var body json.RawMessage
	res.decode(t, &body) // one JSON value, no trailing plain text from the mux
}

// The amounts openapi.json gives as examples match its pattern of a value,
// place, and are answered as written: the document and the API agree on
// the currency's scale (JPY has no fractional digits, KWD three).
func TestOpenAPIAmountExamples(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var raw map[string]any
	e.do(http.MethodGet, "/openapi.json", "").decode(t, &raw)
	schema, _ := resolve(raw, "#/components/schemas/Amount").(map[string]any)
	examples, _ := schema["examples"].([]any)
	currencies := map[string]bool{}
	for _, ex := range examples {
		ex, _ := ex.(map[string]any)
		if c, ok := ex["currency"].(string); ok {
			currencies[c] = true
		}
	}
	for _, c := range []string{"EUR", "JPY", "KWD"} {
		if !currencies[c] {
			t.Errorf("Amount examples %v lack one in %s", examples, c)
		}
	}
	var pattern *regexp.Regexp
	money, _ := resolve(raw, "#/components/schemas/Money").(map[string]any)
	alts, _ := money["oneOf"].([]any)
	for _, alt := range alts {
		if p, ok := alt.(map[string]any)["pattern"].(string); ok {
			pattern = regexp.MustCompile(p)
		}
	}
	if pattern == nil {
		t.Fatal("Money has no pattern")
	}
	for i, ex := range examples {
		ex := ex.(map[string]any)
		value, currency := ex["value"].(string), ex["currency"].(string)
		t.Run(currency+" "+value, func(t *testing.T) {
			if !pattern.MatchString(value) {
				t.Errorf("%q does not match the documented pattern %s", value, pattern)
			}
			placed := e.mustPlace(fmt.Sprintf("example-%d", i), orderJSON(t, set("amount", ex)))
			var o struct {
				Amount map[string]any `json:"amount"`
			}
			e.do(http.MethodGet, placed.StatusURL, "").decode(t, &o)
			if o.Amount["value"] != value || o.Amount["currency"] != currency {
				t.Errorf("GET answered amount %v, placed %v", o.Amount, ex)
			}
		})
	}
}

// The document's security matches the route table: operator routes need
// the bearer token, reader routes may (with --protect-reads), public routes
// none; and every route that may need one documents 401 and 403.
func TestOpenAPISecurityMatchesRoutes(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if resolve(raw, "#/components/securitySchemes/bearerAuth") == nil {
		t.Fatal("no bearerAuth security scheme")
	}
	want := map[string]string{"public": `null`, "reader": `[{},{"bearerAuth":[]}]`, "operator": `[{"bearerAuth":[]}]`}
	for route, access := range api.RouteAccess() {
		method, path, _ := strings.Cut(route, " ")
		op, _ := resolve(raw, "#/paths/"+strings.ReplaceAll(path, "/", "~1")+"/"+strings.ToLower(method)).(map[string]any)
		if op == nil {
			t.Errorf("%s is not documented", route)
			continue
		}
		got, _ := json.Marshal(op["security"])
		if string(got) != want[access] {
			t.Errorf("%s (%s): security %s, want %s", route, access, got, want[access])
		}
		responses, _ := op["responses"].(map[string]any)
		for _, code := range []string{"401", "403"} {
			if _, ok := responses[code]; ok != (access != "public") {
				t.Errorf("%s (%s): response %s documented: %v", route, access, code, ok)
			}
		}
	}
}
