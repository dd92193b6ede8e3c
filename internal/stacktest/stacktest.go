// Package stacktest runs a Sagaflow stack (roles.Stack) for a test and
// places orders through its API, so that tests of the packages around the
// stack (telemetry, contract, registry, conformance, the CLI) share one way
// to do both.
package stacktest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"testing"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/internal/roles"
)

// Start runs a stack of cfg until the test ends (a listener on 127.0.0.1 is
// made when the api role runs and cfg has none) and returns it once ready.
// A stack that fails to start, or ends with an error, fails the test.
func Start(t testing.TB, cfg roles.Config) *roles.Stack {
	t.Helper()
	if cfg.Listener == nil && runsAPI(cfg.Roles) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		cfg.Listener = ln
	}
	if cfg.Crash == nil {
		cfg.Crash = func(point string) { t.Errorf("unexpected injected crash at %s", point) }
	}
	stack, err := roles.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stack.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack: %v", err)
		}
	})
	select {
	case <-stack.Ready():
	case err := <-done:
		t.Fatalf("stack did not start: %v", err)
	}
	return stack
}

func runsAPI(rs []string) bool {
	for _, r := range rs {
		if r == roles.API || r == roles.All {
			return true
		}
	}
	return false
}

// Placed is the API's answer to a placement.
type Placed struct {
	OrderID uuid.UUID `json:"order_id"`
	SagaID  uuid.UUID `json:"saga_id"`
}

// Place posts a valid order of one sku-1 to the API at addr, with inject
// (nil: none) and line2 of the address when given, and returns its ids.
func Place(t testing.TB, addr string, inject map[string]string, line2 string) Placed {
	t.Helper()
	address := map[string]any{"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}
	if line2 != "" {
		address["line2"] = line2
	}
	body, _ := json.Marshal(map[string]any{
		"customer_id": "c-" + uuid.NewString()[:8], "items": []map[string]any{{"sku": "sku-1", "quantity": 1}},
		"amount": map[string]any{"value": "12.50", "currency": "EUR"}, "shipping_address": address, "inject": inject,
	})
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/orders", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", uuid.NewString())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p Placed
	if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&p) != nil {
		t.Fatalf("POST /orders: %s", resp.Status)
	}
	return p
}
