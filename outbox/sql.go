package outbox

import (
	"fmt"

	"github.com/jackc/pgx/v5"
)

// queries holds the SQL of one service schema's outbox and inbox. Only the
// schema identifier is formatted in (sanitised by pgx); every value is a
// bind parameter.
type queries struct {
	schema string

	// insert writes messages in order. It first takes a transaction-scoped
	// advisory lock per distinct key (in key order, so two writers cannot
	// deadlock on one statement): two transactions that write the same key
	// then commit in the order of their seq numbers, which is the order the
	// relay publishes in.
	insert string
	// insertOne is insert for one message ($1 … $5 its fields, $6 the key
	// lock's prefix): the lock, then the row, without the arrays, their
	// unnest and the sort, which cost PostgreSQL about twice the time of
	// the insert itself (pgbench, one client, prepared). Most writes are
	// of one message: a command, a reply, an event.
	insertOne string
	// fetch reads the oldest rows.
	fetch string
	// fetchUpTo reads the oldest rows whose seq is at most $2.
	fetchUpTo string
	// maxSeq is the highest seq in the table (0 when empty).
	maxSeq string
	// remove deletes published rows.
	remove string
	// removeSome deletes published rows and returns the seq of each it found.
	removeSome string
	// backlog counts rows and the age of the oldest.
	backlog string
	// park moves the rows $1 (seqs) to the parked table with the errors $2.
	park string
	// listParked reads up to $1 parked rows, oldest first.
	listParked string
	// countParked counts the parked rows.
	countParked string
	// retryParked moves the parked rows $1 (every one when empty) back into
	// the outbox in their order; discardParked deletes them.
	retryParked, discardParked string
	// oldest is the age in seconds of the first row in seq order (0 when
	// empty): an index lookup, cheap enough to ask every second.
	oldest string

	// inboxClaim records a message for a consumer. It returns 0 duplicates
	// for the first delivery and the number of earlier deliveries for a
	// redelivery; a concurrent delivery waits on the row lock of the first.
	// It also returns the row's xmin: the claiming transaction's id (the
	// claim inserts or updates the row), for the commit log.
	inboxClaim string
	// inboxClaimMany is inboxClaim for the ids $2 (distinct, in order): it
	// returns each id with its count of earlier deliveries.
	inboxClaimMany string
	// inboxPurge deletes up to $2 processed rows received before $1.
	inboxPurge string
	// duplicates sums the redeliveries the inbox absorbed.
	duplicates string
}

func newQueries(schema string) queries {
	s := pgx.Identifier{schema}.Sanitize()
	return queries{
		schema: schema,
		insert: fmt.Sprintf(`WITH locks AS (
	SELECT pg_advisory_xact_lock(hashtextextended($6 || k, 0))
	FROM (SELECT DISTINCT k FROM unnest($3::text[]) AS k ORDER BY k) AS keys
)
INSERT INTO %s.outbox (id, topic, key, payload, headers)
SELECT m.id, m.topic, m.key, m.payload, m.headers
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::jsonb[]) WITH ORDINALITY AS m(id, topic, key, payload, headers, ord)
WHERE (SELECT count(*) FROM locks) >= 0
ORDER BY m.ord`, s),
		insertOne: fmt.Sprintf(`INSERT INTO %s.outbox (id, topic, key, payload, headers)
SELECT $1::uuid, $2::text, $3::text, $4::bytea, $5::jsonb
FROM (SELECT pg_advisory_xact_lock(hashtextextended($6 || $3::text, 0))) AS lock`, s),
		fetch:      fmt.Sprintf(`SELECT seq, id, topic, key, payload, headers FROM %s.outbox ORDER BY seq LIMIT $1`, s),
		fetchUpTo:  fmt.Sprintf(`SELECT seq, id, topic, key, payload, headers FROM %s.outbox WHERE seq <= $2 ORDER BY seq LIMIT $1`, s),
		maxSeq:     fmt.Sprintf(`SELECT COALESCE(max(seq), 0) FROM %s.outbox`, s),
		remove:     fmt.Sprintf(`DELETE FROM %s.outbox WHERE seq = ANY($1::bigint[])`, s),
		removeSome: fmt.Sprintf(`DELETE FROM %s.outbox WHERE seq = ANY($1::bigint[]) RETURNING seq`, s),
		backlog:    fmt.Sprintf(`SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM %s.outbox`, s),
		park: fmt.Sprintf(`WITH moved AS (
	DELETE FROM %[1]s.outbox o USING unnest($1::bigint[], $2::text[]) AS p(seq, err)
	WHERE o.seq = p.seq
	RETURNING o.seq, o.id, o.topic, o.key, o.payload, o.headers, o.created_at, p.err
)
INSERT INTO %[1]s.outbox_parked (id, topic, key, payload, headers, created_at, error)
SELECT id, topic, key, payload, headers, created_at, err FROM moved ORDER BY seq`, s),
		listParked: fmt.Sprintf(`SELECT seq, id, topic, key, length(payload), headers, created_at, parked_at, error
FROM %s.outbox_parked ORDER BY seq LIMIT $1`, s),
		countParked: fmt.Sprintf(`SELECT count(*) FROM %s.outbox_parked`, s),
		retryParked: fmt.Sprintf(`WITH back AS (
	DELETE FROM %[1]s.outbox_parked WHERE COALESCE(cardinality($1::bigint[]), 0) = 0 OR seq = ANY($1)
	RETURNING seq, id, topic, key, payload, headers
)
INSERT INTO %[1]s.outbox (id, topic, key, payload, headers)
SELECT id, topic, key, payload, headers FROM back ORDER BY seq`, s),
		discardParked: fmt.Sprintf(`DELETE FROM %s.outbox_parked WHERE COALESCE(cardinality($1::bigint[]), 0) = 0 OR seq = ANY($1)`, s),
		oldest:        fmt.Sprintf(`SELECT COALESCE(EXTRACT(EPOCH FROM now() - (SELECT created_at FROM %s.outbox ORDER BY seq LIMIT 1)), 0)::float8`, s),
		inboxClaim: fmt.Sprintf(`INSERT INTO %s.inbox AS i (consumer, message_id) VALUES ($1, $2)
ON CONFLICT (consumer, message_id) DO UPDATE SET duplicates = i.duplicates + 1
RETURNING duplicates, i.xmin`, s),
		inboxClaimMany: fmt.Sprintf(`INSERT INTO %s.inbox AS i (consumer, message_id)
SELECT $1, id FROM unnest($2::uuid[]) WITH ORDINALITY AS m(id, ord) ORDER BY m.ord
ON CONFLICT (consumer, message_id) DO UPDATE SET duplicates = i.duplicates + 1
RETURNING message_id, duplicates, i.xmin`, s),
		inboxPurge: fmt.Sprintf(`DELETE FROM %[1]s.inbox WHERE ctid = ANY(ARRAY(
	SELECT ctid FROM %[1]s.inbox WHERE received_at < $1 LIMIT $2))`, s),
		duplicates: fmt.Sprintf(`SELECT COALESCE(sum(duplicates), 0)::bigint FROM %s.inbox`, s),
	}
}

// slotsQuery lists the relays' slots of the current database with their lag.
const slotsQuery = `SELECT slot_name, active,
	COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, COALESCE(wal_status, '')
FROM pg_replication_slots
WHERE database = current_database() AND slot_name LIKE 'sagaflow\_%' ORDER BY slot_name`

// walSQL is the SQL of the WAL relay's publication and replication slot,
// both named after the slot; the list of tables is formatted into pubCreate
// as sanitised identifiers.
type walSQL struct {
	pubExists, pubCreate, slotStatus, slotDrop, slotCreate string
}

func walQueries(slot string) walSQL {
	return walSQL{
		pubExists: `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`,
		// Only inserts: the relay's deletes need not be streamed.
		pubCreate:  "CREATE PUBLICATION " + pgx.Identifier{slot}.Sanitize() + " FOR TABLE %s WITH (publish = 'insert')",
		slotStatus: `SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1`,
		slotDrop:   `SELECT pg_drop_replication_slot($1)`,
		slotCreate: `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`,
	}
}
