package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultInboxRetention is how long an inbox remembers a message id unless
// told otherwise: it must outlast the retention plus segment time of every
// topic read through an inbox (kafkax.CheckInboxRetention).
const DefaultInboxRetention = 7 * 24 * time.Hour

// RetentionConfig configures Retention.
type RetentionConfig struct {
	Pool *pgxpool.Pool
	// Schemas whose inbox tables are purged.
	Schemas []string
	// Window is how long an inbox row is kept (default 7 days). A message
	// redelivered after its row was purged would be applied again, so the
	// window must exceed the longest redelivery delay: Kafka's retention.
	Window time.Duration
	// BatchSize is the most rows one statement deletes (default 1000), so no
	// statement holds its locks for long.
	BatchSize int
	// Interval between purge rounds (default 1 minute).
	Interval time.Duration
	Logger   *slog.Logger
}

// Retention purges old inbox rows. The relay deletes outbox rows once they
// are published, so outboxes keep nothing to purge.
type Retention struct {
	cfg RetentionConfig
}

// NewRetention returns a Retention with defaults filled in.
func NewRetention(cfg RetentionConfig) *Retention {
	if cfg.Window <= 0 {
		cfg.Window = DefaultInboxRetention
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Retention{cfg: cfg}
}

// PurgeOnce deletes every inbox row older than the window, a batch per
// statement, and returns how many it deleted.
func (r *Retention) PurgeOnce(ctx context.Context) (int64, error) {
	cutoff := time.Now().Add(-r.cfg.Window)
	var total int64
	for _, schema := range r.cfg.Schemas {
		q := newQueries(schema)
		for {
			tag, err := r.cfg.Pool.Exec(ctx, q.inboxPurge, cutoff, r.cfg.BatchSize)
			if err != nil {
				return total, fmt.Errorf("purge %s inbox rows older than %s: %w", schema, r.cfg.Window, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < int64(r.cfg.BatchSize) {
				break
			}
		}
	}
	return total, nil
}

// Run purges every Interval until ctx ends.
func (r *Retention) Run(ctx context.Context) error {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if n, err := r.PurgeOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			r.cfg.Logger.Warn("inbox retention failed; will retry", "err", err)
		} else if n > 0 {
			r.cfg.Logger.Info("inbox retention purged rows", "rows", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
