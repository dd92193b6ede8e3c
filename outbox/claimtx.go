package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// claimTx is the transaction an inbox runs its messages in, and the one
// BeginWith begins. Its BEGIN goes to the server in one round trip with the
// claim, the transaction's first statement (beginClaim), instead of in a
// round trip of its own as pgxpool.Pool.Begin sends it: one round trip less
// per message transaction, of the five a participant's or the
// orchestrator's takes. The rest of pgx.Tx runs on the connection, which
// goes back to the pool at Commit or Rollback.
//
// Writes a handler leaves for the end (SendAtCommit) go with the COMMIT, in
// one round trip: another one less.
type claimTx struct {
	conn *pgxpool.Conn
	done bool
	// log records the transaction's id once its COMMIT answered, for the
	// WAL relay (see commitLog). xid is the id when the claim returned it
	// (an inbox's claim writes); 0: the COMMIT's round trip reads it.
	log *commitLog
	xid uint32
	// atCommit holds the statements SendAtCommit took, in order; any other
	// statement sends them first.
	atCommit []*pgx.QueuedQuery
	// failed is the error of held statements sent before another
	// statement: Commit rolls back and returns it.
	failed error
}

// SendAtCommit takes the statements queued on b to send them with tx's
// COMMIT, in one round trip, when tx is an inbox transaction (the tx an
// Inbox hands its handlers, or one BeginWith began) and no statement of b
// has a callback (a callback could reject a result after the COMMIT went).
// It reports whether it took them; b is then empty. An error of one of them is then Commit's,
// and the transaction does not commit. Any other use of tx first sends
// them, so statements keep their order. A caller whose tx is not an inbox
// transaction, or whose b has callbacks, sends b itself.
func SendAtCommit(tx pgx.Tx, b *pgx.Batch) bool {
	t, ok := tx.(*claimTx)
	if !ok || t.done {
		return false
	}
	for _, q := range b.QueuedQueries {
		if q.Fn != nil {
			return false
		}
	}
	t.atCommit = append(t.atCommit, b.QueuedQueries...)
	*b = pgx.Batch{}
	return true
}

// flush sends the statements SendAtCommit took, before another statement.
func (t *claimTx) flush(ctx context.Context) error {
	if len(t.atCommit) == 0 {
		return nil
	}
	b := &pgx.Batch{QueuedQueries: t.atCommit}
	t.atCommit = nil
	if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
		t.failed = fmt.Errorf("write held for the commit: %w", err)
		return t.failed
	}
	return nil
}

// flushOrKeep is flush for the methods that return no error of their own:
// a failure leaves the transaction aborted, so the statement that follows
// fails (SQLSTATE 25P02), and Commit returns the failure itself.
func (t *claimTx) flushOrKeep(ctx context.Context) { _ = t.flush(ctx) }

var _ pgx.Tx = (*claimTx)(nil)

// errNestedTx is returned by claimTx.Begin: no inbox handler opens a
// savepoint.
var errNestedTx = errors.New("an inbox transaction does not nest transactions")

// BeginWith acquires a connection of pool and begins a transaction whose
// first statement is sql, sent in one round trip with the BEGIN; scan reads
// its rows. Writes given to SendAtCommit on the transaction go with its
// COMMIT, in one round trip too: a transaction of one statement, then
// writes, takes two round trips instead of four. On error nothing is left
// open and the connection is back in the pool.
func BeginWith(ctx context.Context, pool *pgxpool.Pool, scan func(pgx.Rows) error, sql string, args ...any) (pgx.Tx, error) {
	tx, err := beginClaim(ctx, pool, scan, nil, sql, args...)
	if err != nil {
		return nil, err
	}
	return tx, nil
}

// beginClaim acquires a connection, begins a transaction, runs the claim
// query in it and then the statements of then (nil: none), all in one
// round trip, and hands the claim's rows to scan; then's callbacks read
// their results. On error the transaction is rolled back and the
// connection released.
func beginClaim(ctx context.Context, pool *pgxpool.Pool, scan func(pgx.Rows) error, then *pgx.Batch, sql string, args ...any) (*claimTx, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection: %w", err)
	}
	tx := &claimTx{conn: conn, log: commitLogOfPool(pool)}
	var b pgx.Batch
	b.Queue("begin")
	b.Queue(sql, args...)
	if then != nil {
		b.QueuedQueries = append(b.QueuedQueries, then.QueuedQueries...)
	}
	br := conn.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		tx.release(ctx)
		return nil, fmt.Errorf("begin: %w", err)
	}
	rows, _ := br.Query()
	err = scan(rows)
	// Close reads the rest, running then's callbacks.
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// release gives the connection back. One left inside a transaction (its
// COMMIT or ROLLBACK failed) is closed by the pool rather than reused.
func (t *claimTx) release(ctx context.Context) {
	if t.done {
		return
	}
	t.done = true
	if t.conn.Conn().PgConn().TxStatus() != 'I' {
		// The pool would close it anyway; close it now so that the
		// server ends the transaction at once.
		_ = t.conn.Conn().Close(context.WithoutCancel(ctx))
	}
	t.conn.Release()
}

// Begin is not supported: see errNestedTx.
func (t *claimTx) Begin(context.Context) (pgx.Tx, error) { return nil, errNestedTx }

// Commit commits and releases the connection. A transaction that had
// failed is rolled back by the server's COMMIT: that is
// pgx.ErrTxCommitRollback, as pgx's own transactions report it.
func (t *claimTx) Commit(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	if t.failed != nil {
		_ = t.Rollback(ctx)
		return t.failed
	}
	if t.conn.Conn().PgConn().TxStatus() == 'E' {
		// A statement failed already: the held ones would fail too, and
		// the COMMIT turns into the rollback that reports it.
		t.atCommit = nil
		tag, err := t.conn.Exec(ctx, "commit")
		t.release(ctx)
		if err != nil {
			return err
		}
		if tag.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	}
	return t.commitWith(ctx)
}

// commitWith sends the statements SendAtCommit took, the read of the
// transaction's id (unless the claim returned it) and the COMMIT in one
// round trip. A statement that fails
// makes the server skip the rest, the COMMIT included: the transaction is
// rolled back and the error returned. A transaction that committed is
// recorded in the commit log (when it wrote, so has an id).
func (t *claimTx) commitWith(ctx context.Context) error {
	n := len(t.atCommit)
	b := &pgx.Batch{QueuedQueries: t.atCommit}
	if t.xid == 0 {
		b.Queue(sqlXactID)
	}
	b.Queue("commit")
	t.atCommit = nil
	ticket := t.log.begin()
	br := t.conn.SendBatch(ctx, b)
	var err error
	for i := 0; i < n && err == nil; i++ {
		if _, err = br.Exec(); err != nil {
			err = fmt.Errorf("write held for the commit: %w", err)
		}
	}
	xid := int64(t.xid)
	if err == nil && t.xid == 0 {
		var read *int64
		if err = br.QueryRow().Scan(&read); err == nil && read != nil {
			xid = *read
		}
	}
	var tag pgconn.CommandTag
	if err == nil {
		tag, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil && tag.String() == "ROLLBACK" {
		err = pgx.ErrTxCommitRollback
	}
	if err != nil {
		xid = 0
	}
	t.log.end(ticket, xid)
	if err != nil && t.conn.Conn().PgConn().TxStatus() != 'I' && !t.conn.Conn().IsClosed() {
		_, _ = t.conn.Exec(context.WithoutCancel(ctx), "rollback")
	}
	t.release(ctx)
	return err
}

// Rollback rolls back and releases the connection; after Commit or
// Rollback it does nothing and returns pgx.ErrTxClosed.
func (t *claimTx) Rollback(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	t.atCommit = nil
	_, err := t.conn.Exec(ctx, "rollback")
	t.release(ctx)
	return err
}

func (t *claimTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.flush(ctx); err != nil {
		return 0, err
	}
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t *claimTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	t.flushOrKeep(ctx)
	return t.conn.SendBatch(ctx, b)
}

// LargeObjects is not supported: no inbox handler uses large objects.
func (t *claimTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (t *claimTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Conn().Prepare(ctx, name, sql)
}

func (t *claimTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.flush(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t *claimTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	t.flushOrKeep(ctx)
	return t.conn.Query(ctx, sql, args...)
}

func (t *claimTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	t.flushOrKeep(ctx)
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t *claimTx) Conn() *pgx.Conn { return t.conn.Conn() }
