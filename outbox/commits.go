package outbox

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// sqlXactID reads the transaction's id, if it has one (it wrote), in the
// round trip of its COMMIT.
const sqlXactID = "select pg_current_xact_id_if_assigned()::text::bigint"

// commitLog knows which transactions this process saw committed on one
// database server, so that the WAL relay can tell that a streamed
// transaction is visible without asking the server.
//
// A COMMIT's answer comes after the server made the transaction visible to
// other sessions, while logical decoding may stream it a moment before.
// An inbox transaction or one BeginWith began (claimTx) therefore knows its
// id (an inbox's from its claim, RETURNING xmin; BeginWith's from sqlXactID
// in its COMMIT's round trip) and, once the COMMIT answered, records it
// here. The relay publishes a batch at once when every transaction of it is
// recorded. Before giving up on an id it waits for the commits that were
// under way when it looked (a ticket per COMMIT sent): one of them may be
// the transaction, its answer not yet read. Only then does it read the
// server's snapshot, as it does for transactions of other processes.
type commitLog struct {
	mu sync.Mutex
	// seen holds the low 32 bits of committed ids (the stream's ids);
	// ring evicts the oldest once it is full.
	seen map[uint32]struct{}
	ring []uint32
	next int
	// issued counts tickets handed out; open holds those not yet ended.
	issued uint64
	open   map[uint64]struct{}
	// changed is closed and replaced whenever a ticket ends.
	changed chan struct{}
}

// commitLogSize is how many committed ids a log remembers: at 1,000
// commits a second, a minute's worth. The relay streams a transaction
// milliseconds after its commit; one it meets after the log forgot it is
// checked against the server's snapshot.
const commitLogSize = 1 << 16

func newCommitLog() *commitLog {
	return &commitLog{
		seen:    make(map[uint32]struct{}, commitLogSize),
		ring:    make([]uint32, 0, commitLogSize),
		open:    map[uint64]struct{}{},
		changed: make(chan struct{}),
	}
}

// commitLogs holds a log per server, by host and port: transaction ids are
// the server's (the cluster's), so only a relay and a writer on the same
// server share one.
var commitLogs = struct {
	sync.Mutex
	m map[string]*commitLog
}{m: map[string]*commitLog{}}

// poolLogs caches each pool's log: a pool's server does not change, and
// pgxpool.Pool.Config copies the whole configuration, too much for every
// transaction.
var poolLogs sync.Map // *pgxpool.Pool → *commitLog

// commitLogOfPool returns the log of the server pool connects to.
func commitLogOfPool(pool *pgxpool.Pool) *commitLog {
	if l, ok := poolLogs.Load(pool); ok {
		return l.(*commitLog)
	}
	l := commitLogOf(pool.Config().ConnConfig)
	poolLogs.Store(pool, l)
	return l
}

// commitLogOf returns the log of the server cfg connects to.
func commitLogOf(cfg *pgx.ConnConfig) *commitLog {
	key := serverKey(cfg)
	commitLogs.Lock()
	defer commitLogs.Unlock()
	l := commitLogs.m[key]
	if l == nil {
		l = newCommitLog()
		commitLogs.m[key] = l
	}
	return l
}

func serverKey(cfg *pgx.ConnConfig) string {
	return cfg.Host + "\x00" + strconv.Itoa(int(cfg.Port))
}

// begin hands out a ticket for a COMMIT about to be sent.
func (l *commitLog) begin() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.issued++
	l.open[l.issued] = struct{}{}
	return l.issued
}

// end closes ticket; when the COMMIT succeeded and the transaction had an
// id (xid > 0), it records the id first.
func (l *commitLog) end(ticket uint64, xid int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if xid > 0 {
		x := uint32(xid)
		if len(l.ring) < cap(l.ring) {
			l.ring = append(l.ring, x)
		} else {
			delete(l.seen, l.ring[l.next])
			l.ring[l.next] = x
			l.next = (l.next + 1) % len(l.ring)
		}
		l.seen[x] = struct{}{}
	}
	delete(l.open, ticket)
	close(l.changed)
	l.changed = make(chan struct{})
}

// await reports whether every transaction of xids was committed by this
// process. It waits, at most for limit (0: not at all), for the COMMITs
// under way when it was called; it returns false as soon as they ended
// without recording all of xids.
func (l *commitLog) await(ctx context.Context, xids []uint32, limit time.Duration) bool {
	var timeout <-chan time.Time
	l.mu.Lock()
	upTo := l.issued
	for {
		all := true
		for _, x := range xids {
			if _, ok := l.seen[x]; !ok {
				all = false
				break
			}
		}
		if all {
			l.mu.Unlock()
			return true
		}
		pending := false
		for t := range l.open {
			if t <= upTo {
				pending = true
				break
			}
		}
		ch := l.changed
		l.mu.Unlock()
		if !pending || limit <= 0 {
			return false
		}
		if timeout == nil {
			t := time.NewTimer(limit)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-ch:
		case <-timeout:
			return false
		case <-ctx.Done():
			return false
		}
		l.mu.Lock()
	}
}
