package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ErrRunAlone is returned by a handler running in a shared transaction
// (Grouped reports it) that must not hold the others up, such as one that
// sleeps on purpose: it must return it before its first statement on the
// transaction. The message then runs in a transaction of its own.
var ErrRunAlone = errors.New("run this message in a transaction of its own")

// BatchHandler is the set-at-a-time form of a consumer's Handler: in a
// shared transaction, the messages it Takes are applied together, with a
// few statements for all of them instead of a few each.
type BatchHandler interface {
	// Take reports, without touching the database, whether msg can be
	// applied by HandleBatch, and returns what HandleBatch needs of it
	// (the decoded message); the others go through the Handler, one at a
	// time, in the same transaction.
	Take(msg *message.Message) (item any, ok bool)
	// HandleBatch applies the items of messages Taken (claimed, first
	// deliveries) in tx. An error rolls the shared transaction back, and
	// every message goes again through the Handler, alone.
	HandleBatch(ctx context.Context, tx pgx.Tx, items []any) error
}

// BatchPrelude is implemented by a BatchHandler whose HandleBatch starts
// with reads (locking its rows, reading them): Prelude queues them on b,
// which goes to the server in the round trip of BEGIN and the claim, right
// after the claim, and their callbacks keep what they read in the items for
// HandleBatch. items are those of every message Taken, redeliveries
// included (the claim has not told them apart yet), so the reads must be
// harmless for a message already applied; HandleBatch then gets the items
// of the first deliveries. An error of the prelude rolls the transaction
// back, and every message goes alone, through the Handler.
type BatchPrelude interface {
	Prelude(b *pgx.Batch, items []any)
}

type groupedKey struct{}

// Grouped reports whether a handler called with ctx shares its transaction
// with other messages (Inbox.Wrap's group commit).
func Grouped(ctx context.Context) bool {
	v, _ := ctx.Value(groupedKey{}).(bool)
	return v
}

// group is an inbox's group commit: the messages waiting for a
// transaction, and how many transactions are in flight (at most par).
// Whoever arrives with fewer in flight leads: it runs the waiting messages
// in one transaction; when it ends, it hands the messages that arrived
// meanwhile to the first of them, who leads the next.
type group struct {
	max, par int
	mu       sync.Mutex
	leaders  int
	queue    []*job
}

// take removes the next batch from the queue. The caller holds mu.
func (g *group) take() []*job {
	n := min(len(g.queue), g.max)
	batch := slices.Clone(g.queue[:n])
	g.queue = slices.Delete(g.queue, 0, n)
	return batch
}

// job is one message waiting in a group.
type job struct {
	ctx  context.Context
	id   uuid.UUID
	msg  *message.Message // nil: no batch handler takes it
	fn   func(ctx context.Context, tx pgx.Tx) error
	wake chan verdict // holds at most one verdict at a time
}

type verdictKind int

const (
	committed verdictKind = iota // its effect committed (dup: it was a redelivery)
	alone                        // the shared transaction did not commit it: run it alone
	lead                         // run batch, then hand on
	failed                       // its handler failed with err
	panicked                     // its handler panicked with value
)

type verdict struct {
	kind  verdictKind
	dup   bool
	err   error
	value any
	batch []*job
}

// handleGrouped is Handle through the inbox's group commit.
func (in *Inbox) handleGrouped(ctx context.Context, id uuid.UUID, msg *message.Message, fn func(ctx context.Context, tx pgx.Tx) error) (bool, error) {
	g := &in.group
	if g.max <= 1 {
		return in.Handle(ctx, id, fn)
	}
	j := &job{ctx: ctx, id: id, msg: msg, fn: fn, wake: make(chan verdict, 1)}
	var v verdict
	g.mu.Lock()
	g.queue = append(g.queue, j)
	if g.leaders < g.par {
		g.leaders++
		v = verdict{kind: lead, batch: g.take()}
		g.mu.Unlock()
	} else {
		g.mu.Unlock()
		var err error
		if v, err = in.await(ctx, j); err != nil {
			return false, err
		}
	}
	for v.kind == lead {
		in.lead(ctx, v.batch)
		var err error
		if v, err = in.await(ctx, j); err != nil {
			return false, err
		}
	}
	switch v.kind {
	case committed:
		return v.dup, nil
	case failed:
		return false, v.err
	case panicked:
		panic(v.value)
	default:
		return in.Handle(ctx, id, fn)
	}
}

// await waits for j's verdict, or until ctx ends. A job that leaves while
// still queued is taken out of the queue, so no leader runs it later and no
// lead is handed to it; one that a batch already holds leaves that batch to
// finish (a claim it commits makes the redelivery a duplicate). A lead
// handed to it before it left is taken up: the lead must go on.
func (in *Inbox) await(ctx context.Context, j *job) (verdict, error) {
	select {
	case v := <-j.wake:
		return v, nil
	case <-ctx.Done():
	}
	g := &in.group
	g.mu.Lock()
	if i := slices.Index(g.queue, j); i >= 0 {
		g.queue = slices.Delete(g.queue, i, i+1)
		g.mu.Unlock()
		return verdict{}, ctx.Err()
	}
	g.mu.Unlock()
	select {
	case v := <-j.wake:
		return v, nil // a verdict, or a lead to run (its transaction fails fast on ctx)
	default:
		return verdict{}, ctx.Err()
	}
}

// lead runs batch in one transaction and gives each of its messages its
// verdict, then hands the lead on.
func (in *Inbox) lead(ctx context.Context, batch []*job) {
	g := &in.group
	defer func() {
		g.mu.Lock()
		if len(g.queue) > 0 {
			next := g.take()
			next[0].wake <- verdict{kind: lead, batch: next}
		} else {
			g.leaders--
		}
		g.mu.Unlock()
	}()
	// A message id twice in one batch (two deliveries at once): the later
	// ones wait for this transaction and then go alone, where the inbox
	// sees the first's claim.
	seen := make(map[uuid.UUID]bool, len(batch))
	jobs := make([]*job, 0, len(batch))
	for _, j := range batch {
		if seen[j.id] {
			defer func() { j.wake <- verdict{kind: alone} }()
			continue
		}
		seen[j.id] = true
		jobs = append(jobs, j)
	}
	verdicts := in.runBatch(ctx, jobs)
	for i, j := range jobs {
		j.wake <- verdicts[i]
	}
}

// runBatch claims and handles jobs in one transaction and returns their
// verdicts.
func (in *Inbox) runBatch(ctx context.Context, jobs []*job) (out []verdict) {
	verdicts := make([]verdict, len(jobs)) // zero: committed
	everyone := func(k verdictKind) []verdict {
		for i := range verdicts {
			if verdicts[i].kind != failed && verdicts[i].kind != panicked {
				verdicts[i] = verdict{kind: k}
			}
		}
		return verdicts
	}
	// A panic outside the handlers (Begin, the claim, Commit) must still
	// give every message a verdict, or its goroutine would wait forever:
	// each goes alone, where a panic surfaces in its own goroutine.
	defer func() {
		if r := recover(); r != nil {
			slog.Error("group commit transaction panicked; its messages go alone", "inbox", in.q.schema, "consumer", in.consumer, "panic", r)
			out = everyone(alone)
		}
	}()
	// Take before the claim, so that a prelude goes in its round trip.
	items := make([]any, len(jobs))
	isTaken := make([]bool, len(jobs))
	var pre pgx.Batch
	if in.batch != nil {
		var all []any
		for i, j := range jobs {
			if j.msg == nil {
				continue
			}
			if item, ok := take(in.batch, j.msg); ok {
				items[i], isTaken[i] = item, true
				all = append(all, item)
			}
		}
		if p, ok := in.batch.(BatchPrelude); ok && len(all) > 0 {
			if !prelude(p, &pre, all) {
				return everyone(alone)
			}
		}
	}
	tx, dups, err := in.claim(ctx, jobs, &pre)
	if err != nil {
		return everyone(alone)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	var (
		taken []any
		rest  []int
	)
	for i, j := range jobs {
		if dups[j.id] > 0 {
			verdicts[i].dup = true
			continue
		}
		if isTaken[i] {
			taken = append(taken, items[i])
			continue
		}
		rest = append(rest, i)
	}
	if len(taken) > 0 {
		if err := handleBatch(context.WithValue(ctx, groupedKey{}, true), in.batch, tx, taken); err != nil {
			return everyone(alone)
		}
	}
	for _, i := range rest {
		j := jobs[i]
		value, didPanic, err := call(j, tx)
		switch {
		case didPanic:
			verdicts[i] = verdict{kind: panicked, value: value}
			return everyone(alone)
		case errors.Is(err, ErrRunAlone):
			return everyone(alone)
		case err != nil:
			verdicts[i] = verdict{kind: failed, err: err}
			return everyone(alone)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		// Maybe committed: alone, each finds its own claim if it did.
		return everyone(alone)
	}
	in.batches.Add(1)
	return verdicts
}

// take asks b to take msg; a panic leaves the message to the Handler.
func take(b BatchHandler, msg *message.Message) (item any, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			item, ok = nil, false
		}
	}()
	return b.Take(msg)
}

// prelude runs p's Prelude; a panic reports false (every message then goes
// alone).
func prelude(p BatchPrelude, b *pgx.Batch, items []any) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			ok = false
		}
	}()
	p.Prelude(b, items)
	return true
}

// handleBatch runs b's HandleBatch, turning a panic into an error: every
// message then goes alone, through the Handler, whose panics surface in
// their own goroutines.
func handleBatch(ctx context.Context, b BatchHandler, tx pgx.Tx, items []any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("batch handler panicked: %v", r)
		}
	}()
	return b.HandleBatch(ctx, tx, items)
}

// call runs a job's handler, turning a panic into a value.
func call(j *job, tx pgx.Tx) (value any, didPanic bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			value, didPanic = r, true
		}
	}()
	return nil, false, j.fn(context.WithValue(j.ctx, groupedKey{}, true), tx)
}

// claim begins the jobs' transaction and records their message ids in the
// inbox with one statement (in id order, so two claiming transactions
// cannot deadlock), then runs the statements of pre (a batch handler's
// prelude), all in one round trip, and returns, per id, how many
// deliveries came before.
func (in *Inbox) claim(ctx context.Context, jobs []*job, pre *pgx.Batch) (*claimTx, map[uuid.UUID]int, error) {
	ids := make([]uuid.UUID, len(jobs))
	for i, j := range jobs {
		ids[i] = j.id
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
	dups := make(map[uuid.UUID]int, len(ids))
	var (
		xid uint32
		id  uuid.UUID
		n   int
	)
	// One message (most batches at low load) is claimed with the one-row
	// statement: without the array and its unnest, PostgreSQL executes it
	// in about half the time.
	sql, arg, scan := in.q.inboxClaimMany, any(ids), []any{&id, &n, &xid}
	if len(ids) == 1 {
		id = ids[0]
		sql, arg, scan = in.q.inboxClaim, ids[0], []any{&n, &xid}
	}
	tx, err := beginClaim(ctx, in.pool, func(rows pgx.Rows) error {
		_, err := pgx.ForEachRow(rows, scan, func() error {
			dups[id] = n
			return nil
		})
		return err
	}, pre, sql, in.consumer, arg)
	if err != nil {
		return nil, nil, fmt.Errorf("claim %d messages in %s inbox: %w", len(ids), in.q.schema, err)
	}
	if len(dups) != len(ids) {
		_ = tx.Rollback(ctx)
		return nil, nil, fmt.Errorf("claim %d messages in %s inbox: %d claimed", len(ids), in.q.schema, len(dups))
	}
	tx.xid = xid
	return tx, dups, nil
}
