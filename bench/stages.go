package bench

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Stage is one leg of the confirmed sagas' way, from the saga's history
// (its rows are stamped with their transaction's start time) and the
// event's receipt.
type Stage struct {
	Name    string  `json:"name"`
	Latency Latency `json:"latency"`
}

// stageNames name the legs: each step's leg is the relay publishing its
// command, Kafka, the participant's transaction, the relay publishing the
// reply, Kafka, until the orchestrator's transaction handling the reply
// starts; the last leg is that transaction, the relay publishing
// OrderConfirmed and Kafka delivering it to the bench.
var stageNames = []string{
	"placed → inventory answered",
	"→ payment answered",
	"→ shipping answered",
	"→ OrderConfirmed received",
}

// stages measures the legs of the confirmed sagas. In API mode the last leg
// compares this machine's clock with the database server's.
func stages(ctx context.Context, pool *pgxpool.Pool, confirmed map[uuid.UUID]time.Time) ([]Stage, error) {
	if len(confirmed) == 0 {
		return nil, nil
	}
	ids := slices.Collect(maps.Keys(confirmed))
	rows, err := pool.Query(ctx, `SELECT saga_id,
			min(at) FILTER (WHERE event = 'started'),
			min(at) FILTER (WHERE step = 'inventory' AND kind = 'action' AND event = 'succeeded'),
			min(at) FILTER (WHERE step = 'payment' AND kind = 'action' AND event = 'succeeded'),
			min(at) FILTER (WHERE step = 'shipping' AND kind = 'action' AND event = 'succeeded')
		FROM saga.history WHERE saga_id = ANY($1::uuid[]) GROUP BY saga_id`, ids)
	if err != nil {
		return nil, fmt.Errorf("read the sagas' history: %w", err)
	}
	defer rows.Close()
	hs := make([]Histogram, len(stageNames))
	for rows.Next() {
		var id uuid.UUID
		var at [4]*time.Time
		if err := rows.Scan(&id, &at[0], &at[1], &at[2], &at[3]); err != nil {
			return nil, fmt.Errorf("read the sagas' history: %w", err)
		}
		if at[0] == nil || at[1] == nil || at[2] == nil || at[3] == nil {
			continue
		}
		for i := range 3 {
			hs[i].Record(at[i+1].Sub(*at[i]))
		}
		hs[3].Record(confirmed[id].Sub(*at[3]))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the sagas' history: %w", err)
	}
	out := make([]Stage, len(stageNames))
	for i, name := range stageNames {
		out[i] = Stage{Name: name, Latency: hs[i].Summary()}
	}
	return out, nil
}
