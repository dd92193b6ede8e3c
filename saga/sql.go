package saga

// The engine's SQL, all in one place. Tables: saga.instances, saga.history
// (migrations/002_saga_orders_steps.sql).
const (
	// sqlInsertInstance takes the step timeout ($4) and the saga's
	// timeout ($5) in microseconds: deadlines are the database's now() plus
	// them, so the host's clock never enters a comparison with now().
	sqlInsertInstance = `INSERT INTO saga.instances (id, type, state, step, attempt, data, step_deadline, deadline, trace_parent)
VALUES ($1, $2, 'running', 0, 1, $3, now() + $4::bigint * interval '1 microsecond', now() + $5::bigint * interval '1 microsecond', $6)`

	// sqlLockInstance locks and reads the saga $1. A transaction that
	// locks several locks them one by one, in id order (queueLocks).
	sqlLockInstance = `SELECT id, type, state, step, attempt, completed, data, COALESCE(reason, ''), step_deadline, deadline, version,
	created_at, updated_at, ended_at
FROM saga.instances WHERE id = $1 FOR UPDATE`

	// sqlUpdateInstance sets the step deadline to now() plus $7
	// microseconds, or none when $7 is NULL.
	sqlUpdateInstance = `UPDATE saga.instances
SET state = $2, step = $3, attempt = $4, completed = $5, reason = NULLIF($6, ''),
	step_deadline = now() + $7::bigint * interval '1 microsecond',
	version = version + 1, updated_at = now(),
	ended_at = CASE WHEN $2 IN ('completed', 'compensated', 'failed') THEN now() ELSE NULL END
WHERE id = $1`

	// sqlInsertHistoryMany inserts history lines in the order given.
	sqlInsertHistoryMany = `INSERT INTO saga.history (saga_id, step, kind, attempt, event, reason, message_id, participant)
SELECT h.id, h.step, h.kind, h.attempt, h.event, NULLIF(h.reason, ''), h.message_id, NULLIF(h.participant, '')
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::uuid[], $8::text[])
	WITH ORDINALITY AS h(id, step, kind, attempt, event, reason, message_id, participant, ord)
ORDER BY h.ord`

	// sqlOverdue claims overdue sagas of the types $1 (the engine's own:
	// another orchestrator's or a retired type's are not ours to lock),
	// with the database's verdict on the saga's own deadline. SKIP LOCKED
	// lets any number of orchestrators sweep at once, each taking
	// different sagas, and never waits on a saga whose reply is being
	// handled.
	sqlOverdue = `SELECT id, type, state, step, attempt, completed, data, COALESCE(reason, ''), step_deadline, deadline, version,
	created_at, updated_at, ended_at, deadline <= now(), trace_parent
FROM saga.instances
WHERE state IN ('running', 'compensating') AND step_deadline <= now() AND type = ANY($1)
ORDER BY step_deadline
LIMIT $2
FOR UPDATE SKIP LOCKED`

	sqlTraceParent = `SELECT trace_parent FROM saga.instances WHERE id = $1`

	sqlGetInstance = `SELECT id, type, state, step, attempt, completed, data, COALESCE(reason, ''), step_deadline, deadline, version,
	created_at, updated_at, ended_at
FROM saga.instances WHERE id = $1`

	sqlHistory = `SELECT seq, step, kind, attempt, event, COALESCE(reason, ''), message_id, COALESCE(participant, ''), at
FROM saga.history WHERE saga_id = $1 ORDER BY seq`

	// sqlSearch pages through sagas newest first (ids below $7) with the
	// operator's filters; an empty or zero one matches everything.
	sqlSearch = `SELECT id, type, state, step, attempt, completed, data, COALESCE(reason, ''), step_deadline, deadline, version,
	created_at, updated_at, ended_at
FROM saga.instances
WHERE ($1 = '' OR state = $1) AND ($2 = '' OR type = $2) AND ($3::int IS NULL OR step = $3)
	AND ($4::timestamptz IS NULL OR created_at < $4) AND ($5 = '' OR reason ILIKE '%' || $5 || '%')
	AND ($6::uuid[] IS NULL OR id = ANY($6)) AND ($7::uuid IS NULL OR id < $7)
ORDER BY id DESC
LIMIT $8`

	// sqlSearchOldest is sqlSearch oldest first (ids above $7).
	sqlSearchOldest = `SELECT id, type, state, step, attempt, completed, data, COALESCE(reason, ''), step_deadline, deadline, version,
	created_at, updated_at, ended_at
FROM saga.instances
WHERE ($1 = '' OR state = $1) AND ($2 = '' OR type = $2) AND ($3::int IS NULL OR step = $3)
	AND ($4::timestamptz IS NULL OR created_at < $4) AND ($5 = '' OR reason ILIKE '%' || $5 || '%')
	AND ($6::uuid[] IS NULL OR id = ANY($6)) AND ($7::uuid IS NULL OR id > $7)
ORDER BY id
LIMIT $8`

	// sqlHistoryPage is a page of a saga's history after seq $2.
	sqlHistoryPage = `SELECT seq, step, kind, attempt, event, COALESCE(reason, ''), message_id, COALESCE(participant, ''), at
FROM saga.history WHERE saga_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`

	sqlHistoryCount = `SELECT count(*) FROM saga.history WHERE saga_id = $1`

	// sqlThroughput: sagas ended per minute since $1, with the p50 and p99
	// of their durations in milliseconds.
	sqlThroughput = `SELECT date_trunc('minute', ended_at) AS minute, count(*),
	count(*) FILTER (WHERE state = 'completed'),
	percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - created_at) * 1000),
	percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ended_at - created_at) * 1000)
FROM saga.instances WHERE ended_at >= $1
GROUP BY minute ORDER BY minute`

	sqlCountByState = `SELECT state, count(*) FROM saga.instances GROUP BY state`

	// sqlCountInFlight counts the sagas the sweeper's partial index holds.
	sqlCountInFlight = `SELECT count(*) FROM saga.instances WHERE state IN ('running', 'compensating')`
)
