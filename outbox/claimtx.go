package outbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// claimTx is the transaction an inbox runs its messages in. Its BEGIN goes
// to the server in one round trip with the claim, the transaction's first
// statement (beginClaim), instead of in a round trip of its own as
// pgxpool.Pool.Begin sends it: one round trip less per message transaction,
// of the five a participant's or the orchestrator's takes. The rest of
// pgx.Tx runs on the connection, which goes back to the pool at Commit or
// Rollback.
type claimTx struct {
	conn *pgxpool.Conn
	done bool
}

var _ pgx.Tx = (*claimTx)(nil)

// errNestedTx is returned by claimTx.Begin: no inbox handler opens a
// savepoint.
var errNestedTx = errors.New("an inbox transaction does not nest transactions")

// beginClaim acquires a connection, begins a transaction and runs the
// claim query in it, all in one round trip, and hands the claim's rows to
// scan. On error the transaction is rolled back and the connection
// released.
func beginClaim(ctx context.Context, pool *pgxpool.Pool, scan func(pgx.Rows) error, sql string, args ...any) (*claimTx, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection: %w", err)
	}
	tx := &claimTx{conn: conn}
	var b pgx.Batch
	b.Queue("begin")
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		tx.release(ctx)
		return nil, fmt.Errorf("begin: %w", err)
	}
	rows, _ := br.Query()
	err = scan(rows)
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

// Rollback rolls back and releases the connection; after Commit or
// Rollback it does nothing and returns pgx.ErrTxClosed.
func (t *claimTx) Rollback(ctx context.Context) error {
	if t.done {
		return pgx.ErrTxClosed
	}
	_, err := t.conn.Exec(ctx, "rollback")
	t.release(ctx)
	return err
}

func (t *claimTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t *claimTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.conn.SendBatch(ctx, b)
}

// LargeObjects is not supported: no inbox handler uses large objects.
func (t *claimTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (t *claimTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Conn().Prepare(ctx, name, sql)
}

func (t *claimTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.conn.Exec(ctx, sql, args...)
}

func (t *claimTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.conn.Query(ctx, sql, args...)
}

func (t *claimTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t *claimTx) Conn() *pgx.Conn { return t.conn.Conn() }
