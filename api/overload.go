package api

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// overloadInterval is how often, at most, overload is logged.
const overloadInterval = 10 * time.Second

// overloadLog counts the requests answered 503 for overload (shed, or out
// of time) and logs a warning with the count at most every
// overloadInterval: under overload, a line per request would add to it.
type overloadLog struct {
	mu   sync.Mutex
	last time.Time
	n    int
}

// note counts one overloaded request, and logs when it is time.
func (o *overloadLog) note(ctx context.Context, log *slog.Logger) {
	o.mu.Lock()
	o.n++
	now := time.Now()
	if now.Sub(o.last) < overloadInterval {
		o.mu.Unlock()
		return
	}
	n, since := o.n, o.last
	o.n, o.last = 0, now
	o.mu.Unlock()
	if since.IsZero() {
		log.WarnContext(ctx, "overloaded: requests answered 503 (shed, or out of time); this line repeats at most every "+overloadInterval.String(), "requests", n)
		return
	}
	log.WarnContext(ctx, "overloaded: requests answered 503 (shed, or out of time)", "requests", n, "since", since)
}
