package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// validOrder is an order that places.
func validOrder() map[string]any {
	return map[string]any{
		"customer_id": "cust-42",
		"items": []any{
			map[string]any{"sku": "SKU-1", "quantity": 2},
			map[string]any{"sku": "SKU-2", "quantity": 1},
		},
		"amount": map[string]any{"value": "19.99", "currency": "EUR"},
		"shipping_address": map[string]any{
			"name": "Ada Lovelace", "line1": "Main Street 1", "city": "Berlin", "postal_code": "10115", "country": "DE",
		},
	}
}

// edit changes an order: set (or delete, with del) the value at a dotted
// path such as "items.1.quantity".
type edit struct {
	path  string
	value any
	del   bool
}

func set(path string, v any) edit { return edit{path: path, value: v} }
func del(path string) edit        { return edit{path: path, del: true} }

// orderJSON is validOrder with edits, encoded.
func orderJSON(t testing.TB, edits ...edit) string {
	t.Helper()
	o := validOrder()
	for _, e := range edits {
		parts := strings.Split(e.path, ".")
		var cur any = o
		for _, p := range parts[:len(parts)-1] {
			switch c := cur.(type) {
			case map[string]any:
				cur = c[p]
			case []any:
				i, _ := strconv.Atoi(p)
				cur = c[i]
			}
		}
		last := parts[len(parts)-1]
		switch c := cur.(type) {
		case map[string]any:
			if e.del {
				delete(c, last)
			} else {
				c[last] = e.value
			}
		case []any:
			i, _ := strconv.Atoi(last)
			c[i] = e.value
		default:
			t.Fatalf("edit %s: no such path", e.path)
		}
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestPlaceOrderRejectsBadRequests(t *testing.T) {
	t.Parallel()
	e := setup(t, func(_ *env, cfg *api.Config) { cfg.MaxBodyBytes = 4 << 10 })
	valid := orderJSON(t)
	jsonCT := []string{"Content-Type", "application/json"}
	key := []string{api.HeaderIdempotencyKey, "key-1"}
	headers := func(hs ...[]string) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h...)
		}
		return out
	}
	cases := []struct {
		name   string
		body   string
		header []string // default: JSON and a key
		status int
		field  string // the first field at fault ("" for none)
		fields []string
		detail string // a part of the detail
	}{
		// Validate: 422, every field listed.
		{name: "missing customer_id", body: orderJSON(t, del("customer_id")), status: 422, field: "customer_id"},
		{name: "blank customer_id", body: orderJSON(t, set("customer_id", "   ")), status: 422, field: "customer_id"},
		{name: "null customer_id", body: orderJSON(t, set("customer_id", nil)), status: 422, field: "customer_id"},
		{name: "long customer_id", body: orderJSON(t, set("customer_id", strings.Repeat("c", 201))), status: 422, field: "customer_id"},
		{name: "no items", body: orderJSON(t, set("items", []any{})), status: 422, field: "items"},
		{name: "missing items", body: orderJSON(t, del("items")), status: 422, field: "items"},
		{name: "zero quantity", body: orderJSON(t, set("items.0.quantity", 0)), status: 422, field: "items[0].quantity"},
		{name: "negative quantity", body: orderJSON(t, set("items.1.quantity", -3)), status: 422, field: "items[1].quantity"},
		{name: "quantity too large", body: orderJSON(t, set("items.1.quantity", 10001)), status: 422, field: "items[1].quantity"},
		{name: "missing quantity", body: orderJSON(t, del("items.0.quantity")), status: 422, field: "items[0].quantity"},
		{name: "bad sku", body: orderJSON(t, set("items.1.sku", "bad sku!")), status: 422, field: "items[1].sku"},
		{name: "empty sku", body: orderJSON(t, set("items.0.sku", "")), status: 422, field: "items[0].sku"},
		{name: "duplicate sku", body: orderJSON(t, set("items.1.sku", "SKU-1")), status: 422, field: "items[1].sku"},
		{name: "null item", body: orderJSON(t, set("items.0", nil)), status: 422, field: "items[0].sku", fields: []string{"items[0].sku", "items[0].quantity"}},
		{name: "zero amount", body: orderJSON(t, set("amount.value", "0.00")), status: 422, field: "amount.value"},
		{name: "zero amount number", body: orderJSON(t, set("amount.value", 0)), status: 422, field: "amount.value"},
		{name: "missing amount", body: orderJSON(t, del("amount")), status: 422, field: "amount.value", fields: []string{"amount.value", "amount.currency"},
			detail: "amount.value is required"},
		{name: "missing amount value", body: orderJSON(t, del("amount.value")), status: 422, field: "amount.value", detail: "amount.value is required"},
		{name: "null amount value", body: orderJSON(t, set("amount.value", nil)), status: 422, field: "amount.value", detail: "amount.value is required"},
		{name: "lower-case currency", body: orderJSON(t, set("amount.currency", "eur")), status: 422, field: "amount.currency"},
		{name: "long currency", body: orderJSON(t, set("amount.currency", "EURO")), status: 422, field: "amount.currency"},
		{name: "missing currency", body: orderJSON(t, del("amount.currency")), status: 422, field: "amount.currency", detail: "amount.currency is required"},
		// The currency's scale decides how many fractional digits the value
		// may have (before: two for every currency).
		{name: "three decimals", body: orderJSON(t, set("amount.value", "19.999")), status: 422, field: "amount.value", detail: "EUR has 2"},
		{name: "three decimals number", body: strings.Replace(valid, `"value":"19.99"`, `"value":19.999`, 1), status: 422, field: "amount.value", detail: "EUR has 2"},
		{name: "fractional yen", body: orderJSON(t, set("amount.value", "10.5"), set("amount.currency", "JPY")), status: 422, field: "amount.value",
			detail: "JPY has no fractional digits"},
		{name: "fractional yen number", body: orderJSON(t, set("amount.value", 10.5), set("amount.currency", "JPY")), status: 422, field: "amount.value",
			detail: "JPY has no fractional digits"},
		{name: "yen with a zero fraction", body: orderJSON(t, set("amount.value", "1000.0"), set("amount.currency", "JPY")), status: 422, field: "amount.value",
			detail: "JPY has no fractional digits"},
		{name: "four decimals dinar", body: orderJSON(t, set("amount.value", "1.2345"), set("amount.currency", "KWD")), status: 422, field: "amount.value",
			detail: "KWD has 3"},
		{name: "value before the currency", body: strings.Replace(orderJSON(t, set("amount.value", "10.5"), set("amount.currency", "JPY")),
			`"currency":"JPY","value":"10.5"`, `"value":"10.5","currency":"JPY"`, 1), status: 422, field: "amount.value", detail: "JPY has no fractional digits"},
		{name: "unknown currency XYZ", body: orderJSON(t, set("amount.currency", "XYZ")), status: 422, field: "amount.currency", detail: "ISO 4217"},
		{name: "unknown currency ABC", body: orderJSON(t, set("amount.currency", "ABC")), status: 422, field: "amount.currency", detail: "ISO 4217"},
		{name: "no currency XXX", body: orderJSON(t, set("amount.currency", "XXX")), status: 422, field: "amount.currency", detail: "legal tender"},
		{name: "withdrawn currency DEM", body: orderJSON(t, set("amount.currency", "DEM")), status: 422, field: "amount.currency", detail: "legal tender"},
		{name: "unknown currency with a fractional value", body: orderJSON(t, set("amount.value", "10.555"), set("amount.currency", "XYZ")), status: 422,
			field: "amount.currency", fields: []string{"amount.currency"}},
		// Too large: the same limit in every currency, in its major unit.
		{name: "amount over the limit", body: orderJSON(t, set("amount.value", "1000000000.01")), status: 422, field: "amount.value", detail: "too large"},
		{name: "yen over the limit", body: orderJSON(t, set("amount.value", "1000000001"), set("amount.currency", "JPY")), status: 422, field: "amount.value",
			detail: "too large"},
		{name: "too many whole digits", body: orderJSON(t, set("amount.value", "12345678901")), status: 422, field: "amount.value", detail: "too large"},
		{name: "far too many whole digits", body: orderJSON(t, set("amount.value", strings.Repeat("9", 40)+".99")), status: 422, field: "amount.value",
			detail: "too large"},
		{name: "far too many whole digits number", body: strings.Replace(valid, `"value":"19.99"`, `"value":`+strings.Repeat("9", 40), 1), status: 422,
			field: "amount.value", detail: "too large"},
		{name: "missing address name", body: orderJSON(t, del("shipping_address.name")), status: 422, field: "shipping_address.name"},
		{name: "missing address line1", body: orderJSON(t, del("shipping_address.line1")), status: 422, field: "shipping_address.line1"},
		{name: "blank address city", body: orderJSON(t, set("shipping_address.city", " ")), status: 422, field: "shipping_address.city"},
		{name: "missing postal code", body: orderJSON(t, del("shipping_address.postal_code")), status: 422, field: "shipping_address.postal_code"},
		{name: "long line2", body: orderJSON(t, set("shipping_address.line2", strings.Repeat("x", 201))), status: 422, field: "shipping_address.line2"},
		{name: "country name", body: orderJSON(t, set("shipping_address.country", "Germany")), status: 422, field: "shipping_address.country"},
		{name: "lower-case country", body: orderJSON(t, set("shipping_address.country", "de")), status: 422, field: "shipping_address.country"},
		{name: "missing address", body: orderJSON(t, del("shipping_address")), status: 422, field: "shipping_address.name",
			fields: []string{"shipping_address.name", "shipping_address.line1", "shipping_address.city", "shipping_address.postal_code", "shipping_address.country"}},
		{name: "unknown inject participant", body: orderJSON(t, set("inject", map[string]any{"billing": "refuse"})), status: 422, field: "inject.billing"},
		{name: "blank inject mode", body: orderJSON(t, set("inject", map[string]any{"payment": ""})), status: 422, field: "inject.payment"},
		// Control characters (PostgreSQL refuses NUL in text; before, 500).
		{name: "NUL in customer_id", body: orderJSON(t, set("customer_id", "c\x00d")), status: 422, field: "customer_id", detail: "control character"},
		{name: "NUL in city", body: orderJSON(t, set("shipping_address.city", "Ber\x00lin")), status: 422, field: "shipping_address.city"},
		{name: "bell in name", body: orderJSON(t, set("shipping_address.name", "Ada\aL")), status: 422, field: "shipping_address.name"},
		{name: "NUL in line2", body: orderJSON(t, set("shipping_address.line2", "\x00")), status: 422, field: "shipping_address.line2"},
		{name: "NUL in currency", body: orderJSON(t, set("amount.currency", "EU\x00")), status: 422, field: "amount.currency"},
		// Fault injection is off on this server: refused, not ignored.
		{name: "inject on a server without fault injection", body: orderJSON(t, set("inject", map[string]any{"payment": "refuse"})), status: 422, field: "inject", detail: "allow-fault-injection"},
		{name: "empty object", body: `{}`, status: 422, field: "customer_id",
			fields: []string{"customer_id", "items", "amount.value", "amount.currency", "shipping_address.name", "shipping_address.country"}},

		// Wrong JSON types: 400, the field named with its index.
		{name: "string quantity", body: orderJSON(t, set("items.0.quantity", "2")), status: 400, field: "items[0].quantity", detail: "must be an integer"},
		{name: "fractional quantity", body: orderJSON(t, set("items.1.quantity", 1.5)), status: 400, field: "items[1].quantity", detail: "must be an integer"},
		{name: "huge quantity", body: strings.Replace(valid, `"quantity":1`, `"quantity":1e30`, 1), status: 400, field: "items[1].quantity"},
		{name: "numeric customer_id", body: orderJSON(t, set("customer_id", 42)), status: 400, field: "customer_id", detail: "must be a string"},
		{name: "items not an array", body: orderJSON(t, set("items", "SKU-1")), status: 400, field: "items", detail: "must be an array"},
		{name: "item not an object", body: orderJSON(t, set("items.1", "SKU-2")), status: 400, field: "items[1]", detail: "must be an object"},
		{name: "negative amount", body: orderJSON(t, set("amount.value", "-5.00")), status: 400, field: "amount.value", detail: "decimal"},
		{name: "negative amount number", body: orderJSON(t, set("amount.value", -5)), status: 400, field: "amount.value"},
		{name: "exponent amount", body: strings.Replace(valid, `"value":"19.99"`, `"value":1999e-2`, 1), status: 400, field: "amount.value", detail: "decimal"},
		{name: "garbage amount", body: orderJSON(t, set("amount.value", "lots")), status: 400, field: "amount.value"},
		{name: "boolean amount", body: orderJSON(t, set("amount.value", true)), status: 400, field: "amount.value"},
		{name: "amount not an object", body: orderJSON(t, set("amount", "19.99 EUR")), status: 400, field: "amount", detail: "must be an object"},
		{name: "inject mode not a string", body: orderJSON(t, set("inject", map[string]any{"inventory": "refuse", "payment": 1})), status: 400, field: "inject.payment"},

		// Unknown fields: 400, the path named.
		{name: "unknown top-level field", body: orderJSON(t, set("coupon", "FREE")), status: 400, field: "coupon", detail: "not a known field"},
		{name: "unknown address field", body: orderJSON(t, set("shipping_address.zip", "10115")), status: 400, field: "shipping_address.zip"},
		{name: "unknown item field", body: orderJSON(t, set("items.1", map[string]any{"sku": "SKU-2", "quantity": 1, "colour": "red"})), status: 400, field: "items[1].colour"},
		{name: "unknown amount field", body: orderJSON(t, set("amount.cents", 1999)), status: 400, field: "amount.cents"},

		// Unreadable bodies: 400.
		{name: "malformed JSON", body: `{"customer_id": "c" "items": []}`, status: 400, detail: "offset 20"},
		{name: "truncated JSON", body: valid[:len(valid)-10], status: 400, detail: "offset"},
		{name: "trailing garbage", body: valid + " garbage", status: 400, detail: "data after the JSON object"},
		{name: "two objects", body: valid + valid, status: 400, detail: "data after the JSON object"},
		{name: "array body", body: `[` + valid + `]`, status: 400, detail: "must be a JSON object"},
		{name: "empty body", body: "", status: 400, detail: "empty"},
		{name: "body over the limit", body: orderJSON(t, set("customer_id", strings.Repeat("c", 5000))), status: 413},
		{name: "body over the limit without length", body: "chunked", status: 413},

		// Headers.
		{name: "text content type", body: valid, header: headers(key, []string{"Content-Type", "text/plain"}), status: 415, field: "Content-Type"},
		{name: "no content type", body: valid, header: key, status: 415, field: "Content-Type"},
		{name: "latin-1 JSON", body: valid, header: headers(key, []string{"Content-Type", "application/json; charset=iso-8859-1"}), status: 415, field: "Content-Type"},
		{name: "missing idempotency key", body: valid, header: jsonCT, status: 400, field: api.HeaderIdempotencyKey},
		{name: "idempotency key with a space", body: valid, header: headers(jsonCT, []string{api.HeaderIdempotencyKey, "key 1"}), status: 400, field: api.HeaderIdempotencyKey},
		{name: "long idempotency key", body: valid, header: headers(jsonCT, []string{api.HeaderIdempotencyKey, strings.Repeat("k", 201)}), status: 400, field: api.HeaderIdempotencyKey},
		{name: "two idempotency keys", body: valid, header: headers(jsonCT, key, key), status: 400, field: api.HeaderIdempotencyKey},
	}
	wantType := map[int]string{400: api.TypeInvalidRequest, 413: api.TypeBodyTooLarge, 415: api.TypeUnsupportedMediaType, 422: api.TypeValidation}
	t.Run("cases", func(t *testing.T) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				h := tc.header
				if h == nil {
					h = headers(jsonCT, key)
				}
				var res *response
				if tc.body == "chunked" {
					res = e.doChunked(http.MethodPost, "/orders", strings.Repeat(" ", 5000)+valid, h...)
				} else {
					res = e.do(http.MethodPost, "/orders", tc.body, h...)
				}
				p := res.problem(t, tc.status)
				if p.Type != wantType[tc.status] {
					t.Errorf("type %q, want %q", p.Type, wantType[tc.status])
				}
				if p.Field != tc.field {
					t.Errorf("field %q, want %q: %s", p.Field, tc.field, res.body)
				}
				if tc.field != "" && (len(p.Errors) == 0 || p.Errors[0].Field != tc.field || p.Errors[0].Reason == "") {
					t.Errorf("errors %+v, want %s first, with a reason", p.Errors, tc.field)
				}
				for _, f := range tc.fields {
					if !hasField(p.Errors, f) {
						t.Errorf("errors %+v lack %s", p.Errors, f)
					}
				}
				if !strings.Contains(p.Detail, tc.detail) {
					t.Errorf("detail %q lacks %q", p.Detail, tc.detail)
				}
				if c := e.counts(); c != (counts{}) {
					t.Errorf("rows written: %+v", c)
				}
			})
		}
	})
	if c := e.counts(); c != (counts{}) {
		t.Errorf("rows written: %+v", c)
	}
}

func hasField(errs []order.FieldError, field string) bool {
	for _, e := range errs {
		if e.Field == field {
			return true
		}
	}
	return false
}

// doChunked sends a body without Content-Length (a reader whose length
// net/http cannot know).
func (e *env) doChunked(method, path, body string, header ...string) *response {
	e.t.Helper()
	return e.send(method, path, io.MultiReader(strings.NewReader(body)), header...)
}

func TestPlaceOrderAcceptsVariants(t *testing.T) {
	t.Parallel()
	e := setup(t, withInjection)
	cases := []struct {
		name, contentType, body string
	}{
		{"charset", "application/json; charset=utf-8", orderJSON(t)},
		{"problem-style media type", "application/vnd.sagaflow.order+json", orderJSON(t)},
		{"amount as a number", "application/json", strings.Replace(orderJSON(t), `"value":"19.99"`, `"value":19.99`, 1)},
		{"amount with one decimal", "application/json", orderJSON(t, set("amount.value", "19.9"))},
		{"whole amount", "application/json", orderJSON(t, set("amount.value", 20))},
		{"yen", "application/json", orderJSON(t, set("amount.value", "1000"), set("amount.currency", "JPY"))},
		{"dinar with three decimals", "application/json", orderJSON(t, set("amount.value", "1.234"), set("amount.currency", "KWD"))},
		{"value before the currency", "application/json", strings.Replace(orderJSON(t, set("amount.value", "1.234"), set("amount.currency", "KWD")),
			`"currency":"KWD","value":"1.234"`, `"value":"1.234","currency":"KWD"`, 1)},
		{"known inject", "application/json", orderJSON(t, set("inject", map[string]any{"payment": "refuse", "shipping.compensation": "error"}))},
		{"line2 and trailing whitespace", "application/json", orderJSON(t, set("shipping_address.line2", "Flat 3")) + "\n\t "},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := e.do(http.MethodPost, "/orders", tc.body, "Content-Type", tc.contentType, api.HeaderIdempotencyKey, fmt.Sprintf("variant-%d", i))
			if res.status != http.StatusAccepted {
				t.Fatalf("status %d: %s", res.status, res.body)
			}
		})
	}
	if c := e.counts(); c.orders != len(cases) {
		t.Errorf("%d orders, want %d", c.orders, len(cases))
	}
}

// withInjection switches fault injection on, as serve --allow-fault-injection.
func withInjection(_ *env, cfg *api.Config) { cfg.Injection = steps.CheckInjection }

// On a server with fault injection on, a mode must be one participants
// know: a typo is refused with 422, not silently ignored (before: 202, and
// the order ran without the fault the client asked for).
func TestPlaceOrderInjectionModes(t *testing.T) {
	t.Parallel()
	e := setup(t, withInjection)
	for i, tc := range []struct{ mode, field string }{
		{"refuze", "inject.payment"},
		{"delay=soon", "inject.payment"},
		{"crash", "inject.payment"},
		{"refuse\x00", "inject.payment"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			res := e.do(http.MethodPost, "/orders", orderJSON(t, set("inject", map[string]any{"payment": tc.mode})),
				"Content-Type", "application/json", api.HeaderIdempotencyKey, fmt.Sprintf("mode-%d", i))
			p := res.problem(t, 422)
			if p.Field != tc.field {
				t.Fatalf("field %q, want %q: %s", p.Field, tc.field, res.body)
			}
		})
	}
	if c := e.counts(); c != (counts{}) {
		t.Errorf("rows written: %+v", c)
	}
}

func TestPlaceOrder(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.place("order-1", orderJSON(t))
	if res.status != http.StatusAccepted {
		t.Fatalf("status %d: %s", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if res.header.Get(api.HeaderIdempotentReplayed) != "" {
		t.Error("a first placement is marked replayed")
	}
	var p api.PlaceResponse
	res.decode(t, &p)
	if p.OrderID == uuid.Nil || p.SagaID == uuid.Nil || p.Status != order.Pending {
		t.Fatalf("answer %+v", p)
	}
	if want := "/orders/" + p.OrderID.String(); p.StatusURL != want || res.header.Get("Location") != want {
		t.Errorf("status_url %q, Location %q, want %q", p.StatusURL, res.header.Get("Location"), want)
	}
	if want := "/sagas/" + p.SagaID.String(); p.SagaURL != want {
		t.Errorf("saga_url %q, want %q", p.SagaURL, want)
	}

	if c := e.counts(); c != (counts{1, 1, 1, 1}) {
		t.Errorf("rows %+v, want one of each", c)
	}
	ctx := context.Background()
	var status, sagaID, customer string
	var cents int64
	if err := e.pool.QueryRow(ctx, `SELECT status, saga_id::text, customer_id, amount_cents FROM orders.orders WHERE id = $1`, p.OrderID).
		Scan(&status, &sagaID, &customer, &cents); err != nil {
		t.Fatal(err)
	}
	if status != "pending" || sagaID != p.SagaID.String() || customer != "cust-42" || cents != 1999 {
		t.Errorf("order row: %s %s %s %d", status, sagaID, customer, cents)
	}
	var state, typ string
	if err := e.pool.QueryRow(ctx, `SELECT state, type FROM saga.instances WHERE id = $1`, p.SagaID).Scan(&state, &typ); err != nil {
		t.Fatal(err)
	}
	if state != "running" || typ != order.SagaType {
		t.Errorf("saga row: %s %s", state, typ)
	}
	var cmdType, cmdTopic, cmdKey string
	if err := e.pool.QueryRow(ctx, `SELECT headers->>'type', topic, key FROM saga.outbox`).Scan(&cmdType, &cmdTopic, &cmdKey); err != nil {
		t.Fatal(err)
	}
	if cmdType != order.TypeReserve || cmdTopic != e.topics.InventoryCommands || cmdKey != p.SagaID.String() {
		t.Errorf("command %s on %s keyed %s", cmdType, cmdTopic, cmdKey)
	}
	var evType, evTopic string
	if err := e.pool.QueryRow(ctx, `SELECT headers->>'type', topic FROM orders.outbox`).Scan(&evType, &evTopic); err != nil {
		t.Fatal(err)
	}
	if evType != order.EventPlaced || evTopic != e.topics.OrderEvents {
		t.Errorf("event %s on %s", evType, evTopic)
	}
}

func TestPlaceOrderConcurrentReplays(t *testing.T) {
	t.Parallel()
	e := setup(t)
	body := orderJSON(t)
	const n = 10
	start := make(chan struct{})
	answers := make([]*response, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			answers[i] = e.place("same-key", body)
		})
	}
	close(start)
	wg.Wait()
	var first api.PlaceResponse
	replayed := 0
	for i, res := range answers {
		if res.status != http.StatusAccepted {
			t.Fatalf("answer %d: status %d: %s", i, res.status, res.body)
		}
		var p api.PlaceResponse
		res.decode(t, &p)
		if i == 0 {
			first = p
		} else if p.OrderID != first.OrderID || p.SagaID != first.SagaID {
			t.Errorf("answer %d is order %s saga %s, answer 0 order %s saga %s", i, p.OrderID, p.SagaID, first.OrderID, first.SagaID)
		}
		if res.header.Get(api.HeaderIdempotentReplayed) == "true" {
			replayed++
		}
	}
	if replayed != n-1 {
		t.Errorf("%d answers marked replayed, want %d", replayed, n-1)
	}
	if c := e.counts(); c != (counts{1, 1, 1, 1}) {
		t.Errorf("rows %+v, want one order, saga, command and event", c)
	}
}

func TestPlaceOrderReplayAndConflict(t *testing.T) {
	t.Parallel()
	e := setup(t)
	first := e.mustPlace("key-a", orderJSON(t))

	// The same order, written differently, is a replay.
	reordered := `{"shipping_address": {"country": "DE", "postal_code": "10115", "city": "Berlin", "line1": "Main Street 1", "name": "Ada Lovelace"},
		"amount": {"currency": "EUR", "value": 19.99}, "items": [{"quantity": 2, "sku": "SKU-1"}, {"sku": "SKU-2", "quantity": 1}],
		"customer_id": "cust-42"}`
	res := e.place("key-a", reordered)
	if res.status != http.StatusAccepted || res.header.Get(api.HeaderIdempotentReplayed) != "true" {
		t.Fatalf("replay: status %d, replayed %q: %s", res.status, res.header.Get(api.HeaderIdempotentReplayed), res.body)
	}
	var again api.PlaceResponse
	res.decode(t, &again)
	if again != first {
		t.Errorf("replay answered %+v, first %+v", again, first)
	}

	// Another order under the key is a conflict.
	p := e.place("key-a", orderJSON(t, set("items.0.quantity", 3))).problem(t, http.StatusConflict)
	if p.Type != api.TypeIdempotencyConflict || p.Field != api.HeaderIdempotencyKey {
		t.Errorf("conflict problem %+v", p)
	}
	// A new key places a new order.
	other := e.mustPlace("key-b", orderJSON(t, set("items.0.quantity", 3)))
	if other.OrderID == first.OrderID {
		t.Error("a new key answered the first order")
	}
	if c := e.counts(); c != (counts{2, 2, 2, 2}) {
		t.Errorf("rows %+v, want two of each", c)
	}
}

// freePort returns a local port nothing listens on.
func freePort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return uint16(port)
}

func TestDatabaseDown(t *testing.T) {
	t.Parallel()
	e := setup(t, operators(t), func(e *env, cfg *api.Config) {
		pc, err := pgxpool.ParseConfig(e.pool.Config().ConnString())
		if err != nil {
			t.Fatal(err)
		}
		pc.ConnConfig.Host, pc.ConnConfig.Port = "127.0.0.1", freePort(t)
		pc.ConnConfig.ConnectTimeout = 2 * time.Second
		pc.ConnConfig.Fallbacks = nil
		down, err := pgxpool.NewWithConfig(context.Background(), pc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(down.Close)
		engine, err := saga.NewEngine(down, cfg.Logger)
		if err != nil {
			t.Fatal(err)
		}
		svc := order.NewService(down, engine, e.topics.OrderEvents)
		if err := engine.Define(svc.NewDefinition(order.SagaConfig{Topics: e.topics})); err != nil {
			t.Fatal(err)
		}
		cfg.Pool, cfg.Orders, cfg.Engine = down, svc, engine
	})
	id := uuid.NewString()
	for _, req := range []struct{ method, path, body string }{
		{http.MethodPost, "/orders", orderJSON(t)},
		{http.MethodGet, "/orders/" + id, ""},
		{http.MethodGet, "/sagas/" + id, ""},
		{http.MethodGet, "/sagas", ""},
		{http.MethodPost, "/sagas/" + id + "/retry", ""},
		{http.MethodPost, "/sagas/" + id + "/resolve", `{"note": "refunded by hand"}`},
		{http.MethodGet, "/readyz", ""},
	} {
		t.Run(req.method+" "+req.path, func(t *testing.T) {
			res := e.do(req.method, req.path, req.body, "Content-Type", "application/json", api.HeaderIdempotencyKey, "k",
				"Authorization", "Bearer "+aliceToken)
			p := res.problem(t, http.StatusServiceUnavailable)
			if p.Type != api.TypeUnavailable || res.header.Get("Retry-After") == "" {
				t.Errorf("problem %+v, Retry-After %q", p, res.header.Get("Retry-After"))
			}
		})
	}
	if c := e.counts(); c != (counts{}) {
		t.Errorf("rows written: %+v", c)
	}
	if res := e.do(http.MethodGet, "/healthz", ""); res.status != http.StatusOK {
		t.Errorf("healthz with the database down: %d", res.status)
	}
}

func TestPlaceOrderNeverHalfWritten(t *testing.T) {
	t.Parallel()
	// An engine that does not know the order saga fails Place after the
	// order row is inserted: the transaction must leave nothing behind.
	e := setup(t, func(e *env, cfg *api.Config) {
		engine, err := saga.NewEngine(e.pool, cfg.Logger)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Orders = order.NewService(e.pool, engine, e.topics.OrderEvents)
	})
	e.place("k", orderJSON(t)).problem(t, http.StatusInternalServerError)
	if c := e.counts(); c != (counts{}) {
		t.Errorf("rows written: %+v", c)
	}
	if !strings.Contains(e.logs.String(), "unknown saga type") {
		t.Errorf("the cause is not logged:\n%s", e.logs)
	}
}

func TestGetOrder(t *testing.T) {
	t.Parallel()
	e := setup(t)
	placed := e.mustPlace("k", orderJSON(t))
	res := e.do(http.MethodGet, placed.StatusURL, "")
	if res.status != http.StatusOK {
		t.Fatalf("status %d: %s", res.status, res.body)
	}
	var o struct {
		OrderID  uuid.UUID    `json:"order_id"`
		SagaID   uuid.UUID    `json:"saga_id"`
		Status   order.Status `json:"status"`
		Reason   string       `json:"reason"`
		Customer string       `json:"customer_id"`
		Items    []order.Item `json:"items"`
		Amount   struct {
			Value    string `json:"value"`
			Currency string `json:"currency"`
		} `json:"amount"`
		SagaURL string `json:"saga_url"`
	}
	res.decode(t, &o)
	if o.OrderID != placed.OrderID || o.SagaID != placed.SagaID || o.Status != order.Pending || o.Customer != "cust-42" ||
		len(o.Items) != 2 || o.Amount.Value != "19.99" || o.Amount.Currency != "EUR" || o.SagaURL != placed.SagaURL {
		t.Errorf("order %+v", o)
	}

	// A cancelled order says why.
	e.exec(`UPDATE orders.orders SET status = 'cancelled', reason = 'payment refused: card declined' WHERE id = $1`, placed.OrderID)
	e.do(http.MethodGet, placed.StatusURL, "").decode(t, &o)
	if o.Status != order.Cancelled || o.Reason != "payment refused: card declined" {
		t.Errorf("cancelled order %+v", o)
	}

	p := e.do(http.MethodGet, "/orders/"+uuid.NewString(), "").problem(t, http.StatusNotFound)
	if p.Type != api.TypeNotFound {
		t.Errorf("unknown order: %+v", p)
	}
	p = e.do(http.MethodGet, "/orders/not-a-uuid", "").problem(t, http.StatusBadRequest)
	if p.Field != "id" {
		t.Errorf("bad id: %+v", p)
	}
}

// An amount is stored in its currency's minor units, whose scale depends
// on the currency (before: cents, two decimals, for every currency), and
// answered with that scale.
func TestPlaceOrderAmountScale(t *testing.T) {
	t.Parallel()
	e := setup(t)
	cases := []struct {
		name  string
		body  string
		minor int64  // amount_cents: the amount in minor units
		value string // amount.value of GET /orders/{id}
	}{
		{"euros", orderJSON(t), 1999, "19.99"},
		{"euros with one decimal", orderJSON(t, set("amount.value", "19.9")), 1990, "19.90"},
		{"whole euros as a number", orderJSON(t, set("amount.value", 20)), 2000, "20.00"},
		{"euro cent", orderJSON(t, set("amount.value", "0.01")), 1, "0.01"},
		{"yen", orderJSON(t, set("amount.value", "1000"), set("amount.currency", "JPY")), 1000, "1000"},
		{"yen as a number", orderJSON(t, set("amount.value", 1000), set("amount.currency", "JPY")), 1000, "1000"},
		{"yen at the limit", orderJSON(t, set("amount.value", "1000000000"), set("amount.currency", "JPY")), 1_000_000_000, "1000000000"},
		{"dinar", orderJSON(t, set("amount.value", "1.234"), set("amount.currency", "KWD")), 1234, "1.234"},
		{"dinar with one decimal", orderJSON(t, set("amount.value", "0.5"), set("amount.currency", "KWD")), 500, "0.500"},
		{"dinar, value before the currency", strings.Replace(orderJSON(t, set("amount.value", "1.234"), set("amount.currency", "KWD")),
			`"currency":"KWD","value":"1.234"`, `"value":"1.234","currency":"KWD"`, 1), 1234, "1.234"},
		{"leading zeros", orderJSON(t, set("amount.value", "007.50")), 750, "7.50"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			placed := e.mustPlace(fmt.Sprintf("scale-%d", i), tc.body)
			var minor, dataMinor int64
			if err := e.pool.QueryRow(context.Background(), `SELECT o.amount_cents, (s.data->>'amount_cents')::bigint
FROM orders.orders o JOIN saga.instances s ON s.id = o.saga_id WHERE o.id = $1`, placed.OrderID).Scan(&minor, &dataMinor); err != nil {
				t.Fatal(err)
			}
			if minor != tc.minor || dataMinor != tc.minor {
				t.Errorf("stored %d minor units, saga data %d, want %d", minor, dataMinor, tc.minor)
			}
			var o struct {
				Amount struct {
					Value    string `json:"value"`
					Currency string `json:"currency"`
				} `json:"amount"`
			}
			e.do(http.MethodGet, placed.StatusURL, "").decode(t, &o)
			if o.Amount.Value != tc.value {
				t.Errorf("GET answered amount %q %s, want %q", o.Amount.Value, o.Amount.Currency, tc.value)
			}
			var full api.Order
			e.do(http.MethodGet, placed.StatusURL, "").decode(t, &full)
			if full.Order == nil || int64(full.Amount.Value) != tc.minor {
				t.Errorf("GET decoded as %+v, want %d minor units", full.Order, tc.minor)
			}
		})
	}
}

func TestPanicIsRecovered(t *testing.T) {
	t.Parallel()
	e := setup(t, func(_ *env, cfg *api.Config) { cfg.Orders = nil }) // Place on a nil service panics
	p := e.place("k", orderJSON(t)).problem(t, http.StatusInternalServerError)
	if p.Type != api.TypeInternal {
		t.Errorf("problem %+v", p)
	}
	if res := e.do(http.MethodGet, "/healthz", ""); res.status != http.StatusOK {
		t.Errorf("the server does not serve after a panic: %d", res.status)
	}
	if !strings.Contains(e.logs.String(), "panic in handler") {
		t.Errorf("the panic is not logged:\n%s", e.logs)
	}
}
