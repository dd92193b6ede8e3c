package order

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// A request's hash tells a replay from another request under a used
// idempotency key, also across a deployment: the encoding it hashes must
// not change (amounts in currencies with two decimals were encoded so
// before amounts took their currency's scale).
func TestRequestHashIsStable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		req     PlaceRequest
		encoded string
	}{
		{PlaceRequest{CustomerID: "c-1", Items: []Item{{SKU: "SKU-1", Quantity: 2}}, Amount: Amount{Value: 1990, Currency: "EUR"},
			ShippingAddress: Address{Name: "Ada", Line1: "Main Street 1", City: "Berlin", PostalCode: "10115", Country: "DE"},
			Inject:          map[string]string{"payment": "refuse"}},
			`{"customer_id":"c-1","items":[{"sku":"SKU-1","quantity":2}],"amount":{"value":"19.90","currency":"EUR"},` +
				`"shipping_address":{"name":"Ada","line1":"Main Street 1","city":"Berlin","postal_code":"10115","country":"DE"},"inject":{"payment":"refuse"}}`},
	}
	for _, tt := range tests {
		want := sha256.Sum256([]byte(tt.encoded))
		if got := tt.req.hash(); !bytes.Equal(got, want[:]) {
			t.Errorf("hash of %+v is not that of %s", tt.req, tt.encoded)
		}
	}
}
