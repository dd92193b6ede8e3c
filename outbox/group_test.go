package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/outbox"
)

// The group commit tests below arrange their batches deterministically:
//
//  1. holdSlots fills every transaction slot of the inbox
//     (outbox.DefaultParallel of them) with a "block" message whose handler
//     waits until the test releases it. While they wait, every other Wrap
//     call must queue.
//  2. queue starts the messages under test, each in its own goroutine, and
//     waits until each goroutine is parked in the inbox's queue (see
//     waitQueued), one after the other, so the queue order is the order
//     given.
//  3. The test releases the blockers; the first to commit hands the whole
//     queue (fewer than DefaultMaxBatch messages) to its first message,
//     which runs it as one shared transaction.
//
// Step 2 cannot be observed through the public API: a goroutine that has
// queued runs no code of ours until its batch runs, so a test that only
// watched handlers and return values could always be outrun by a goroutine
// that appends itself a moment after the release (and then leads a batch of
// one). waitQueued therefore reads the goroutine's state from the runtime:
// blocked on a channel receive inside package outbox, which in Wrap only
// happens once the message is in the queue. The wait is on that state, not
// on time; the assertions that follow it hold on every schedule.

// groupWait bounds every wait of these tests: reaching it is a failure
// (a hang), never a synchronisation.
const groupWait = 2 * time.Minute

// groupConsumer is the inbox consumer of the group commit tests.
const groupConsumer = "group-test"

var errGroupBoom = errors.New("boom")

// groupPanic is the value a "panic" message's handler panics with.
type groupPanic struct{ id string }

// groupCall is one call of the rig's handler.
type groupCall struct {
	grouped  bool  // outbox.Grouped(ctx)
	runAlone bool  // it returned ErrRunAlone before any statement
	txid     int64 // txid_current() of its effect (0 with runAlone)
}

// groupRig is an inbox on a test's own database whose handler records an
// effect row (message id, payload, transaction id) per call and then acts
// on the payload:
//
//	block…  waits until the test releases the blockers
//	fail    returns an error wrapping errGroupBoom
//	panic   panics with groupPanic{id}
//	alone   returns ErrRunAlone (first, without an effect) when grouped
type groupRig struct {
	t    *testing.T
	db   *testenv.Database
	in   *outbox.Inbox
	wrap message.NoPublishHandlerFunc

	blocked     chan string   // ids of "block" messages inside their handler
	release     chan struct{} // closed to let "block" handlers return
	releaseOnce sync.Once

	mu    sync.Mutex
	calls map[string][]groupCall
}

func newGroupRig(t *testing.T) *groupRig {
	t.Helper()
	db := testenv.DB(t)
	if _, err := db.Pool.Exec(t.Context(),
		`CREATE TABLE group_effects (id text NOT NULL, body text NOT NULL, txid bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	r := &groupRig{
		t:       t,
		db:      db,
		in:      outbox.NewInbox(db.Pool, "inventory", groupConsumer),
		blocked: make(chan string, 64),
		release: make(chan struct{}),
		calls:   map[string][]groupCall{},
	}
	r.wrap = r.in.Wrap(r.handle)
	// Runs before the pool closes (cleanups run last in, first out), so a
	// test that fails early does not leave blocked handlers holding
	// connections.
	t.Cleanup(r.releaseBlockers)
	return r
}

func (r *groupRig) handle(ctx context.Context, tx pgx.Tx, msg *message.Message) error {
	body := string(msg.Payload)
	grouped := outbox.Grouped(ctx)
	if body == "alone" && grouped {
		r.record(msg.UUID, groupCall{grouped: true, runAlone: true})
		return outbox.ErrRunAlone
	}
	var txid int64
	if err := tx.QueryRow(ctx,
		`INSERT INTO group_effects (id, body, txid) VALUES ($1, $2, txid_current()) RETURNING txid`,
		msg.UUID, body).Scan(&txid); err != nil {
		return err
	}
	r.record(msg.UUID, groupCall{grouped: grouped, txid: txid})
	switch {
	case strings.HasPrefix(body, "block"):
		r.blocked <- msg.UUID
		<-r.release
	case body == "fail":
		return fmt.Errorf("handler of %s: %w", msg.UUID, errGroupBoom)
	case body == "panic":
		panic(groupPanic{id: msg.UUID})
	}
	return nil
}

func (r *groupRig) record(id string, c groupCall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[id] = append(r.calls[id], c)
}

func (r *groupRig) callsOf(id string) []groupCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls[id])
}

func (r *groupRig) releaseBlockers() { r.releaseOnce.Do(func() { close(r.release) }) }

// groupMsg is a new message with a fresh id.
func groupMsg(t *testing.T, body string) *message.Message {
	return groupMsgID(t, uuid.NewString(), body)
}

// groupMsgID is a delivery of message id.
func groupMsgID(t *testing.T, id, body string) *message.Message {
	msg := message.NewMessage(id, []byte(body))
	msg.SetContext(t.Context())
	return msg
}

// groupPending is a Wrap call running in its own goroutine.
type groupPending struct {
	msg  *message.Message
	gid  uint64 // the goroutine's id
	done chan struct{}
	// set before done is closed
	err       error
	returned  bool // Wrap returned (false: it panicked)
	recovered any  // what the goroutine recovered
}

// start calls the rig's Wrap for msg in a new goroutine.
func (r *groupRig) start(msg *message.Message) *groupPending {
	p := &groupPending{msg: msg, done: make(chan struct{})}
	gid := make(chan uint64)
	go func() {
		defer close(p.done)
		defer func() { p.recovered = recover() }()
		gid <- goroutineID()
		p.err = r.wrap(msg)
		p.returned = true
	}()
	p.gid = <-gid
	return p
}

// holdSlots starts one "block" message per transaction slot of the inbox
// and returns once each is inside its handler: each arrived with a slot
// free, so each leads a transaction of its own.
func (r *groupRig) holdSlots() []*groupPending {
	r.t.Helper()
	var ps []*groupPending
	for i := range outbox.DefaultParallel {
		p := r.start(groupMsg(r.t, fmt.Sprintf("block%d", i)))
		select {
		case id := <-r.blocked:
			if id != p.msg.UUID {
				r.t.Fatalf("blocker %s entered its handler, want %s", id, p.msg.UUID)
			}
		case <-p.done:
			r.t.Fatalf("blocker %d returned %v before its handler blocked", i, p.err)
		case <-time.After(groupWait):
			r.t.Fatalf("blocker %d did not reach its handler", i)
		}
		ps = append(ps, p)
	}
	return ps
}

// queue starts a message per body, one after the other, each once the one
// before it is in the inbox's queue: the queue holds them in that order.
// The slots must be held (holdSlots).
func (r *groupRig) queue(bodies ...string) []*groupPending {
	r.t.Helper()
	var ps []*groupPending
	for _, body := range bodies {
		p := r.start(groupMsg(r.t, body))
		r.waitQueued(p)
		ps = append(ps, p)
	}
	return ps
}

// waitQueued waits until the goroutine of every p is parked in the inbox's
// queue: blocked on a channel receive whose innermost non-runtime frame is
// in package outbox. Before its message is queued, Wrap blocks on nothing
// but the group's mutex; and while the slots are held no batch can take it.
func (r *groupRig) waitQueued(ps ...*groupPending) {
	r.t.Helper()
	deadline := time.Now().Add(groupWait)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n == len(buf) {
			buf = make([]byte, 2*len(buf))
			continue
		}
		dump := string(buf[:n])
		waiting := 0
		for _, p := range ps {
			select {
			case <-p.done:
				r.t.Fatalf("message %s (%q) returned (err %v, recovered %v) while it should wait in the queue",
					p.msg.UUID, p.msg.Payload, p.err, p.recovered)
			default:
			}
			if parkedInOutbox(dump, p.gid) {
				waiting++
			}
		}
		if waiting == len(ps) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%d of %d messages did not queue in the inbox; goroutines:\n%s", len(ps)-waiting, len(ps), dump)
		}
		runtime.Gosched()
	}
}

// parkedInOutbox reports whether goroutine gid of a runtime.Stack dump of
// all goroutines is blocked on a channel receive (or a select of receives:
// its verdict or its context's end) in package outbox.
func parkedInOutbox(dump string, gid uint64) bool {
	prefix := "goroutine " + strconv.FormatUint(gid, 10) + " "
	for g := range strings.SplitSeq(dump, "\n\n") {
		header, frames, _ := strings.Cut(g, "\n")
		if !strings.HasPrefix(header, prefix) {
			continue
		}
		if _, status, _ := strings.Cut(header, "["); !strings.HasPrefix(status, "chan receive") && !strings.HasPrefix(status, "select") {
			return false
		}
		for line := range strings.SplitSeq(frames, "\n") {
			if line == "" || strings.HasPrefix(line, "\t") || strings.HasPrefix(line, "runtime.") {
				continue
			}
			return strings.HasPrefix(line, "github.com/sagaflow/sagaflow/outbox.")
		}
		return false
	}
	return false
}

// goroutineID is the id of the calling goroutine, as runtime.Stack prints
// it.
func goroutineID() uint64 {
	var buf [64]byte
	s := strings.TrimPrefix(string(buf[:runtime.Stack(buf[:], false)]), "goroutine ")
	id, _, _ := strings.Cut(s, " ")
	n, err := strconv.ParseUint(id, 10, 64)
	if err != nil {
		panic(fmt.Sprintf("goroutine id in %q: %v", s, err))
	}
	return n
}

// finish waits for every Wrap call of ps to end.
func (r *groupRig) finish(ps ...*groupPending) {
	r.t.Helper()
	timeout := time.After(groupWait)
	for _, p := range ps {
		select {
		case <-p.done:
		case <-timeout:
			r.t.Fatalf("message %s (%q) still running", p.msg.UUID, p.msg.Payload)
		}
	}
}

// mustSucceed checks that every Wrap call of ps returned nil.
func (r *groupRig) mustSucceed(ps ...*groupPending) {
	r.t.Helper()
	for _, p := range ps {
		if !p.returned || p.err != nil {
			r.t.Errorf("message %s (%q): returned %v, err %v, recovered %v; want nil",
				p.msg.UUID, p.msg.Payload, p.returned, p.err, p.recovered)
		}
	}
}

// effects returns the transaction ids of the committed effects per message.
func (r *groupRig) effects() map[string][]int64 {
	r.t.Helper()
	rows, err := r.db.Pool.Query(r.t.Context(), `SELECT id, txid FROM group_effects`)
	if err != nil {
		r.t.Fatal(err)
	}
	got := map[string][]int64{}
	var (
		id   string
		txid int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &txid}, func() error {
		got[id] = append(got[id], txid)
		return nil
	}); err != nil {
		r.t.Fatal(err)
	}
	return got
}

// inbox returns the duplicates column of the consumer's inbox rows, per
// message id.
func (r *groupRig) inbox() map[string]int {
	r.t.Helper()
	rows, err := r.db.Pool.Query(r.t.Context(),
		`SELECT message_id::text, duplicates FROM inventory.inbox WHERE consumer = $1`, groupConsumer)
	if err != nil {
		r.t.Fatal(err)
	}
	got := map[string]int{}
	var (
		id   string
		dups int
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &dups}, func() error {
		got[id] = dups
		return nil
	}); err != nil {
		r.t.Fatal(err)
	}
	return got
}

// checkApplied checks that exactly the messages of want have an effect,
// once each, and an inbox row without duplicates, and returns the
// transaction id of each one's effect.
func (r *groupRig) checkApplied(want []*groupPending) map[string]int64 {
	r.t.Helper()
	effects, inbox := r.effects(), r.inbox()
	txids := map[string]int64{}
	for _, p := range want {
		id := p.msg.UUID
		if len(effects[id]) != 1 {
			r.t.Errorf("message %s (%q): effect applied %d times, want once", id, p.msg.Payload, len(effects[id]))
		} else {
			txids[id] = effects[id][0]
		}
		if dups, ok := inbox[id]; !ok || dups != 0 {
			r.t.Errorf("message %s (%q): inbox row present %v with %d duplicates, want present with 0", id, p.msg.Payload, ok, dups)
		}
	}
	if len(effects) != len(want) {
		r.t.Errorf("effects of %d messages, want %d: %v", len(effects), len(want), effects)
	}
	if len(inbox) != len(want) {
		r.t.Errorf("%d inbox rows, want %d: %v", len(inbox), len(want), inbox)
	}
	return txids
}

// checkCounters checks the inbox's counters.
func (r *groupRig) checkCounters(handled, duplicates, transactions int64) {
	r.t.Helper()
	if got := r.in.Handled(); got != handled {
		r.t.Errorf("Handled() = %d, want %d", got, handled)
	}
	if got := r.in.Duplicates(); got != duplicates {
		r.t.Errorf("Duplicates() = %d, want %d", got, duplicates)
	}
	if got := r.in.Transactions(); got != transactions {
		r.t.Errorf("Transactions() = %d, want %d", got, transactions)
	}
}

// checkCalls checks the calls of message p's handler against want (txid 0
// in want: any transaction id, checked by the caller).
func (r *groupRig) checkCalls(p *groupPending, want ...groupCall) []groupCall {
	r.t.Helper()
	got := r.callsOf(p.msg.UUID)
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = got[i].grouped == want[i].grouped && got[i].runAlone == want[i].runAlone
	}
	if !ok {
		r.t.Errorf("message %s (%q): handler calls %+v, want (grouped, runAlone) as in %+v", p.msg.UUID, p.msg.Payload, got, want)
	}
	return got
}

var (
	inShared = groupCall{grouped: true}
	inOwn    = groupCall{grouped: false}
)

func TestGroupConcurrentMessagesShareOneTransaction(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	blockers := r.holdSlots()

	// Released together: all of them queue behind the held slots.
	const n = 16
	var msgs []*groupPending
	for range n {
		msgs = append(msgs, r.start(groupMsg(t, "effect")))
	}
	r.waitQueued(msgs...)
	r.releaseBlockers()
	r.finish(append(blockers, msgs...)...)
	r.mustSucceed(append(blockers, msgs...)...)

	txids := r.checkApplied(append(blockers, msgs...))
	shared := txids[msgs[0].msg.UUID]
	for _, p := range msgs {
		calls := r.checkCalls(p, inShared)
		if txids[p.msg.UUID] != shared || (len(calls) == 1 && calls[0].txid != shared) {
			t.Errorf("message %s committed in transaction %d (handler ran in %+v), want the shared %d",
				p.msg.UUID, txids[p.msg.UUID], calls, shared)
		}
	}
	for _, b := range blockers {
		if txids[b.msg.UUID] == shared {
			t.Errorf("blocker %s committed in the followers' transaction %d", b.msg.UUID, shared)
		}
	}
	if distinct := len(slices.Compact(slices.Sorted(maps.Values(txids)))); distinct != outbox.DefaultParallel+1 {
		t.Errorf("effects committed in %d transactions, want %d: %v", distinct, outbox.DefaultParallel+1, txids)
	}
	// One transaction per blocker and one for the n others.
	r.checkCounters(n+outbox.DefaultParallel, 0, outbox.DefaultParallel+1)
	if r.in.Transactions() >= r.in.Handled() {
		t.Errorf("Transactions() = %d, not fewer than Handled() = %d", r.in.Transactions(), r.in.Handled())
	}
}

func TestGroupFailingHandlerFailsOnlyItsOwnMessage(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	blockers := r.holdSlots()
	msgs := r.queue("before1", "before2", "fail", "after1", "after2")
	before, failing, after := msgs[:2], msgs[2], msgs[3:]
	r.releaseBlockers()
	r.finish(append(blockers, msgs...)...)

	if !failing.returned || !errors.Is(failing.err, errGroupBoom) || !strings.Contains(failing.err.Error(), failing.msg.UUID) {
		t.Errorf("failing message: returned %v, err %v, recovered %v; want its own error", failing.returned, failing.err, failing.recovered)
	}
	ok := append(slices.Clone(blockers), before...)
	ok = append(ok, after...)
	r.mustSucceed(ok...)

	// The failing handler ran once, in the shared transaction, after the
	// handlers of the messages queued before it; they ran again, each in a
	// transaction of its own, and so did the messages after it.
	shared := r.checkCalls(failing, inShared)
	txids := r.checkApplied(ok) // not the failing message: no effect, no inbox row
	for _, p := range before {
		calls := r.checkCalls(p, inShared, inOwn)
		if len(calls) == 2 && len(shared) == 1 && (calls[0].txid != shared[0].txid || calls[1].txid != txids[p.msg.UUID]) {
			t.Errorf("message %s: handler ran in transactions %+v, committed in %d; want first in the failing one's %d, then in the committed one",
				p.msg.UUID, calls, txids[p.msg.UUID], shared[0].txid)
		}
	}
	for _, p := range after {
		r.checkCalls(p, inOwn)
	}
	// The shared transaction did not commit: only the blockers' count.
	r.checkCounters(int64(len(ok)), 0, outbox.DefaultParallel)
}

func TestGroupPanicSurfacesInItsOwnGoroutine(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	blockers := r.holdSlots()
	// The first message queued leads the shared transaction: the panic
	// happens in its goroutine, and must come out of the other one's.
	msgs := r.queue("leader", "panic", "after")
	leader, panicking, after := msgs[0], msgs[1], msgs[2]
	r.releaseBlockers()
	r.finish(append(blockers, msgs...)...)

	if panicking.returned || panicking.recovered != (groupPanic{id: panicking.msg.UUID}) {
		t.Errorf("panicking message: returned %v (err %v), recovered %#v; want a panic with %#v",
			panicking.returned, panicking.err, panicking.recovered, groupPanic{id: panicking.msg.UUID})
	}
	ok := append(slices.Clone(blockers), leader, after)
	r.mustSucceed(ok...)
	for _, p := range ok {
		if p.recovered != nil {
			t.Errorf("message %s (%q) recovered %v", p.msg.UUID, p.msg.Payload, p.recovered)
		}
	}

	r.checkCalls(panicking, inShared)
	r.checkCalls(leader, inShared, inOwn)
	r.checkCalls(after, inOwn)
	r.checkApplied(ok) // not the panicking message
	r.checkCounters(int64(len(ok)), 0, outbox.DefaultParallel)
}

func TestGroupRunAlone(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	blockers := r.holdSlots()
	msgs := r.queue("before", "alone", "after")
	before, alone, after := msgs[0], msgs[1], msgs[2]
	r.releaseBlockers()
	r.finish(append(blockers, msgs...)...)
	r.mustSucceed(append(blockers, msgs...)...)

	r.checkCalls(before, inShared, inOwn)
	r.checkCalls(alone, groupCall{grouped: true, runAlone: true}, inOwn)
	r.checkCalls(after, inOwn)
	r.checkApplied(append(blockers, msgs...))
	r.checkCounters(int64(len(blockers)+len(msgs)), 0, outbox.DefaultParallel)
}

func TestGroupRedelivery(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)

	// A redelivery of a committed message, alone.
	first := r.start(groupMsg(t, "effect"))
	r.finish(first)
	r.mustSucceed(first)
	again := r.start(groupMsgID(t, first.msg.UUID, "effect"))
	r.finish(again)
	r.mustSucceed(again)
	r.checkCalls(first, inShared)
	r.checkCounters(1, 1, 2)

	// In a shared transaction: another redelivery of it, and a new message
	// delivered twice at once.
	blockers := r.holdSlots()
	third := r.start(groupMsgID(t, first.msg.UUID, "effect"))
	r.waitQueued(third)
	fresh := r.start(groupMsg(t, "effect"))
	r.waitQueued(fresh)
	twin := r.start(groupMsgID(t, fresh.msg.UUID, "effect"))
	r.waitQueued(twin)
	r.releaseBlockers()
	all := append(slices.Clone(blockers), first, again, third, fresh, twin)
	r.finish(all...)
	r.mustSucceed(all...)

	r.checkCalls(first, inShared) // not again
	r.checkCalls(fresh, inShared) // once for both deliveries
	effects, inbox := r.effects(), r.inbox()
	for _, p := range append(slices.Clone(blockers), first, fresh) {
		if len(effects[p.msg.UUID]) != 1 {
			t.Errorf("message %s (%q): effect applied %d times, want once", p.msg.UUID, p.msg.Payload, len(effects[p.msg.UUID]))
		}
	}
	if len(effects) != len(blockers)+2 || len(inbox) != len(blockers)+2 {
		t.Errorf("effects %v and inbox %v, want %d messages each", effects, inbox, len(blockers)+2)
	}
	if inbox[first.msg.UUID] != 2 || inbox[fresh.msg.UUID] != 1 {
		t.Errorf("inbox duplicates: %d for the message delivered 3 times, %d for the one delivered twice; want 2 and 1",
			inbox[first.msg.UUID], inbox[fresh.msg.UUID])
	}
	// Blockers and the fresh message handled; again, third and twin
	// absorbed. Transactions: first, again, the blockers', the shared one.
	r.checkCounters(int64(len(blockers))+2, 3, int64(len(blockers))+3)
}

// groupItem is what groupBatcher takes of a message.
type groupItem struct{ id, body string }

type groupBatchCall struct {
	grouped bool
	ids     []string
}

// groupBatcher takes the messages whose payload starts with "batch:" and
// applies them with one statement.
type groupBatcher struct {
	mu    sync.Mutex
	calls []groupBatchCall
}

func (b *groupBatcher) Take(msg *message.Message) (any, bool) {
	if body := string(msg.Payload); strings.HasPrefix(body, "batch:") {
		return groupItem{id: msg.UUID, body: body}, true
	}
	return nil, false
}

func (b *groupBatcher) HandleBatch(ctx context.Context, tx pgx.Tx, items []any) error {
	var ids, bodies []string
	for _, item := range items {
		it := item.(groupItem)
		ids, bodies = append(ids, it.id), append(bodies, it.body)
	}
	b.mu.Lock()
	b.calls = append(b.calls, groupBatchCall{grouped: outbox.Grouped(ctx), ids: ids})
	b.mu.Unlock()
	_, err := tx.Exec(ctx, `INSERT INTO group_effects (id, body, txid)
		SELECT id, body, txid_current() FROM unnest($1::text[], $2::text[]) AS m(id, body)`, ids, bodies)
	return err
}

func TestGroupBatchHandler(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	batcher := &groupBatcher{}
	r.in.SetBatchHandler(batcher)
	blockers := r.holdSlots()
	msgs := r.queue("batch:1", "plain1", "batch:2", "plain2", "batch:3")
	taken := []*groupPending{msgs[0], msgs[2], msgs[4]}
	plain := []*groupPending{msgs[1], msgs[3]}
	r.releaseBlockers()
	all := append(slices.Clone(blockers), msgs...)
	r.finish(all...)
	r.mustSucceed(all...)

	var want []string
	for _, p := range taken {
		want = append(want, p.msg.UUID)
		r.checkCalls(p) // never through the Handler
	}
	slices.Sort(want)
	batcher.mu.Lock()
	calls := slices.Clone(batcher.calls)
	batcher.mu.Unlock()
	if len(calls) != 1 || !calls[0].grouped || !slices.Equal(slices.Sorted(slices.Values(calls[0].ids)), want) {
		t.Errorf("HandleBatch calls %+v, want one, grouped, with %v", calls, want)
	}

	txids := r.checkApplied(all)
	shared := txids[msgs[0].msg.UUID]
	for _, p := range plain {
		c := r.checkCalls(p, inShared)
		if len(c) == 1 && c[0].txid != shared {
			t.Errorf("message %s handled in transaction %d, want the batch's %d", p.msg.UUID, c[0].txid, shared)
		}
	}
	for _, p := range msgs {
		if txids[p.msg.UUID] != shared {
			t.Errorf("message %s (%q) committed in transaction %d, want the shared %d", p.msg.UUID, p.msg.Payload, txids[p.msg.UUID], shared)
		}
	}
	r.checkCounters(int64(len(all)), 0, outbox.DefaultParallel+1)
}

func TestGroupMaxBatchOne(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	r.in.SetMaxBatch(1)

	// Every handler waits until all of them are inside their handler at
	// once: only possible if none waits for another's transaction.
	const n = 8
	var msgs []*groupPending
	for i := range n {
		msgs = append(msgs, r.start(groupMsg(t, fmt.Sprintf("block%d", i))))
	}
	timeout := time.After(groupWait)
	for i := range n {
		select {
		case <-r.blocked:
		case <-timeout:
			t.Fatalf("only %d of %d handlers running at once with SetMaxBatch(1)", i, n)
		}
	}
	r.releaseBlockers()
	r.finish(msgs...)
	r.mustSucceed(msgs...)

	txids := r.checkApplied(msgs)
	for _, p := range msgs {
		r.checkCalls(p, inOwn)
	}
	if distinct := len(slices.Compact(slices.Sorted(maps.Values(txids)))); distinct != n {
		t.Errorf("effects committed in %d transactions, want %d: %v", distinct, n, txids)
	}
	// Transactions() counts shared transactions only; with a batch of one
	// every message goes through Handle, which it does not count.
	r.checkCounters(n, 0, 0)
}

// panickingBatcher takes the "batch:" messages and panics applying them.
type panickingBatcher struct{ groupBatcher }

func (b *panickingBatcher) HandleBatch(context.Context, pgx.Tx, []any) error {
	panic("batch boom")
}

// A batch handler that panics fails the shared transaction, not a message:
// every message, the taken ones included, goes again alone through the
// Handler and commits once; no goroutine is left waiting.
func TestGroupBatchHandlerPanics(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	r.in.SetBatchHandler(&panickingBatcher{})
	blockers := r.holdSlots()
	msgs := r.queue("plain1", "batch:x", "plain2")
	r.releaseBlockers()
	all := append(slices.Clone(blockers), msgs...)
	r.finish(all...)
	r.mustSucceed(all...)
	r.checkApplied(all)
	// The batch handler runs first in a shared transaction: none of the
	// Handler's calls was in it.
	for _, p := range msgs {
		r.checkCalls(p, inOwn)
	}
}

// A message waiting for a hung leader's transaction leaves when its own
// context ends (a consumer shutting down, a rebalance), and the group
// carries on: the message behind it still runs. (Before: the follower
// waited on its channel without watching its context, for as long as the
// leader hung.)
func TestGroupFollowerLeavesWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	r := newGroupRig(t)
	blockers := r.holdSlots()
	ctx, cancel := context.WithCancel(t.Context())
	leaving := groupMsg(t, "effect")
	leaving.SetContext(ctx)
	ps := []*groupPending{r.start(leaving)}
	r.waitQueued(ps[0])
	ps = append(ps, r.queue("effect")...)
	cancel()
	select {
	case <-ps[0].done:
	case <-time.After(groupWait):
		t.Fatal("a queued message whose context ended is still waiting for the hung leader")
	}
	if !errors.Is(ps[0].err, context.Canceled) {
		t.Fatalf("the leaving message returned %v, want context.Canceled", ps[0].err)
	}
	r.releaseBlockers()
	r.finish(append(blockers, ps[1])...)
	r.mustSucceed(append(blockers, ps[1])...)
	if got := r.effects()[leaving.UUID]; len(got) != 0 {
		t.Fatalf("the message that left has effects %v", got)
	}
}

// preludeItem is what preludeBatcher takes of a message; its Prelude's
// callback fills txid.
type preludeItem struct {
	groupItem
	txid int64
	read bool
}

// preludeBatcher is a batch handler with a Prelude: it reads the shared
// transaction's id into every item (or, with fail, runs a statement that
// fails), and HandleBatch checks each item had it.
type preludeBatcher struct {
	t    *testing.T
	fail bool

	mu      sync.Mutex
	prelude [][]string // the ids of each Prelude call
	batches [][]string // the ids of each HandleBatch call
}

func (b *preludeBatcher) Take(msg *message.Message) (any, bool) {
	if body := string(msg.Payload); strings.HasPrefix(body, "batch:") {
		return &preludeItem{groupItem: groupItem{id: msg.UUID, body: body}}, true
	}
	return nil, false
}

func (b *preludeBatcher) Prelude(pb *pgx.Batch, items []any) {
	var ids []string
	for _, it := range items {
		ids = append(ids, it.(*preludeItem).id)
	}
	b.mu.Lock()
	b.prelude = append(b.prelude, ids)
	b.mu.Unlock()
	sql := `SELECT txid_current()`
	if b.fail {
		sql = `SELECT 1/0`
	}
	pb.Queue(sql).QueryRow(func(row pgx.Row) error {
		var txid int64
		if err := row.Scan(&txid); err != nil {
			return err
		}
		for _, it := range items {
			it.(*preludeItem).txid, it.(*preludeItem).read = txid, true
		}
		return nil
	})
}

func (b *preludeBatcher) HandleBatch(ctx context.Context, tx pgx.Tx, items []any) error {
	var txid int64
	if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&txid); err != nil {
		return err
	}
	var ids, bodies []string
	for _, item := range items {
		it := item.(*preludeItem)
		if !it.read || it.txid != txid {
			b.t.Errorf("item %s: prelude read %v, transaction %d, want the batch's %d", it.id, it.read, it.txid, txid)
		}
		ids, bodies = append(ids, it.id), append(bodies, it.body)
	}
	b.mu.Lock()
	b.batches = append(b.batches, ids)
	b.mu.Unlock()
	_, err := tx.Exec(ctx, `INSERT INTO group_effects (id, body, txid)
		SELECT id, body, txid_current() FROM unnest($1::text[], $2::text[]) AS m(id, body)`, ids, bodies)
	return err
}

// A batch handler's Prelude runs in the shared transaction, with the claim,
// over every message taken, redeliveries included; HandleBatch gets the
// first deliveries, each item holding what the prelude read. A prelude
// that fails fails the shared transaction, not a message: every message
// goes again alone, through the Handler, and commits once.
func TestGroupBatchPrelude(t *testing.T) {
	t.Parallel()
	for _, fail := range []bool{false, true} {
		t.Run(fmt.Sprintf("fail=%v", fail), func(t *testing.T) {
			t.Parallel()
			r := newGroupRig(t)
			// A message applied before: its redelivery is in the batch.
			again := groupMsg(t, "batch:again")
			if _, err := r.in.Handle(t.Context(), uuid.MustParse(again.UUID), func(context.Context, pgx.Tx) error { return nil }); err != nil {
				t.Fatal(err)
			}
			batcher := &preludeBatcher{t: t, fail: fail}
			r.in.SetBatchHandler(batcher)
			blockers := r.holdSlots()
			msgs := r.queue("batch:1", "plain", "batch:2")
			redelivered := r.start(groupMsgID(t, again.UUID, "batch:again"))
			r.waitQueued(redelivered)
			r.releaseBlockers()
			all := append(slices.Clone(blockers), msgs...)
			r.finish(append(all, redelivered)...)
			r.mustSucceed(append(all, redelivered)...)
			effects := r.effects()
			for _, p := range all {
				if n := len(effects[p.msg.UUID]); n != 1 {
					t.Errorf("message %s (%q): effect applied %d times, want once", p.msg.UUID, p.msg.Payload, n)
				}
			}
			if len(effects) != len(all) {
				t.Errorf("effects of %d messages, want %d (the redelivery applies nothing)", len(effects), len(all))
			}
			if dups := r.inbox()[again.UUID]; dups != 1 {
				t.Errorf("the redelivered message's inbox row counts %d duplicates, want 1", dups)
			}

			batcher.mu.Lock()
			defer batcher.mu.Unlock()
			want := []string{msgs[0].msg.UUID, msgs[2].msg.UUID}
			slices.Sort(want)
			if len(batcher.prelude) != 1 || !slices.Equal(slices.Sorted(slices.Values(batcher.prelude[0])), slices.Sorted(slices.Values(append(slices.Clone(want), again.UUID)))) {
				t.Errorf("Prelude calls %v, want one with %v and the redelivered %s", batcher.prelude, want, again.UUID)
			}
			if fail {
				if len(batcher.batches) != 0 {
					t.Errorf("HandleBatch ran %v after its prelude failed", batcher.batches)
				}
				for _, p := range msgs {
					r.checkCalls(p, inOwn)
				}
				return
			}
			if len(batcher.batches) != 1 || !slices.Equal(slices.Sorted(slices.Values(batcher.batches[0])), want) {
				t.Errorf("HandleBatch calls %v, want one with %v", batcher.batches, want)
			}
			r.checkCalls(msgs[1], inShared)
		})
	}
}
