package order_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/order"
)

// A decimal is converted to minor units with its currency's scale, which
// may be known only after the value was read.
func TestDecimalAmountParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		value    order.Decimal
		currency string
		want     order.Money
		// The fields at fault, in order, and a part of the first one's
		// reason; none when the amount is valid.
		fields []string
		reason string
	}{
		{value: "19.99", currency: "EUR", want: 1999},
		{value: "19.9", currency: "EUR", want: 1990},
		{value: "20", currency: "EUR", want: 2000},
		{value: "0.01", currency: "EUR", want: 1},
		{value: "007.50", currency: "EUR", want: 750},
		{value: "1000000000", currency: "EUR", want: 1_000_000_000_00},
		{value: "1000", currency: "JPY", want: 1000},
		{value: "1", currency: "JPY", want: 1},
		{value: "1000000000", currency: "JPY", want: 1_000_000_000},
		{value: "1.234", currency: "KWD", want: 1234},
		{value: "0.5", currency: "KWD", want: 500},
		{value: "12", currency: "KWD", want: 12000},

		{value: "10.5", currency: "JPY", fields: []string{"amount.value"}, reason: "JPY has no fractional digits"},
		{value: "1000.0", currency: "JPY", fields: []string{"amount.value"}, reason: "JPY has no fractional digits"},
		{value: "19.999", currency: "EUR", fields: []string{"amount.value"}, reason: "EUR has 2"},
		{value: "1.2345", currency: "KWD", fields: []string{"amount.value"}, reason: "KWD has 3"},
		{value: "", currency: "EUR", fields: []string{"amount.value"}, reason: "is required"},
		{value: "0", currency: "EUR", fields: []string{"amount.value"}, reason: "greater than zero"},
		{value: "0.000", currency: "KWD", fields: []string{"amount.value"}, reason: "greater than zero"},
		{value: "1000000000.01", currency: "EUR", fields: []string{"amount.value"}, reason: "too large"},
		{value: "1000000001", currency: "JPY", fields: []string{"amount.value"}, reason: "too large"},
		{value: "12345678901", currency: "EUR", fields: []string{"amount.value"}, reason: "too large"},
		{value: order.Decimal(strings.Repeat("9", 40) + ".99"), currency: "EUR", fields: []string{"amount.value"}, reason: "too large"},
		{value: "19.99", currency: "", fields: []string{"amount.currency"}, reason: "is required"},
		{value: "19.99", currency: "eur", fields: []string{"amount.currency"}, reason: "capitals"},
		{value: "19.99", currency: "EURO", fields: []string{"amount.currency"}, reason: "three-letter"},
		{value: "19.99", currency: "XYZ", fields: []string{"amount.currency"}, reason: "not an ISO 4217 currency code"},
		{value: "19.99", currency: "ABC", fields: []string{"amount.currency"}, reason: "not an ISO 4217 currency code"},
		{value: "19.99", currency: "XXX", fields: []string{"amount.currency"}, reason: "legal tender"},
		{value: "19.99", currency: "XAU", fields: []string{"amount.currency"}, reason: "legal tender"},
		{value: "19.99", currency: "DEM", fields: []string{"amount.currency"}, reason: "legal tender"},
		// Without a currency the scale is unknown: only what does not
		// depend on it is checked.
		{value: "10.555", currency: "XYZ", fields: []string{"amount.currency"}, reason: "ISO 4217"},
		{value: "", currency: "", fields: []string{"amount.value", "amount.currency"}, reason: "is required"},
		{value: "12345678901", currency: "XYZ", fields: []string{"amount.value", "amount.currency"}, reason: "too large"},
	}
	for _, tt := range tests {
		t.Run(string(tt.value)+" "+tt.currency, func(t *testing.T) {
			t.Parallel()
			got, errs := order.DecimalAmount{Value: tt.value, Currency: tt.currency}.Parse()
			var fields []string
			for _, e := range errs {
				fields = append(fields, e.Field)
			}
			if strings.Join(fields, " ") != strings.Join(tt.fields, " ") {
				t.Fatalf("errors %+v, want fields %q", errs, tt.fields)
			}
			if len(errs) > 0 {
				if !strings.Contains(errs[0].Reason, tt.reason) {
					t.Errorf("reason %q lacks %q", errs[0].Reason, tt.reason)
				}
				return
			}
			if want := (order.Amount{Value: tt.want, Currency: tt.currency}); got != want {
				t.Errorf("amount %+v, want %+v", got, want)
			}
		})
	}
}

// Validate checks an amount given in minor units (by Go callers such as the
// load generator) with its currency's limits.
func TestValidateAmount(t *testing.T) {
	t.Parallel()
	tests := []struct {
		amount order.Amount
		field  string // "" when valid
		reason string
	}{
		{amount: order.Amount{Value: 1999, Currency: "EUR"}},
		{amount: order.Amount{Value: 1000, Currency: "JPY"}},
		{amount: order.Amount{Value: 1234, Currency: "KWD"}},
		{amount: order.Amount{Value: 1_000_000_000_00, Currency: "EUR"}},
		{amount: order.Amount{Value: 1_000_000_000_000, Currency: "KWD"}},
		{amount: order.Amount{Value: 0, Currency: "EUR"}, field: "amount.value", reason: "greater than zero"},
		{amount: order.Amount{Value: -5, Currency: "EUR"}, field: "amount.value", reason: "greater than zero"},
		{amount: order.Amount{Value: 1_000_000_000_01, Currency: "EUR"}, field: "amount.value", reason: "too large"},
		{amount: order.Amount{Value: 1_000_000_001, Currency: "JPY"}, field: "amount.value", reason: "too large"},
		{amount: order.Amount{Value: 1999, Currency: "XYZ"}, field: "amount.currency", reason: "ISO 4217"},
	}
	for _, tt := range tests {
		t.Run(tt.amount.String(), func(t *testing.T) {
			t.Parallel()
			r := validRequest()
			r.Amount = tt.amount
			errs := r.Validate()
			switch {
			case tt.field == "" && len(errs) > 0:
				t.Errorf("errors %+v", errs)
			case tt.field != "" && (len(errs) != 1 || errs[0].Field != tt.field || !strings.Contains(errs[0].Reason, tt.reason)):
				t.Errorf("errors %+v, want one for %s saying %q", errs, tt.field, tt.reason)
			}
		})
	}
}

// ValidateWithAmount converts the amount as written and checks the whole
// request, the amount's errors in their place among the other fields'.
func TestValidateWithAmount(t *testing.T) {
	t.Parallel()
	r := validRequest()
	if errs := r.ValidateWithAmount(order.DecimalAmount{Value: "1000", Currency: "JPY"}); len(errs) > 0 {
		t.Fatalf("errors %+v", errs)
	}
	if want := (order.Amount{Value: 1000, Currency: "JPY"}); r.Amount != want {
		t.Errorf("amount %+v, want %+v", r.Amount, want)
	}

	r = validRequest()
	r.Items = nil
	r.ShippingAddress.Country = "de"
	errs := r.ValidateWithAmount(order.DecimalAmount{Value: "10.5", Currency: "JPY"})
	var fields []string
	for _, e := range errs {
		fields = append(fields, e.Field)
	}
	if got, want := strings.Join(fields, " "), "items amount.value shipping_address.country"; got != want {
		t.Errorf("fields %q, want %q: %+v", got, want, errs)
	}
	if r.Amount != (order.Amount{}) {
		t.Errorf("amount %+v of an invalid decimal, want zero", r.Amount)
	}
}

func validRequest() *order.PlaceRequest {
	return &order.PlaceRequest{
		CustomerID: "c-1",
		Items:      []order.Item{{SKU: "SKU-1", Quantity: 1}},
		Amount:     order.Amount{Value: 1999, Currency: "EUR"},
		ShippingAddress: order.Address{Name: "Ada", Line1: "Main Street 1", City: "Berlin",
			PostalCode: "10115", Country: "DE"},
	}
}

// In JSON an amount's value is a decimal string with its currency's scale;
// it reads back as the same amount.
func TestAmountJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		amount order.Amount
		json   string
		text   string // String
		oneWay bool   // a Decimal has no sign: a negative amount is written only
	}{
		{order.Amount{Value: 1999, Currency: "EUR"}, `{"value":"19.99","currency":"EUR"}`, "19.99 EUR", false},
		{order.Amount{Value: 1990, Currency: "EUR"}, `{"value":"19.90","currency":"EUR"}`, "19.90 EUR", false},
		{order.Amount{Value: 5, Currency: "EUR"}, `{"value":"0.05","currency":"EUR"}`, "0.05 EUR", false},
		{order.Amount{Value: 1000, Currency: "JPY"}, `{"value":"1000","currency":"JPY"}`, "1000 JPY", false},
		{order.Amount{Value: 1234, Currency: "KWD"}, `{"value":"1.234","currency":"KWD"}`, "1.234 KWD", false},
		{order.Amount{Value: 5, Currency: "KWD"}, `{"value":"0.005","currency":"KWD"}`, "0.005 KWD", false},
		{order.Amount{Value: -150, Currency: "EUR"}, `{"value":"-1.50","currency":"EUR"}`, "-1.50 EUR", true},
		// A code golang.org/x/text does not know (stored before currencies
		// were checked) is written with two decimals, as every amount was.
		{order.Amount{Value: 1999, Currency: "XYZ"}, `{"value":"19.99","currency":"XYZ"}`, "19.99 XYZ", false},
	}
	for _, tt := range tests {
		t.Run(tt.text, func(t *testing.T) {
			t.Parallel()
			if s := tt.amount.String(); s != tt.text {
				t.Errorf("String %q, want %q", s, tt.text)
			}
			b, err := json.Marshal(tt.amount)
			if err != nil || string(b) != tt.json {
				t.Fatalf("Marshal: %s, %v; want %s", b, err, tt.json)
			}
			if tt.oneWay {
				return
			}
			var back order.Amount
			if err := json.Unmarshal(b, &back); err != nil || back != tt.amount {
				t.Errorf("Unmarshal %s: %+v, %v", b, back, err)
			}
		})
	}
	for _, bad := range []string{
		`{"value":"10.5","currency":"JPY"}`,
		`{"value":"-","currency":"EUR"}`,
		`{"value":true,"currency":"EUR"}`,
	} {
		var a order.Amount
		if err := json.Unmarshal([]byte(bad), &a); err == nil {
			t.Errorf("Unmarshal %s: %+v, want an error", bad, a)
		}
	}
}

// A decimal is read from a JSON string or number exactly, and only in
// plain decimal notation.
func TestDecimalUnmarshalJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		json string
		want order.Decimal
		ok   bool
	}{
		{`"19.99"`, "19.99", true},
		{`19.99`, "19.99", true},
		{`1000`, "1000", true},
		{`"0.001"`, "0.001", true},
		{` 7 `, "7", true},
		{`null`, "", true},
		{`"-5.00"`, "", false},
		{`-5`, "", false},
		{`1e3`, "", false},
		{`"1,5"`, "", false},
		{`".5"`, "", false},
		{`"5."`, "", false},
		{`""`, "", false},
		{`" 5"`, "", false},
		{`"lots"`, "", false},
		{`true`, "", false},
		{`[1]`, "", false},
	}
	for _, tt := range tests {
		var d order.Decimal
		err := json.Unmarshal([]byte(tt.json), &d)
		if (err == nil) != tt.ok || d != tt.want {
			t.Errorf("Unmarshal %s: %q, %v", tt.json, d, err)
		}
	}
}
