package deadletter

// The SQL of ops.dead_letters, which this package owns. Every filtering
// query shares filterClause, whose parameters $1…$9 are a Filter's fields
// (filterArgs): an unset field matches everything.
const (
	columns = `id, dlq_topic, dlq_partition, dlq_offset, message_id, consumer_group, origin_topic,
		origin_partition, origin_offset, key, message_type, headers, payload, error, error_pattern,
		fingerprint, attempts, saga_id, step, dead_lettered_at, recorded_at, replays, last_replayed_at`

	filterClause = `($1::bigint[] IS NULL OR id = ANY($1))
		AND ($2 = '' OR consumer_group = $2)
		AND ($3 = '' OR message_type = $3)
		AND ($4 = '' OR fingerprint = $4)
		AND ($5::uuid IS NULL OR saga_id = $5)
		AND ($6::timestamptz IS NULL OR dead_lettered_at < $6)
		AND ($7::bigint = 0 OR id < $7)
		AND ($8::timestamptz IS NULL OR dead_lettered_at >= $8)
		AND ($9 = '' OR message_id = $9)`

	sqlRecord = `INSERT INTO ops.dead_letters (dlq_topic, dlq_partition, dlq_offset, message_id,
		consumer_group, origin_topic, origin_partition, origin_offset, key, message_type, headers,
		payload, error, error_pattern, fingerprint, attempts, saga_id, step, dead_lettered_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
		ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING`

	// Newest first; $10 is the page size.
	sqlList = `SELECT ` + columns + ` FROM ops.dead_letters WHERE ` + filterClause + ` ORDER BY id DESC LIMIT $10`

	sqlCount = `SELECT count(*) FROM ops.dead_letters WHERE ` + filterClause

	sqlCountByConsumer = `SELECT consumer_group, count(*) FROM ops.dead_letters GROUP BY 1 ORDER BY 1`

	sqlGroups = `SELECT fingerprint, consumer_group, message_type, min(error_pattern), count(*),
		count(*) FILTER (WHERE replays > 0), min(dead_lettered_at), max(dead_lettered_at), max(id)
		FROM ops.dead_letters WHERE ` + filterClause + `
		GROUP BY fingerprint, consumer_group, message_type ORDER BY max(dead_lettered_at) DESC LIMIT $10`

	sqlPurge = `DELETE FROM ops.dead_letters WHERE ` + filterClause

	// The dead letters to replay, locked so that two replays of one dead
	// letter take turns (the second gets the next replay number).
	sqlPick = `SELECT ` + columns + ` FROM ops.dead_letters WHERE ` + filterClause + ` ORDER BY id LIMIT $10 FOR UPDATE`

	sqlMarkReplayed = `UPDATE ops.dead_letters SET replays = replays + 1, last_replayed_at = now() WHERE id = $1`

	sqlPurgeOlder = `DELETE FROM ops.dead_letters WHERE dead_lettered_at < now() - $1::float8 * interval '1 second'`
)
