package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// `sagaflow stock` sets and lists stock; a SKU's held units stay held when
// its available units are set.
func TestStockCommand(t *testing.T) {
	db := testenv.DB(t)
	ctx := context.Background()
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runStock(ctx, append(args, "--database-url", db.URL), &out)
		return out.String(), err
	}
	for _, sku := range []string{"sku-a", "sku-b", "sku-c"} {
		if out, err := run("set", sku, "10"); err != nil || !strings.Contains(out, sku+": 10 available, 0 held") {
			t.Fatalf("set %s: %v\n%s", sku, err, out)
		}
	}
	// A saga holds 4 units of sku-b.
	if _, err := db.Pool.Exec(ctx, `UPDATE inventory.stock SET available = available - 4 WHERE sku = 'sku-b';
		INSERT INTO inventory.reservations (saga_id, sku, quantity) VALUES (gen_random_uuid(), 'sku-b', 4)`); err != nil {
		t.Fatal(err)
	}
	if out, err := run("set", "sku-b", "25"); err != nil || !strings.Contains(out, "sku-b: 25 available, 4 held") {
		t.Fatalf("set sku-b: %v\n%s", err, out)
	}
	out, err := run("list", "--limit", "2")
	if err != nil || !strings.Contains(out, "sku-a") || !strings.Contains(out, "next page: --after sku-b") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := run("--after", "sku-b"); err != nil || !strings.Contains(out, "sku-c") || strings.Contains(out, "sku-a") {
		t.Fatalf("list after sku-b: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"set", "sku-a"}, {"set", "sku-a", "-1"}, {"set", "sku-a", "x"}, {"set", " ", "1"}, {"explode"}} {
		if _, err := run(bad...); err == nil {
			t.Errorf("stock %v succeeded", bad)
		}
	}
}
