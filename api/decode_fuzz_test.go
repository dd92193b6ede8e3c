package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/sagaflow/sagaflow/order"
)

// FuzzDecodePlaceRequest runs the body of POST /orders through what the
// handler does before it touches the database: decodeJSON into placeBody,
// then ValidateWithAmount. It proves that no body makes them panic; that a
// body the decoding refuses gets a *Problem of status 400, 413 or 415 (its
// type matching the status) with a title and a detail; that every
// validation error names its field and reason; and that a body both accept
// holds only what an order may: no control character in any text field,
// 1 to MaxItems items of distinct non-empty SKUs with quantities from 1 to
// MaxQuantity, and an amount in a currency of known scale, from one minor
// unit to MaxAmount major units.
func FuzzDecodePlaceRequest(f *testing.F) {
	for _, tc := range placeSeeds {
		if tc.status != http.StatusRequestEntityTooLarge { // 64 KiB would slow every mutation down
			f.Add([]byte(tc.body))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		decodePlace(t, body)
	})
}

// placeSeeds are the fuzz target's seeds with the status each gets: 202
// when the order is accepted, 422 when ValidateWithAmount refuses it.
var placeSeeds = []struct {
	name   string
	body   string
	status int
}{
	{"valid", `{"customer_id":"c-42","items":[{"sku":"sku-1","quantity":2}],"amount":{"value":"19.99","currency":"EUR"},` +
		`"shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}`, 202},
	{"valid with a numeric amount in yen, line2 and inject", `{"customer_id":"c-1","items":[{"sku":"A","quantity":1},{"sku":"B.2","quantity":10000}],` +
		`"amount":{"value":1000,"currency":"JPY"},` +
		`"shipping_address":{"name":"Bo","line1":"2 Side St","line2":"Apt 3","city":"Paris","postal_code":"75001","country":"FR"},` +
		`"inject":{"payment":"refuse"}}`, 202},
	{"escaped NUL in a text field", `{"customer_id":"c\u0000","items":[{"sku":"A","quantity":1}],"amount":{"value":"1.00","currency":"EUR"},` +
		`"shipping_address":{"name":"Ada","line1":"1 Main St","city":"Berlin","postal_code":"10115","country":"DE"}}`, 422},
	{"raw NUL in a string", "{\"customer_id\":\"c\x00\"}", 400},
	{"field of a future version of the body", `{"schema_version":2,"customer_id":"c-42"}`, 400},
	{"malformed JSON", `{"customer_id":`, 400},
	{"quantity of the wrong type", `{"customer_id":"c","items":[{"sku":"A","quantity":"two"}]}`, 400},
	{"amount with more decimals than its currency", `{"customer_id":"c","items":[{"sku":"A","quantity":1}],"amount":{"value":"19.999","currency":"EUR"}}`, 422},
	{"negative amount", `{"amount":{"value":-1,"currency":"EUR"}}`, 400},
	{"quantity with an exponent", `{"items":[{"sku":"A","quantity":1e3}]}`, 400},
	{"zero quantity and amount", `{"customer_id":"c","items":[{"sku":"A","quantity":0}],"amount":{"value":0,"currency":"EUR"}}`, 422},
	{"an array", `[]`, 400},
	{"trailing data", `{} {}`, 400},
	{"empty body", ``, 400},
	{"not UTF-8", "\xff\xfe", 400},
	{"too large", `{"customer_id":"` + strings.Repeat("x", DefaultMaxBodyBytes) + `"}`, 413},
}

// The seeds get the status they were chosen for.
func TestDecodePlaceRequestSeeds(t *testing.T) {
	t.Parallel()
	for _, tc := range placeSeeds {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := decodePlace(t, []byte(tc.body)); got != tc.status {
				t.Errorf("status %d, want %d", got, tc.status)
			}
		})
	}
}

// decodePlace decodes and validates body as POST /orders does and checks
// the outcome; it returns the status the handler would answer with before
// it reaches the database: 202 for an order it would place.
func decodePlace(t *testing.T, body []byte) int {
	t.Helper()
	s := &server{cfg: Config{MaxBodyBytes: DefaultMaxBodyBytes}}
	r := httptest.NewRequest(http.MethodPost, "/orders", bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	var b placeBody
	if err := s.decodeJSON(httptest.NewRecorder(), r, &b, placeRequestType); err != nil {
		return checkDecodeProblem(t, err)
	}
	req, amount := b.request()
	errs := req.ValidateWithAmount(amount)
	for _, e := range errs {
		if e.Field == "" || e.Reason == "" {
			t.Fatalf("validation error without field or reason: %+v", e)
		}
	}
	if len(errs) > 0 {
		return http.StatusUnprocessableEntity
	}
	checkValidOrder(t, req)
	return http.StatusAccepted
}

// checkDecodeProblem asserts that err, an error of decodeJSON, is a problem
// a client can act on, and returns its status.
func checkDecodeProblem(t *testing.T, err error) int {
	t.Helper()
	p, ok := err.(*Problem)
	if !ok {
		t.Fatalf("decodeJSON error is a %T, not a *Problem: %v", err, err)
	}
	wantType := map[int]string{
		http.StatusBadRequest:            TypeInvalidRequest,
		http.StatusRequestEntityTooLarge: TypeBodyTooLarge,
		http.StatusUnsupportedMediaType:  TypeUnsupportedMediaType,
	}[p.Status]
	if wantType == "" || p.Type != wantType {
		t.Fatalf("decodeJSON problem has status %d and type %q: %+v", p.Status, p.Type, p)
	}
	if strings.TrimSpace(p.Detail) == "" || p.Title == "" {
		t.Fatalf("decodeJSON problem without title or detail: %+v", p)
	}
	for _, e := range p.Errors {
		if e.Field == "" || e.Reason == "" {
			t.Fatalf("decodeJSON problem names a field error without field or reason: %+v", p)
		}
	}
	if _, err := json.Marshal(p); err != nil {
		t.Fatalf("decodeJSON problem cannot be written: %v", err)
	}
	return p.Status
}

// checkValidOrder asserts what a request that passed ValidateWithAmount
// holds.
func checkValidOrder(t *testing.T, req *order.PlaceRequest) {
	t.Helper()
	text := map[string]string{
		"customer_id":                  req.CustomerID,
		"amount.currency":              req.Amount.Currency,
		"shipping_address.name":        req.ShippingAddress.Name,
		"shipping_address.line1":       req.ShippingAddress.Line1,
		"shipping_address.line2":       req.ShippingAddress.Line2,
		"shipping_address.city":        req.ShippingAddress.City,
		"shipping_address.postal_code": req.ShippingAddress.PostalCode,
		"shipping_address.country":     req.ShippingAddress.Country,
	}
	for k, v := range req.Inject {
		text["inject key "+strconv.Quote(k)] = k
		text["inject."+k] = v
	}
	if len(req.Items) == 0 || len(req.Items) > order.MaxItems {
		t.Fatalf("valid order with %d items", len(req.Items))
	}
	skus := map[string]bool{}
	for i, it := range req.Items {
		if it.Quantity < 1 || it.Quantity > order.MaxQuantity {
			t.Fatalf("valid order: items[%d].quantity %d", i, it.Quantity)
		}
		if it.SKU == "" || skus[it.SKU] {
			t.Fatalf("valid order: items[%d].sku %q empty or repeated", i, it.SKU)
		}
		skus[it.SKU] = true
		text[fmt.Sprintf("items[%d].sku", i)] = it.SKU
	}
	scale, err := order.Scale(req.Amount.Currency)
	if err != nil {
		t.Fatalf("valid order: currency %q: %v", req.Amount.Currency, err)
	}
	limit := order.Money(order.MaxAmount)
	for range scale {
		limit *= 10
	}
	if req.Amount.Value < 1 || req.Amount.Value > limit {
		t.Fatalf("valid order: amount %d minor units of %s", req.Amount.Value, req.Amount.Currency)
	}
	for field, v := range text {
		if i := strings.IndexFunc(v, unicode.IsControl); i >= 0 {
			t.Fatalf("valid order: %s %q has a control character at byte %d", field, v, i)
		}
	}
	for _, field := range []string{"customer_id", "amount.currency", "shipping_address.name", "shipping_address.line1",
		"shipping_address.city", "shipping_address.postal_code", "shipping_address.country"} {
		if strings.TrimSpace(text[field]) == "" {
			t.Fatalf("valid order: %s is blank", field)
		}
	}
}
