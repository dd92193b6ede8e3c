// Package verify checks Sagaflow's invariants (DESIGN.md) against the
// database once every saga has ended: sagas are terminal and agree with
// their orders; stock, payments and shipments match the orders that
// completed and nothing survives one that was compensated; every outbox is
// drained; and, given Kafka, the dead-letter topics hold only what was
// expected. `sagaflow verify` prints its report and the failure tests run it
// after every scenario.
package verify

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Check is one invariant and the rows that break it.
type Check struct {
	Name     string   `json:"name"`
	OK       bool     `json:"ok"`
	Skipped  string   `json:"skipped,omitempty"`
	Failures []string `json:"failures,omitempty"`
}

// Report is the result of Run.
type Report struct {
	Checks []Check `json:"checks"`
}

// OK reports whether every check passed.
func (r *Report) OK() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

// Print writes a human report: a line per check and the first failures.
func (r *Report) Print(w io.Writer) {
	for _, c := range r.Checks {
		mark := "ok  "
		switch {
		case c.Skipped != "":
			mark = "skip"
		case !c.OK:
			mark = "FAIL"
		}
		fmt.Fprintf(w, "%s %s", mark, c.Name)
		if c.Skipped != "" {
			fmt.Fprintf(w, " (%s)", c.Skipped)
		}
		fmt.Fprintln(w)
		for i, f := range c.Failures {
			if i == 20 {
				fmt.Fprintf(w, "       … and %d more\n", len(c.Failures)-20)
				break
			}
			fmt.Fprintf(w, "       %s\n", f)
		}
	}
	if r.OK() {
		fmt.Fprintln(w, "all invariants hold")
	} else {
		fmt.Fprintln(w, "INVARIANTS BROKEN")
	}
}

// DeadLetters counts messages in dead-letter topics; nil skips that check.
type DeadLetters func(ctx context.Context) (map[string]int64, error)

// Options tune Run.
type Options struct {
	// DeadLetters, when set, counts the dead-letter topics' messages.
	DeadLetters DeadLetters
	// AllowedDeadLetters is how many dead-lettered messages a test put there
	// on purpose (0 by default).
	AllowedDeadLetters int64
}

// check is one invariant: a query whose rows each describe a violation.
type check struct {
	name  string
	query string
}

// The invariants. Each query returns one text column per violation, naming
// the saga, order or SKU at fault.
var checks = []check{
	{"every saga ended (completed, compensated or failed)", `
SELECT 'saga ' || id || ' is ' || state || COALESCE(' (' || reason || ')', '')
FROM saga.instances WHERE state NOT IN ('completed', 'compensated', 'failed') ORDER BY id`},
	{"no saga failed with something left to undo", `
SELECT 'saga ' || id || ' failed after ' || completed || ' completed step(s)'
FROM saga.instances WHERE state = 'failed' AND completed > 0 ORDER BY id`},
	{"every order agrees with its saga", `
SELECT 'order ' || o.id || ' is ' || o.status || ' but saga ' || o.saga_id || ' is ' || COALESCE(s.state, 'missing')
FROM orders.orders o LEFT JOIN saga.instances s ON s.id = o.saga_id
WHERE s.id IS NULL
   OR (s.state = 'completed' AND o.status <> 'confirmed')
   OR (s.state IN ('compensated', 'failed') AND o.status <> 'cancelled')
   OR (s.state NOT IN ('completed', 'compensated', 'failed') AND o.status <> 'pending')
UNION ALL
SELECT 'saga ' || s.id || ' (' || s.type || ') has no order'
FROM saga.instances s WHERE s.type = 'order' AND NOT EXISTS (SELECT 1 FROM orders.orders o WHERE o.saga_id = s.id)`},
	{"stock: initial = available + units held by confirmed orders", `
SELECT 'SKU ' || st.sku || ': initial ' || st.initial || ' <> available ' || st.available || ' + held ' || COALESCE(h.held, 0)
FROM inventory.stock st
LEFT JOIN (SELECT r.sku, sum(r.quantity) AS held FROM inventory.reservations r
           JOIN saga.instances s ON s.id = r.saga_id
           WHERE r.released_at IS NULL AND s.state = 'completed' GROUP BY r.sku) h ON h.sku = st.sku
WHERE st.initial <> st.available + COALESCE(h.held, 0) OR st.available < 0
ORDER BY st.sku`},
	{"stock: no reservation survives a saga that did not complete", `
SELECT 'saga ' || r.saga_id || ' (' || COALESCE(s.state, 'no saga') || ') still holds ' || r.quantity || ' of SKU ' || r.sku
FROM inventory.reservations r LEFT JOIN saga.instances s ON s.id = r.saga_id
WHERE r.released_at IS NULL AND (s.state IS NULL OR s.state <> 'completed')
ORDER BY r.saga_id`},
	{"stock: every confirmed order holds exactly its items", `
SELECT 'order ' || o.id || ' is confirmed but holds ' || COALESCE(r.held::text, 'nothing') || ' for ' || (i.item->>'sku') || ', ordered ' || (i.item->>'quantity')
FROM orders.orders o
CROSS JOIN LATERAL jsonb_array_elements(o.items) AS i(item)
LEFT JOIN LATERAL (SELECT sum(quantity) AS held FROM inventory.reservations r
                   WHERE r.saga_id = o.saga_id AND r.sku = i.item->>'sku' AND r.released_at IS NULL) r ON true
WHERE o.status = 'confirmed' AND r.held IS DISTINCT FROM (i.item->>'quantity')::bigint`},
	{"payment: one charge per confirmed order, for its amount, not refunded", `
SELECT 'order ' || o.id || ' is confirmed but its charge is ' ||
       CASE WHEN c.saga_id IS NULL THEN 'missing' WHEN c.refunded_at IS NOT NULL THEN 'refunded'
            ELSE c.amount_cents || ' ' || c.currency || ' instead of ' || o.amount_cents || ' ' || o.currency END
FROM orders.orders o LEFT JOIN payment.charges c ON c.saga_id = o.saga_id
WHERE o.status = 'confirmed'
  AND (c.saga_id IS NULL OR c.refunded_at IS NOT NULL OR c.amount_cents <> o.amount_cents OR c.currency <> o.currency)`},
	{"payment: every charge of a saga that did not complete is refunded", `
SELECT 'saga ' || c.saga_id || ' (' || COALESCE(s.state, 'no saga') || ') kept its charge of ' || c.amount_cents || ' ' || c.currency
FROM payment.charges c LEFT JOIN saga.instances s ON s.id = c.saga_id
WHERE c.refunded_at IS NULL AND (s.state IS NULL OR s.state <> 'completed')`},
	{"payment: no charge without an order", `
SELECT 'charge of saga ' || c.saga_id || ' has no order'
FROM payment.charges c WHERE NOT EXISTS (SELECT 1 FROM orders.orders o WHERE o.saga_id = c.saga_id)`},
	{"shipping: one shipment per confirmed order, not cancelled", `
SELECT 'order ' || o.id || ' is confirmed but its shipment is ' || CASE WHEN sh.saga_id IS NULL THEN 'missing' ELSE 'cancelled' END
FROM orders.orders o LEFT JOIN shipping.shipments sh ON sh.saga_id = o.saga_id
WHERE o.status = 'confirmed' AND (sh.saga_id IS NULL OR sh.cancelled_at IS NOT NULL)`},
	{"shipping: no live shipment for a saga that did not complete", `
SELECT 'saga ' || sh.saga_id || ' (' || COALESCE(s.state, 'no saga') || ') has a live shipment'
FROM shipping.shipments sh LEFT JOIN saga.instances s ON s.id = sh.saga_id
WHERE sh.cancelled_at IS NULL AND (s.state IS NULL OR s.state <> 'completed')`},
	{"every outbox is drained", `
SELECT schema || ' outbox holds ' || n || ' message(s)' FROM (
  SELECT 'orders' AS schema, count(*) AS n FROM orders.outbox
  UNION ALL SELECT 'saga', count(*) FROM saga.outbox
  UNION ALL SELECT 'inventory', count(*) FROM inventory.outbox
  UNION ALL SELECT 'payment', count(*) FROM payment.outbox
  UNION ALL SELECT 'shipping', count(*) FROM shipping.outbox) b
WHERE n > 0`},
}

// Run checks every invariant.
func Run(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Report, error) {
	r := &Report{}
	for _, c := range checks {
		rows, err := pool.Query(ctx, c.query)
		if err != nil {
			return nil, fmt.Errorf("check %q: %w", c.name, err)
		}
		failures, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("check %q: %w", c.name, err)
		}
		r.Checks = append(r.Checks, Check{Name: c.name, OK: len(failures) == 0, Failures: failures})
	}
	dl := Check{Name: fmt.Sprintf("dead-letter topics hold at most the %d message(s) put there on purpose", opts.AllowedDeadLetters), OK: true}
	if opts.DeadLetters == nil {
		dl.Skipped = "no Kafka brokers given"
	} else {
		counts, err := opts.DeadLetters(ctx)
		if err != nil {
			return nil, fmt.Errorf("count dead letters: %w", err)
		}
		var total int64
		var parts []string
		for topic, n := range counts {
			total += n
			if n > 0 {
				parts = append(parts, fmt.Sprintf("%s holds %d", topic, n))
			}
		}
		if total > opts.AllowedDeadLetters {
			dl.OK = false
			dl.Failures = []string{strings.Join(parts, ", ")}
		}
	}
	r.Checks = append(r.Checks, dl)
	return r, nil
}
