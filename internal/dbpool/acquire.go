package dbpool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrAcquireTimeout is the cause (context.Cause) of an acquisition that
// waited longer than its context's WithAcquireTimeout for a connection; the
// error the pool returns is context.DeadlineExceeded.
var ErrAcquireTimeout = errors.New("no database connection came free in time")

// acquireKey is the context key of WithAcquireTimeout.
type acquireKey struct{}

// WithAcquireTimeout returns ctx under which every acquisition of a
// connection from a pool set up with BoundAcquire waits at most d for a
// connection (d <= 0: as long as ctx allows). Only the wait is bounded:
// once a connection is acquired, the statements and transactions on it run
// under ctx alone. pgxpool has no acquire timeout of its own, and a
// deadline on ctx would bound the work as well as the wait.
func WithAcquireTimeout(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, acquireKey{}, d)
}

// BoundAcquire makes the pool built from cfg honour WithAcquireTimeout. It
// installs a pgx tracer (pgxpool.AcquireTracer); cfg must not have a tracer
// already. A pool without it ignores WithAcquireTimeout; contexts without
// it acquire as before.
func BoundAcquire(cfg *pgxpool.Config) error {
	if cfg.ConnConfig.Tracer != nil {
		if _, ok := cfg.ConnConfig.Tracer.(acquireBound); ok {
			return nil
		}
		return fmt.Errorf("bound pool acquisitions: the pool has a tracer (%T) already", cfg.ConnConfig.Tracer)
	}
	cfg.ConnConfig.Tracer = acquireBound{}
	return nil
}

// AcquireBounded reports whether pool honours WithAcquireTimeout.
func AcquireBounded(pool *pgxpool.Pool) bool {
	_, ok := pool.Config().ConnConfig.Tracer.(acquireBound)
	return ok
}

// acquireBound puts the deadline of WithAcquireTimeout on the context of
// each acquisition and lifts it once the acquisition ends.
type acquireBound struct{}

type acquireCancelKey struct{}

// TraceAcquireStart implements pgxpool.AcquireTracer: the returned context
// is the one the pool waits under.
func (acquireBound) TraceAcquireStart(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireStartData) context.Context {
	d, ok := ctx.Value(acquireKey{}).(time.Duration)
	if !ok || d <= 0 {
		return ctx
	}
	ctx, cancel := context.WithTimeoutCause(ctx, d, ErrAcquireTimeout)
	return context.WithValue(ctx, acquireCancelKey{}, cancel)
}

// TraceAcquireEnd implements pgxpool.AcquireTracer: it stops the timer of
// TraceAcquireStart (the acquired connection runs under the caller's own
// context, which the deadline never touched).
func (acquireBound) TraceAcquireEnd(ctx context.Context, _ *pgxpool.Pool, _ pgxpool.TraceAcquireEndData) {
	if cancel, ok := ctx.Value(acquireCancelKey{}).(context.CancelFunc); ok {
		cancel()
	}
}

// TraceQueryStart implements pgx.QueryTracer (a pgx tracer must): nothing.
func (acquireBound) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

// TraceQueryEnd implements pgx.QueryTracer: nothing.
func (acquireBound) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
