package outbox

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/IBM/sarama"

	"github.com/sagaflow/sagaflow/internal/testenv"
)

// Logical decoding streams a transaction once its commit is in the WAL,
// which can be a moment before other sessions see it: the relay may publish
// a row, and the deleter run, while the row is still invisible to the
// DELETE. The deleter must keep such a row and delete it on a later round,
// or it stays in the outbox for good.
func TestDeleterKeepsRowsNotYetVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testenv.DB(t)
	ob := New("inventory")
	r, err := NewRelay(RelayConfig{Pool: db.Pool, Outboxes: []*Outbox{ob}, Producer: nopProducer{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	const seq = 1_000_000
	d := newDeleter(r)
	// Published, as far as the deleter knows, before the row is visible.
	d.add([]row{{schema: "inventory", seq: seq}})
	if err := d.flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool.Exec(ctx, `INSERT INTO inventory.outbox (seq, id, topic, key, payload) OVERRIDING SYSTEM VALUE
		VALUES ($1, gen_random_uuid(), 't', 'k', '\x00')`, seq); err != nil {
		t.Fatal(err)
	}
	if err := d.flush(ctx); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM inventory.outbox`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Fatalf("the outbox still holds %d published row(s) that became visible after the first delete", left)
	}
	// A row that is never found (published twice, deleted the first time)
	// is given up after maxDeleteRounds rounds.
	d.add([]row{{schema: "inventory", seq: 2 * seq}})
	for range maxDeleteRounds {
		if err := d.flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(d.pending["inventory"]); n != 0 {
		t.Fatalf("after %d rounds the deleter still retries %d row(s) that never appeared", maxDeleteRounds, n)
	}
}

type nopProducer struct{}

func (nopProducer) SendMessages([]*sarama.ProducerMessage) error { return nil }

// The relay widens the stream's 32-bit transaction ids against a snapshot's
// 64-bit ones, across an epoch boundary too.
func TestSnapshotVisibility(t *testing.T) {
	t.Parallel()
	const epoch = uint64(1) << 32
	tests := []struct {
		name    string
		snap    string
		xids    []uint32
		visible bool
	}{
		{"committed before xmin", "100:110:", []uint32{90, 99}, true},
		{"committed between xmin and xmax, not running", "100:110:100,105", []uint32{101, 109}, true},
		{"still running", "100:110:100,105", []uint32{101, 105}, false},
		{"not below xmax", "100:110:", []uint32{110}, false},
		{"previous epoch", "4294967396:4294967406:", []uint32{4294967290}, true},
		{"this epoch across the wrap", "4294967290:4294967406:4294967300", []uint32{5, 4294967295}, true},
		{"running across the wrap", "4294967290:4294967406:4294967300", []uint32{4}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, xmax, running, err := parseSnapshot(tc.snap)
			if err != nil {
				t.Fatal(err)
			}
			if got := allVisible(tc.xids, xmax, running); got != tc.visible {
				t.Fatalf("allVisible(%v) in %s = %v, want %v", tc.xids, tc.snap, got, tc.visible)
			}
		})
	}
	// allBelow compares circularly: an id just past the horizon is not below
	// it, one just before is, on both sides of the wrap.
	for _, tc := range []struct {
		xid     uint32
		horizon uint64
		below   bool
	}{
		{99, 100, true}, {100, 100, false}, {101, 100, false},
		{4294967290, epoch + 10, true}, {20, epoch + 10, false},
	} {
		if got := allBelow([]uint32{tc.xid}, tc.horizon); got != tc.below {
			t.Errorf("allBelow(%d, %d) = %v, want %v", tc.xid, tc.horizon, got, tc.below)
		}
	}
	if _, _, _, err := parseSnapshot("garbage"); err == nil {
		t.Error("parseSnapshot accepted garbage")
	}
}
