package testenv

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Sends counts what a pool sends to the server: each query and each batch
// is one round trip, once its statements are prepared (pgx prepares a
// statement the first time a connection sends it, in a round trip the
// tracer does not see).
type Sends struct{ n atomic.Int64 }

// N is the count so far.
func (s *Sends) N() int64 { return s.n.Load() }

// TraceQueryStart implements pgx.QueryTracer.
func (s *Sends) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	s.n.Add(1)
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer.
func (s *Sends) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TraceBatchStart implements pgx.BatchTracer.
func (s *Sends) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	s.n.Add(1)
	return ctx
}

// TraceBatchQuery implements pgx.BatchTracer.
func (s *Sends) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

// TraceBatchEnd implements pgx.BatchTracer.
func (s *Sends) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// CountedPool opens a pool of one connection on url whose sends are
// counted, closed when t ends.
func CountedPool(t testing.TB, url string) (*pgxpool.Pool, *Sends) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("testenv: parse %s: %v", url, err)
	}
	cfg.MaxConns = 1
	s := &Sends{}
	cfg.ConnConfig.Tracer = s
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("testenv: open a counted pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, s
}
