package outbox

import (
	"context"
	"testing"
	"time"
)

// The commit log answers at once for recorded transactions and for
// unknown ones when no COMMIT is under way; it waits for a COMMIT under way
// and believes it only once it ended with the id; a COMMIT that never ends
// costs at most the limit; a full log forgets its oldest id.
func TestCommitLog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const forever = time.Hour

	t.Run("recorded", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.end(l.begin(), 100)
		l.end(l.begin(), 101)
		if !l.await(ctx, []uint32{100, 101}, forever) {
			t.Fatal("two recorded transactions not known visible")
		}
		if l.await(ctx, []uint32{100, 102}, forever) {
			t.Fatal("an unrecorded transaction taken for visible")
		}
	})

	t.Run("failed commit", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.end(l.begin(), 0) // failed, or wrote nothing
		if l.await(ctx, []uint32{0}, forever) {
			t.Fatal("a commit without an id recorded one")
		}
	})

	t.Run("waits for a commit under way", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		ticket := l.begin()
		got := make(chan bool)
		go func() { got <- l.await(ctx, []uint32{7}, forever) }()
		// Unrelated commits ending do not answer it.
		l.end(l.begin(), 8)
		select {
		case v := <-got:
			t.Fatalf("await answered %v before the commit under way ended", v)
		default:
		}
		l.end(ticket, 7)
		if !<-got {
			t.Fatal("the transaction whose commit was under way not known visible once it ended")
		}
	})

	t.Run("a commit under way that ends without the id", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		ticket := l.begin()
		got := make(chan bool)
		go func() { got <- l.await(ctx, []uint32{7}, forever) }()
		l.end(ticket, 9)
		if <-got {
			t.Fatal("an unrecorded transaction taken for visible")
		}
	})

	t.Run("a stuck commit costs the limit", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		l.begin() // never ends: a COMMIT waiting for a synchronous standby
		if l.await(ctx, []uint32{7}, 10*time.Millisecond) {
			t.Fatal("a transaction whose commit never answered taken for visible")
		}
	})

	t.Run("full log forgets the oldest", func(t *testing.T) {
		t.Parallel()
		l := newCommitLog()
		for x := uint32(1); x <= commitLogSize+1; x++ {
			l.end(l.begin(), int64(x))
		}
		if l.await(ctx, []uint32{1}, forever) {
			t.Fatal("the oldest id still known after the log filled")
		}
		if !l.await(ctx, []uint32{2, commitLogSize + 1}, forever) {
			t.Fatal("recent ids forgotten")
		}
		if len(l.seen) != commitLogSize {
			t.Fatalf("the log holds %d ids, want %d", len(l.seen), commitLogSize)
		}
	})
}
