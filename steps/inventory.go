package steps

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/order"
)

// NewInventory returns the inventory participant: its action
// (order.TypeReserve) reserves every item of the order or none, refusing
// with "unknown SKU x" or "out of stock: SKU x"; its compensation
// (order.TypeRelease) puts the reserved units back.
func NewInventory(cfg Config) (*Participant, error) {
	return newParticipant(order.StepInventory, cfg.Topics.InventoryCommands, order.TypeReserve, order.TypeRelease, inventory{}, cfg)
}

type inventory struct{}

// lines merges an order's items by SKU (quantities add up) in SKU order, the
// order stock rows are locked in.
func lines(items []order.Item) (skus []string, qty []int32) {
	sum := map[string]int64{}
	for _, it := range items {
		sum[it.SKU] += int64(it.Quantity)
	}
	skus = make([]string, 0, len(sum))
	for s := range sum {
		skus = append(skus, s)
	}
	slices.Sort(skus)
	qty = make([]int32, len(skus))
	for i, s := range skus {
		qty[i] = int32(sum[s])
	}
	return skus, qty
}

func (inventory) validate(d *order.Data) error {
	if len(d.Items) == 0 {
		return errors.New("no items")
	}
	sum := map[string]int64{}
	for i, it := range d.Items {
		if strings.TrimSpace(it.SKU) == "" {
			return fmt.Errorf("items[%d]: empty sku", i)
		}
		if it.Quantity < 1 {
			return fmt.Errorf("items[%d] (SKU %s): quantity %d, want at least 1", i, it.SKU, it.Quantity)
		}
		sum[it.SKU] += int64(it.Quantity)
		if sum[it.SKU] > math.MaxInt32 {
			return fmt.Errorf("items[%d] (SKU %s): quantity too large", i, it.SKU)
		}
	}
	return nil
}

// The stock statements. A single SKU, the usual order, is locked and taken
// by its key: PostgreSQL keeps those statements' generic plans, where it
// plans "sku = ANY($1)" and the join with unnest afresh at every call
// (their generic plans expect ten SKUs, so a custom plan always looks
// cheaper), measured with pg_stat_statements.track_planning.
const (
	sqlLockStock     = `SELECT sku, available FROM inventory.stock WHERE sku = $1 FOR UPDATE`
	sqlLockStockMany = `SELECT sku, available FROM inventory.stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`
	sqlTakeStock     = `UPDATE inventory.stock SET available = available - $2 WHERE sku = $1`
	sqlTakeStockMany = `UPDATE inventory.stock AS s SET available = s.available - u.q
		FROM unnest($1::text[], $2::int[]) AS u(sku, q)
		WHERE s.sku = u.sku`
)

// stockRead is what the lock of the stock rows read: the available units
// by SKU (a SKU without a row is unknown).
type stockRead struct {
	available map[string]int32
}

// skusOf returns the distinct SKUs of ds in SKU order, the order stock rows
// are locked in, so that two reservations of the same SKUs queue instead of
// deadlocking.
func skusOf(ds []*order.Data) []string {
	var all []string
	for _, d := range ds {
		for _, it := range d.Items {
			all = append(all, it.SKU)
		}
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// queueLockStock queues the lock and read of the stock rows skus (sorted,
// distinct) on b; its callback fills into.
func queueLockStock(b *pgx.Batch, skus []string, into *stockRead) {
	into.available = make(map[string]int32, len(skus))
	var q *pgx.QueuedQuery
	if len(skus) == 1 {
		q = b.Queue(sqlLockStock, skus[0])
	} else {
		q = b.Queue(sqlLockStockMany, skus)
	}
	q.Query(func(rows pgx.Rows) error {
		var (
			sku string
			n   int32
		)
		_, err := pgx.ForEachRow(rows, []any{&sku, &n}, func() error {
			into.available[sku] = n
			return nil
		})
		if err != nil {
			return fmt.Errorf("lock stock: %w", err)
		}
		return nil
	})
}

// prelude locks and reads the stock rows of the actions ds in the round
// trip of the inbox's claim (prereader). It only locks and reads, so it is
// harmless for an action seen before.
func (inventory) prelude(b *pgx.Batch, ds []*order.Data) any {
	pre := &stockRead{}
	queueLockStock(b, skusOf(ds), pre)
	return pre
}

func (inv inventory) apply(ctx context.Context, tx pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data) ([]string, error) {
	var pre pgx.Batch
	read := &stockRead{}
	queueLockStock(&pre, skusOf(ds), read)
	if err := tx.SendBatch(ctx, &pre).Close(); err != nil {
		return nil, err
	}
	return inv.applyRead(b, ids, ds, read)
}

// applyPre is apply with what prelude read: the stock rows of every SKU of
// ds (and maybe more) are locked.
func (inv inventory) applyPre(_ context.Context, _ pgx.Tx, b *pgx.Batch, ids []uuid.UUID, ds []*order.Data, pre any) ([]string, error) {
	return inv.applyRead(b, ids, ds, pre.(*stockRead))
}

// applyRead decides the reservations of ds against the locked stock read
// and queues their writes on b.
func (inventory) applyRead(b *pgx.Batch, ids []uuid.UUID, ds []*order.Data, read *stockRead) ([]string, error) {
	type want struct {
		skus []string
		qty  []int32
	}
	wants := make([]want, len(ds))
	for i, d := range ds {
		wants[i].skus, wants[i].qty = lines(d.Items)
	}
	available := maps.Clone(read.available)
	// Decide in turn against what the earlier actions left; the rows are
	// locked, so the writes cannot be refused.
	refusals := make([]string, len(ds))
	taken := map[string]int32{}
	for i, w := range wants {
		for j, s := range w.skus {
			a, ok := available[s]
			if !ok {
				refusals[i] = "unknown SKU " + s
				break
			}
			if a < w.qty[j] {
				refusals[i] = "out of stock: SKU " + s
				break
			}
		}
		if refusals[i] != "" {
			continue
		}
		for j, s := range w.skus {
			available[s] -= w.qty[j]
			taken[s] += w.qty[j]
		}
		b.Queue(`INSERT INTO inventory.reservations (saga_id, sku, quantity)
		SELECT $1, u.sku, u.q FROM unnest($2::text[], $3::int[]) AS u(sku, q)`, ids[i], w.skus, w.qty)
	}
	if len(taken) == 0 {
		return refusals, nil
	}
	skus := make([]string, 0, len(taken))
	for s := range taken {
		skus = append(skus, s)
	}
	slices.Sort(skus)
	qty := make([]int32, len(skus))
	for i, s := range skus {
		qty[i] = taken[s]
	}
	// No callback checks the count of rows: the rows are locked and were
	// read above, and the stock's CHECK (available >= 0) rejects a take
	// beyond what is there. Without a callback the write can go with the
	// transaction's COMMIT (saga.SendBatch).
	if len(skus) == 1 {
		b.Queue(sqlTakeStock, skus[0], qty[0])
	} else {
		b.Queue(sqlTakeStockMany, skus, qty)
	}
	return refusals, nil
}

func (inventory) undo(ctx context.Context, tx pgx.Tx, _ *pgx.Batch, sagaID uuid.UUID) error {
	rows, err := tx.Query(ctx, `UPDATE inventory.reservations SET released_at = now()
		WHERE saga_id = $1 AND released_at IS NULL RETURNING sku, quantity`, sagaID)
	if err != nil {
		return fmt.Errorf("release reservation: %w", err)
	}
	type line struct {
		sku string
		q   int32
	}
	var ls []line
	var l line
	if _, err := pgx.ForEachRow(rows, []any{&l.sku, &l.q}, func() error {
		ls = append(ls, l)
		return nil
	}); err != nil {
		return fmt.Errorf("release reservation: %w", err)
	}
	if len(ls) == 0 {
		return nil
	}
	slices.SortFunc(ls, func(a, b line) int { return strings.Compare(a.sku, b.sku) })
	skus := make([]string, len(ls))
	qty := make([]int32, len(ls))
	for i, l := range ls {
		skus[i], qty[i] = l.sku, l.q
	}
	// Lock in SKU order, as reservations do.
	if _, err := tx.Exec(ctx, `SELECT 1 FROM inventory.stock WHERE sku = ANY($1) ORDER BY sku FOR UPDATE`, skus); err != nil {
		return fmt.Errorf("lock stock: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE inventory.stock AS s SET available = s.available + u.q
		FROM unnest($1::text[], $2::int[]) AS u(sku, q) WHERE s.sku = u.sku`, skus, qty); err != nil {
		return fmt.Errorf("return stock: %w", err)
	}
	return nil
}

// StockLevel is one SKU's stock: Available can be reserved; Held is held
// by live reservations (sagas in flight or completed); Initial is every
// unit ever put into stock (Available + Held).
type StockLevel struct {
	SKU       string `json:"sku"`
	Available int    `json:"available"`
	Held      int    `json:"held"`
	Initial   int    `json:"initial"`
}

// Querier is what ListStock reads through.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ListStock returns up to limit SKUs after the SKU after (empty: from the
// first), in SKU order.
func ListStock(ctx context.Context, db Querier, after string, limit int) ([]StockLevel, error) {
	rows, err := db.Query(ctx, `SELECT sku, available, initial - available, initial FROM inventory.stock
		WHERE sku > $1 ORDER BY sku LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list stock: %w", err)
	}
	levels, err := pgx.CollectRows(rows, pgx.RowToStructByPos[StockLevel])
	if err != nil {
		return nil, fmt.Errorf("list stock: %w", err)
	}
	return levels, nil
}

// SetStock sets a SKU's available units (adding the SKU if new) while
// orders run: the change is applied to the row as locked, so the units
// held by reservations in flight stay held and `sagaflow verify`'s stock
// invariant holds. It returns the SKU's new level.
func SetStock(ctx context.Context, db Querier, sku string, available int) (StockLevel, error) {
	switch {
	case strings.TrimSpace(sku) == "" || len(sku) > 200:
		return StockLevel{}, fmt.Errorf("set stock: SKU %q must be 1 to 200 characters", sku)
	case available < 0 || available > math.MaxInt32:
		return StockLevel{}, fmt.Errorf("set stock of %s: %d units, want 0 to %d", sku, available, math.MaxInt32)
	}
	rows, err := db.Query(ctx, `INSERT INTO inventory.stock AS s (sku, available, initial) VALUES ($1, $2, $2)
		ON CONFLICT (sku) DO UPDATE SET initial = s.initial + (EXCLUDED.available - s.available), available = EXCLUDED.available
		RETURNING sku, available, initial - available, initial`, sku, available)
	if err != nil {
		return StockLevel{}, fmt.Errorf("set stock of %s: %w", sku, err)
	}
	level, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[StockLevel])
	if err != nil {
		return StockLevel{}, fmt.Errorf("set stock of %s: %w", sku, err)
	}
	return level, nil
}

// DB is what SeedStock writes through: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SeedStock sets the available units of SKUs, adding the SKUs that do not
// exist yet, for the demo and tests. A SKU's initial units become its
// available units plus those its live reservations hold, so that
// `sagaflow verify`'s stock invariant holds. Run it while no order is in
// flight.
func SeedStock(ctx context.Context, db DB, stock map[string]int) error {
	skus := make([]string, 0, len(stock))
	for s, n := range stock {
		if strings.TrimSpace(s) == "" {
			return errors.New("seed stock: empty SKU")
		}
		if n < 0 || n > math.MaxInt32 {
			return fmt.Errorf("seed stock: SKU %s: %d units, want 0 to %d", s, n, math.MaxInt32)
		}
		skus = append(skus, s)
	}
	slices.Sort(skus)
	units := make([]int32, len(skus))
	for i, s := range skus {
		units[i] = int32(stock[s])
	}
	if _, err := db.Exec(ctx, `INSERT INTO inventory.stock AS s (sku, available, initial)
		SELECT u.sku, u.n, u.n + COALESCE((SELECT sum(r.quantity) FROM inventory.reservations r
			WHERE r.sku = u.sku AND r.released_at IS NULL), 0)
		FROM unnest($1::text[], $2::int[]) AS u(sku, n)
		ORDER BY u.sku
		ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available, initial = EXCLUDED.initial`, skus, units); err != nil {
		return fmt.Errorf("seed stock of %d SKUs: %w", len(skus), err)
	}
	return nil
}
