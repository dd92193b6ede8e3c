package outbox

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Mode says how a Relay learns which rows were committed.
type Mode string

// The relay modes.
const (
	// ModeAuto streams from the WAL where the database allows it
	// (wal_level=logical and a role with REPLICATION), and polls elsewhere.
	ModeAuto Mode = "auto"
	// ModeWAL streams committed outbox inserts from a logical replication
	// slot; the relay runs no transaction of its own per batch.
	ModeWAL Mode = "wal"
	// ModePoll reads the outbox tables in a loop.
	ModePoll Mode = "poll"
)

// ParseMode parses a --outbox flag value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeWAL, ModePoll:
		return m, nil
	}
	return "", fmt.Errorf("unknown outbox relay mode %q (auto, wal or poll)", s)
}

// errSlotBusy means another relay streams from the slot: this one stands by.
var errSlotBusy = errors.New("replication slot is in use by another relay")

// walTx is one committed transaction's outbox rows, its transaction id and
// the WAL position just past its commit.
type walTx struct {
	rows []row
	xid  uint32
	end  pglogrepl.LSN
}

// walState is what the WAL relay keeps across its reconnects.
type walState struct {
	// slot (and publication) name.
	slot string
	// streamed is set once this relay streamed from the slot: a slot that
	// then disappears was lost, not never created.
	streamed bool
	// slotsRecreated counts lost slots this relay created again.
	slotsRecreated atomic.Int64
	del            *deleter
}

// resolveMode decides between WAL and polling for ModeAuto, and checks that
// ModeWAL can work.
func (r *Relay) resolveMode(ctx context.Context) (Mode, error) {
	if r.cfg.Mode == ModePoll {
		return ModePoll, nil
	}
	var walLevel string
	var canReplicate bool
	err := r.cfg.Pool.QueryRow(ctx, `SELECT current_setting('wal_level'),
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&walLevel, &canReplicate)
	if err != nil {
		return "", fmt.Errorf("outbox relay: read wal_level: %w", err)
	}
	why := ""
	switch {
	case walLevel != "logical":
		why = fmt.Sprintf("wal_level is %s, not logical", walLevel)
	case !canReplicate:
		why = "the database role has no REPLICATION attribute"
	}
	if why == "" {
		return ModeWAL, nil
	}
	if r.cfg.Mode == ModeWAL {
		return "", fmt.Errorf("outbox relay cannot stream from the WAL: %s (set wal_level=logical and ALTER ROLE … REPLICATION, or run with --outbox poll)", why)
	}
	r.log.Warn("outbox relay polls its tables: streaming from the WAL is unavailable", "reason", why)
	return ModePoll, nil
}

// slotName is the replication slot (and publication) the relay uses unless
// configured: unique per database and set of outboxes, since slot names are
// global to the PostgreSQL cluster.
func (r *Relay) slotName(ctx context.Context) (string, error) {
	if r.cfg.Slot != "" {
		return r.cfg.Slot, nil
	}
	var db string
	if err := r.cfg.Pool.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		return "", fmt.Errorf("outbox relay: read database name: %w", err)
	}
	return DefaultSlotName(db, r.schemas()), nil
}

var slotChars = regexp.MustCompile(`[^a-z0-9_]+`)

// DefaultSlotName is the slot a relay of the given outbox schemas uses in
// database db: sagaflow_<db>, with the schemas appended when they are not
// the full set of Sagaflow's services. Names longer than PostgreSQL's 63
// bytes are cut and end in a hash of the whole.
func DefaultSlotName(db string, schemas []string) string {
	name := "sagaflow_" + db
	if !slices.Equal(sortedCopy(schemas), sortedCopy(ServiceSchemas)) {
		name += "_" + strings.Join(schemas, "_")
	}
	name = slotChars.ReplaceAllString(strings.ToLower(name), "_")
	if len(name) > 63 {
		h := fnv.New32a()
		h.Write([]byte(name))
		name = fmt.Sprintf("%s_%08x", name[:54], h.Sum32())
	}
	return name
}

// ServiceSchemas are the schemas of Sagaflow's services, each with an outbox.
var ServiceSchemas = []string{"orders", "saga", "inventory", "payment", "shipping"}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func (r *Relay) schemas() []string {
	out := make([]string, len(r.cfg.Outboxes))
	for i, o := range r.cfg.Outboxes {
		out[i] = o.Schema()
	}
	return out
}

// Slot is the state of a relay's replication slot, as the database sees it.
type Slot struct {
	Name string
	// Active is whether a relay streams from it now.
	Active bool
	// LagBytes is how much WAL the slot holds back: from its confirmed
	// position to the database's current WAL end.
	LagBytes int64
	// WALStatus is pg_replication_slots.wal_status ("reserved", "extended",
	// "unreserved" or "lost").
	WALStatus string
}

// Slots reads the Sagaflow relays' replication slots of db's database.
func Slots(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]Slot, error) {
	rows, err := db.Query(ctx, slotsQuery)
	if err != nil {
		return nil, fmt.Errorf("read replication slots: %w", err)
	}
	slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Slot, error) {
		var s Slot
		err := r.Scan(&s.Name, &s.Active, &s.LagBytes, &s.WALStatus)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("read replication slots: %w", err)
	}
	return slots, nil
}

// runWAL is the WAL relay's life: take the slot, drain what the tables hold,
// stream; on failure start over after a backoff; stand by while another
// relay holds the slot.
func (r *Relay) runWAL(ctx context.Context) error {
	slot, err := r.slotName(ctx)
	if err != nil {
		return err
	}
	ws := r.wal
	ws.slot = slot
	delCtx, stopDeleter := context.WithCancel(context.WithoutCancel(ctx))
	delDone := make(chan struct{})
	go func() { defer close(delDone); ws.del.run(delCtx) }()
	defer func() { stopDeleter(); <-delDone }()

	log := r.log.With("slot", slot)
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := r.stream(ctx, ws, log, backoff)
		r.setLeader(false)
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errSlotBusy) {
			select {
			case <-ctx.Done():
			case <-time.After(r.cfg.StandbyInterval):
			}
			continue
		}
		r.countFailure()
		log.Warn("outbox relay lost its WAL stream; reconnecting", "err", err)
		backoff.wait(ctx)
	}
	return nil
}

func (r *Relay) setLeader(v bool) {
	for _, st := range r.stats {
		st.leader.Store(v)
	}
}

func (r *Relay) countFailure() {
	for _, st := range r.stats {
		st.failures.Add(1)
	}
}

// ensureSlot creates the publication of the outbox tables (first: pgoutput
// reads it as of each decoded change) and the logical replication slot.
// A slot found missing after this relay streamed from it, or invalidated
// because the database removed WAL it still needed, was lost: it is
// created anew and the loss logged as an error. Nothing is lost with it,
// because the outbox tables still hold every row not yet published, and the
// relay drains them before it streams.
func (r *Relay) ensureSlot(ctx context.Context, ws *walState, log *slog.Logger) error {
	q := walQueries(ws.slot)
	var pubExists bool
	if err := r.cfg.Pool.QueryRow(ctx, q.pubExists, ws.slot).Scan(&pubExists); err != nil {
		return fmt.Errorf("look up publication %s: %w", ws.slot, err)
	}
	if !pubExists {
		tables := make([]string, len(r.cfg.Outboxes))
		for i, o := range r.cfg.Outboxes {
			tables[i] = pgx.Identifier{o.Schema(), "outbox"}.Sanitize()
		}
		_, err := r.cfg.Pool.Exec(ctx, fmt.Sprintf(q.pubCreate, strings.Join(tables, ", ")))
		if err != nil && !isCode(err, "42710") { // another relay created it
			return fmt.Errorf("create publication %s: %w", ws.slot, err)
		}
	}
	var walStatus *string
	err := r.cfg.Pool.QueryRow(ctx, q.slotStatus, ws.slot).Scan(&walStatus)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if ws.streamed || pubExists {
			ws.slotsRecreated.Add(1)
			log.Error("the outbox relay's replication slot was lost (dropped, or its database failed over to a replica without it); "+
				"creating it again and publishing every row still in the outbox tables: nothing is lost, consumers absorb the repeats",
				"slot", ws.slot)
		}
	case err != nil:
		return fmt.Errorf("look up replication slot %s: %w", ws.slot, err)
	case walStatus != nil && *walStatus == "lost":
		ws.slotsRecreated.Add(1)
		log.Error("the outbox relay's replication slot was invalidated: the database removed WAL it still needed (max_slot_wal_keep_size); "+
			"dropping and creating it again, then publishing every row still in the outbox tables: nothing is lost",
			"slot", ws.slot)
		if _, err := r.cfg.Pool.Exec(ctx, q.slotDrop, ws.slot); err != nil {
			return fmt.Errorf("drop invalidated replication slot %s: %w", ws.slot, err)
		}
	default:
		return nil
	}
	if _, err := r.cfg.Pool.Exec(ctx, q.slotCreate, ws.slot); err != nil && !isCode(err, "42710") {
		return fmt.Errorf("create replication slot %s: %w", ws.slot, err)
	}
	return nil
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// stream holds the slot for one connection's life: it drains the tables,
// then publishes what the WAL brings until ctx ends or something fails.
func (r *Relay) stream(ctx context.Context, ws *walState, log *slog.Logger, backoff *backoff) error {
	if err := r.ensureSlot(ctx, ws, log); err != nil {
		return err
	}
	cfg := r.cfg.Pool.Config().ConnConfig.Config.Copy()
	cfg.RuntimeParams["application_name"] = "sagaflow-relay-wal"
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["statement_timeout"] = "0" // the stream is one long command
	leaderParams(cfg.RuntimeParams, true)
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open replication connection: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = pglogrepl.StartReplication(ctx, conn, ws.slot, 0, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names '" + ws.slot + "'",
			"binary 'true'",
		},
	})
	if isCode(err, "55006") { // object_in_use: another relay streams
		return errSlotBusy
	}
	if err != nil {
		return fmt.Errorf("start replication from slot %s: %w", ws.slot, err)
	}
	ws.streamed = true
	r.setLeader(true)
	backoff.reset()
	log.Info("outbox relay is the leader, streaming from the WAL")

	// Rows committed before the slot's position that are still in the
	// tables (a relay died between Kafka's ack and the delete, or the slot
	// is new) are published first. The stream then skips the rows the drain
	// published, so a row committed between the slot's position and the
	// drain goes out once.
	// The drain can take long (a backlog, Kafka down): it reports the
	// slot's unchanged position every StatusInterval meanwhile, or the
	// server would end the stream after wal_sender_timeout.
	var startPos pglogrepl.LSN
	if err := r.cfg.Pool.QueryRow(ctx, `SELECT COALESCE(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1`, ws.slot).Scan(&startPos); err != nil {
		return fmt.Errorf("read the position of slot %s: %w", ws.slot, err)
	}
	lastStatus := time.Now()
	keepalive := func(ctx context.Context) error {
		if time.Since(lastStatus) < r.cfg.StatusInterval {
			return nil
		}
		lastStatus = time.Now()
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: startPos})
	}
	drained, err := r.drainTables(ctx, ws, keepalive)
	if err != nil {
		return err
	}

	txs := make(chan walTx, 256)
	var confirmed atomic.Uint64
	var pending atomic.Int64
	sendCtx, stopSending := context.WithCancel(ctx)
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		r.sendTxs(sendCtx, ws, log, txs, &confirmed, &pending)
	}()
	err = r.receive(ctx, conn, drained, txs, sendDone, &confirmed, &pending)
	stopSending()
	<-sendDone
	// Tell the server how far Kafka has everything, so that a restart
	// repeats as little as possible.
	if pos := confirmed.Load(); pos != 0 {
		_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pglogrepl.LSN(pos)})
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// drainedRows are the rows a leader's drain published, which the stream may
// bring again: every one of them committed before upTo, the WAL insert
// position read after the drain.
type drainedRows struct {
	seqs map[string]map[int64]bool
	upTo pglogrepl.LSN
}

// skip says whether the stream's row was published by the drain.
func (d *drainedRows) skip(rw row) bool {
	return d.seqs[rw.schema][rw.seq]
}

// drainTables publishes and deletes every row of the outbox tables up to
// their highest seq at the start, and returns what it published. It calls
// keepalive between batches and between a batch's tries.
func (r *Relay) drainTables(ctx context.Context, ws *walState, keepalive func(context.Context) error) (*drainedRows, error) {
	d := &drainedRows{seqs: map[string]map[int64]bool{}}
	batch := make([]row, 0, r.cfg.BatchSize)
	for _, o := range r.cfg.Outboxes {
		var top int64
		if err := r.cfg.Pool.QueryRow(ctx, o.q.maxSeq).Scan(&top); err != nil {
			return nil, fmt.Errorf("read outbox %s: %w", o.Schema(), err)
		}
		for {
			var err error
			batch, err = r.fetchUpTo(ctx, o, top, batch[:0])
			if err != nil {
				return nil, fmt.Errorf("read outbox %s: %w", o.Schema(), err)
			}
			if len(batch) == 0 {
				break
			}
			if err := keepalive(ctx); err != nil {
				return nil, fmt.Errorf("report the slot's position during the drain: %w", err)
			}
			sent, ok := r.sendAll(ctx, r.log.With("outbox", o.Schema()), batch, keepalive)
			if !ok {
				return nil, ctx.Err()
			}
			if err := ws.del.deleteNow(ctx, sent); err != nil {
				return nil, err
			}
			r.countPublished(sent)
			if d.seqs[o.Schema()] == nil {
				d.seqs[o.Schema()] = map[int64]bool{}
			}
			// Sent or parked: the stream must not bring any of them again.
			for _, rw := range batch {
				d.seqs[o.Schema()][rw.seq] = true
			}
		}
	}
	if err := r.cfg.Pool.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()").Scan(&d.upTo); err != nil {
		return nil, fmt.Errorf("read the WAL position after the drain: %w", err)
	}
	return d, nil
}

func (r *Relay) fetchUpTo(ctx context.Context, o *Outbox, top int64, dst []row) ([]row, error) {
	rows, err := r.cfg.Pool.Query(ctx, o.q.fetchUpTo, r.cfg.BatchSize, top)
	if err != nil {
		return dst, err
	}
	defer rows.Close()
	for rows.Next() {
		rw := row{schema: o.Schema()}
		if err := rows.Scan(&rw.seq, &rw.id, &rw.topic, &rw.key, &rw.payload, &rw.headers); err != nil {
			return dst, err
		}
		dst = append(dst, rw)
	}
	return dst, rows.Err()
}

func (r *Relay) countPublished(batch []row) {
	seen := map[string]bool{}
	for _, rw := range batch {
		if st := r.stats[rw.schema]; st != nil {
			st.published.Add(1)
			if !seen[rw.schema] {
				seen[rw.schema] = true
				st.batches.Add(1)
			}
		}
	}
}

// sendTxs publishes the streamed transactions in commit order, taking
// whatever has arrived as one batch. A row Kafka did not take is held and
// tried again with the next batch, in front of it; the newer rows of every
// other key go on meanwhile (one sick partition does not stall the rest).
// A row Kafka will never take is parked. The confirmed position advances
// past a transaction once every row of it and of every earlier one was sent
// or parked: a restart repeats what was not confirmed, and the inboxes
// absorb what it repeats.
func (r *Relay) sendTxs(ctx context.Context, ws *walState, log *slog.Logger, txs <-chan walTx, confirmed *atomic.Uint64, pending *atomic.Int64) {
	var (
		window  txWindow
		held    []heldRow
		xids    []uint32
		unknown = map[uuid.UUID]int{}
		vis     = &visibility{r: r, log: commitLogOfPool(r.cfg.Pool), rtt: initialLogWait}
		backoff = newBackoff(100*time.Millisecond, time.Second)
	)
	for {
		var tx walTx
		if len(held) == 0 {
			select {
			case <-ctx.Done():
				return
			case tx = <-txs:
			}
		} else {
			// Rows wait for another try: take new transactions if any,
			// but try again after the backoff either way.
			t := time.NewTimer(backoff.cur)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case tx = <-txs:
			case <-t.C:
			}
			t.Stop()
		}
		// A key with held rows sends nothing newer until they went.
		heldKeys := make(map[partitionKey]bool, len(held))
		for _, h := range held {
			heldKeys[h.partitionKey()] = true
		}
		batch := make([]heldRow, 0, len(held)+len(tx.rows))
		batch = append(batch, held...)
		var deferred []heldRow
		xids = xids[:0]
		take := func(tx walTx) {
			id := window.push(tx.end, len(tx.rows))
			xids = append(xids, tx.xid)
			for _, rw := range tx.rows {
				h := heldRow{row: rw, tx: id}
				if heldKeys[h.partitionKey()] {
					deferred = append(deferred, h)
					continue
				}
				batch = append(batch, h)
			}
		}
		if tx.end != 0 || len(tx.rows) > 0 {
			take(tx)
		}
	more:
		for len(batch) < r.cfg.BatchSize {
			select {
			case tx = <-txs:
				take(tx)
			default:
				break more
			}
		}
		if len(xids) > 0 {
			if err := vis.await(ctx, xids); err != nil && ctx.Err() == nil {
				log.Warn("check that streamed transactions are visible failed; publishing them anyway", "err", err)
			}
		}
		rows := make([]row, len(batch))
		for i, h := range batch {
			rows[i] = h.row
		}
		out, wait := r.try(rows, unknown)
		if err := r.park(ctx, out.parked, out.parkErrs); err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("park outbox rows Kafka will never accept; retrying them", "rows", len(out.parked), "err", err)
			out.retry = append(out.retry, out.parked...)
			out.parked = nil
		}
		failedBefore := len(out.retry) > 0
		var next []heldRow
		if len(out.retry) == 0 && len(wait) == 0 {
			// The common case: every row was sent or parked.
			for _, h := range batch {
				window.done(h.tx)
			}
		} else {
			next = stillHeld(batch, out.retry, wait, &window)
		}
		held = append(next, deferred...)
		r.countPublished(out.sent)
		ws.del.add(out.sent)
		if end, n := window.advance(); n > 0 {
			confirmed.Store(uint64(end))
			pending.Add(-n)
		}
		if failedBefore {
			log.Warn("publish outbox rows to Kafka failed; retrying them while the rest flows",
				"rows", len(out.retry), "sent", len(out.sent), "err", out.err)
			backoff.cur = min(backoff.cur*2, backoff.hi)
		} else {
			backoff.reset()
		}
	}
}

// stillHeld returns, in order, the rows of batch to try again: those that
// failed, then those a probing try left waiting (per key a failed row is
// older than the key's waiting rows); every other row is counted done in
// window.
func stillHeld(batch []heldRow, retry, wait []row, window *txWindow) []heldRow {
	again := make(map[rowRef]bool, len(retry)+len(wait))
	for _, rw := range retry {
		again[rowRef{rw.schema, rw.seq}] = true
	}
	waiting := make(map[rowRef]int64, len(wait))
	for _, rw := range wait {
		waiting[rowRef{rw.schema, rw.seq}] = -1
	}
	var next []heldRow
	for _, h := range batch {
		ref := rowRef{h.schema, h.seq}
		switch _, w := waiting[ref]; {
		case again[ref]:
			next = append(next, h)
		case w:
			waiting[ref] = h.tx
		default:
			window.done(h.tx)
		}
	}
	for _, rw := range wait {
		next = append(next, heldRow{row: rw, tx: waiting[rowRef{rw.schema, rw.seq}]})
	}
	return next
}

// heldRow is a streamed row with the transaction (txWindow id) it came in.
type heldRow struct {
	row
	tx int64
}

// partitionKey is what decides a row's partition, and so its order.
type partitionKey struct{ topic, key string }

func (rw *row) partitionKey() partitionKey { return partitionKey{rw.topic, rw.key} }

// rowRef names an outbox row.
type rowRef struct {
	schema string
	seq    int64
}

// txWindow tracks, in commit order, the streamed transactions whose rows
// are not all sent or parked yet.
type txWindow struct {
	first int64 // id of txs[0]
	txs   []windowTx
}

type windowTx struct {
	end  pglogrepl.LSN
	left int
}

// push adds a transaction with rows rows and returns its id.
func (w *txWindow) push(end pglogrepl.LSN, rows int) int64 {
	w.txs = append(w.txs, windowTx{end: end, left: rows})
	return w.first + int64(len(w.txs)) - 1
}

// done counts one row of transaction id as sent or parked.
func (w *txWindow) done(id int64) { w.txs[id-w.first].left-- }

// advance drops the finished transactions at the front and returns the end
// position of the last one dropped and how many it dropped.
func (w *txWindow) advance() (pglogrepl.LSN, int64) {
	var end pglogrepl.LSN
	n := 0
	for n < len(w.txs) && w.txs[n].left <= 0 {
		end = w.txs[n].end
		n++
	}
	w.txs = w.txs[n:]
	w.first += int64(n)
	return end, int64(n)
}

// receive reads the replication stream, hands every committed transaction
// with outbox rows to the sender, and reports the confirmed position to the
// server every StatusInterval and whenever it asks.
func (r *Relay) receive(ctx context.Context, conn *pgconn.PgConn, drained *drainedRows, txs chan<- walTx, sendDone <-chan struct{}, confirmed *atomic.Uint64, pending *atomic.Int64) error {
	relations := map[uint32]*relation{}
	var cur walTx
	inTx := false
	nextStatus := time.Now().Add(r.cfg.StatusInterval)
	status := func() error {
		nextStatus = time.Now().Add(r.cfg.StatusInterval)
		pos := pglogrepl.LSN(confirmed.Load())
		if pos == 0 {
			return nil
		}
		if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
			return fmt.Errorf("report position %s: %w", pos, err)
		}
		return nil
	}
	// advance confirms pos when nothing handed to the sender is still
	// waiting for Kafka: everything before pos is then published.
	advance := func(pos pglogrepl.LSN) {
		if !inTx && pending.Load() == 0 && uint64(pos) > confirmed.Load() {
			confirmed.Store(uint64(pos))
		}
	}
	// Reads time out at the next status report through the connection's
	// read deadline rather than a context per message (pgconn would watch
	// each context in a goroutine); one watcher ends the wait when ctx ends.
	nc := conn.Conn()
	stopWatch := context.AfterFunc(ctx, func() { _ = nc.SetReadDeadline(time.Now()) })
	defer stopWatch()
	var deadline time.Time
	for {
		if !time.Now().Before(nextStatus) {
			if err := status(); err != nil {
				return err
			}
		}
		if !deadline.Equal(nextStatus) {
			deadline = nextStatus
			if err := nc.SetReadDeadline(deadline); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from the WAL stream: %w", err)
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("WAL stream: %w", pgconn.ErrorResponseToPgError(m))
		default:
			continue
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return fmt.Errorf("parse keepalive: %w", err)
			}
			advance(ka.ServerWALEnd)
			if ka.ReplyRequested {
				nextStatus = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("parse WAL data: %w", err)
			}
			lm, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return fmt.Errorf("decode WAL message: %w", err)
			}
			switch lm := lm.(type) {
			case *pglogrepl.RelationMessage:
				rel, err := newRelation(lm)
				if err != nil {
					return err
				}
				relations[lm.RelationID] = rel
			case *pglogrepl.BeginMessage:
				inTx = true
				cur = walTx{xid: lm.Xid}
			case *pglogrepl.InsertMessage:
				rel := relations[lm.RelationID]
				if rel == nil {
					return fmt.Errorf("WAL stream: insert into unknown relation %d", lm.RelationID)
				}
				rw, err := rel.decode(lm.Tuple)
				if err != nil {
					return err
				}
				if r.stats[rw.schema] == nil {
					return fmt.Errorf("WAL stream: insert into %s.outbox, which this relay does not drain (publication %s lists it)", rw.schema, r.wal.slot)
				}
				if drained != nil && drained.skip(rw) {
					continue
				}
				cur.rows = append(cur.rows, rw)
			case *pglogrepl.CommitMessage:
				inTx = false
				if drained != nil && lm.CommitLSN >= drained.upTo {
					drained = nil // no drained row commits this late
				}
				if len(cur.rows) == 0 {
					advance(lm.TransactionEndLSN)
					continue
				}
				cur.end = lm.TransactionEndLSN
				pending.Add(1)
				if err := r.handOver(ctx, txs, cur, sendDone, status, &nextStatus); err != nil {
					return err
				}
				cur = walTx{}
			}
		}
	}
}

// handOver gives tx to the sender. While the sender is stuck (Kafka down)
// it keeps reporting the confirmed position, so that the server does not
// take the relay for dead.
func (r *Relay) handOver(ctx context.Context, txs chan<- walTx, tx walTx, sendDone <-chan struct{}, status func() error, nextStatus *time.Time) error {
	for {
		t := time.NewTimer(time.Until(*nextStatus))
		select {
		case txs <- tx:
			t.Stop()
			return nil
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-sendDone:
			t.Stop()
			return errors.New("outbox relay sender stopped")
		case <-t.C:
			if err := status(); err != nil {
				return err
			}
		}
	}
}

// visibility holds a batch back until its transactions are visible to other
// sessions. Logical decoding sends a transaction once its commit record is
// flushed, a moment before the committing backend makes it visible (and, with
// a synchronous standby, until the standby confirms). A consumer that reads
// what the producing transaction wrote (the orchestrator's reply handler
// looks up the saga that placement created with the first command) would not
// find it, and take the saga for unknown. The polling relay never had this
// window: it reads only visible rows.
//
// Transactions this process committed through an inbox or BeginWith are
// known visible from the commit log, without a round trip; the others are
// checked against the server's snapshot.
type visibility struct {
	r   *Relay
	log *commitLog
	// horizon is the xmin of the last snapshot read: every transaction
	// below it is visible for good.
	horizon uint64
	// rtt is how long snapshot reads took lately: the longest the relay
	// waits for the commit log.
	rtt time.Duration
}

// The relay waits for the commit log only for a batch of at most
// logWaitTxs transactions, and at most as long as a snapshot read took
// lately (an average of the last ones, at least minLogWait): waiting longer
// would be slower than asking. A larger batch uses the log only if it
// holds every transaction already: the goroutines that read their COMMITs'
// answers may wait for a CPU under load, while one snapshot read serves
// the whole batch (measured at 256 workers: waiting for every batch cost
// a tenth of the throughput).
const (
	logWaitTxs     = 8
	minLogWait     = 200 * time.Microsecond
	initialLogWait = time.Millisecond
)

// await returns once every transaction of xids is visible: at once when
// they precede the last snapshot's horizon or the commit log has them all,
// else reading the database's current snapshot as often as needed.
func (v *visibility) await(ctx context.Context, xids []uint32) error {
	if v.horizon != 0 && allBelow(xids, v.horizon) {
		return nil
	}
	var limit time.Duration
	if len(xids) <= logWaitTxs {
		limit = max(v.rtt, minLogWait)
	}
	if v.log.await(ctx, xids, limit) {
		v.r.localVisible.Add(1)
		return nil
	}
	wait := 200 * time.Microsecond
	for counted := false; ; {
		if v.horizon != 0 && allBelow(xids, v.horizon) {
			return nil
		}
		var snap string
		v.r.snapshotReads.Add(1)
		began := time.Now()
		if err := v.r.cfg.Pool.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&snap); err != nil {
			return fmt.Errorf("read the current snapshot: %w", err)
		}
		v.rtt += (time.Since(began) - v.rtt) / 4
		xmin, xmax, running, err := parseSnapshot(snap)
		if err != nil {
			return err
		}
		v.horizon = xmin
		if allVisible(xids, xmax, running) {
			return nil
		}
		if !counted {
			counted = true
			v.r.invisibleWaits.Add(1)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(wait*2, 50*time.Millisecond)
	}
}

// full widens a 32-bit transaction id to the 64-bit id of the epoch of ref
// (a recent 64-bit id not older than it).
func full(xid uint32, ref uint64) uint64 {
	f := ref&^0xFFFFFFFF | uint64(xid)
	if f > ref && f >= 1<<32 {
		f -= 1 << 32
	}
	return f
}

// allBelow says whether every xid precedes horizon, comparing the 32-bit
// ids circularly as PostgreSQL does (recent ids are within 2^31 of each
// other).
func allBelow(xids []uint32, horizon uint64) bool {
	h := uint32(horizon)
	for _, x := range xids {
		if int32(x-h) >= 0 {
			return false
		}
	}
	return true
}

func allVisible(xids []uint32, xmax uint64, running map[uint64]bool) bool {
	for _, x := range xids {
		f := full(x, xmax)
		if f >= xmax || running[f] {
			return false
		}
	}
	return true
}

// parseSnapshot parses pg_snapshot's text form, xmin:xmax:xip,xip,…
func parseSnapshot(s string) (xmin, xmax uint64, running map[uint64]bool, err error) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 {
		return 0, 0, nil, fmt.Errorf("parse snapshot %q", s)
	}
	if xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return 0, 0, nil, fmt.Errorf("parse snapshot %q: %w", s, err)
	}
	if xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return 0, 0, nil, fmt.Errorf("parse snapshot %q: %w", s, err)
	}
	running = map[uint64]bool{}
	if parts[2] != "" {
		for _, p := range strings.Split(parts[2], ",") {
			x, err := strconv.ParseUint(p, 10, 64)
			if err != nil {
				return 0, 0, nil, fmt.Errorf("parse snapshot %q: %w", s, err)
			}
			running[x] = true
		}
	}
	return xmin, xmax, running, nil
}

// relation maps an outbox table's columns, as the stream describes them.
type relation struct {
	schema string
	// index of each column of row in the tuple
	seq, id, topic, key, payload, headers int
}

func newRelation(m *pglogrepl.RelationMessage) (*relation, error) {
	rel := &relation{schema: m.Namespace, seq: -1, id: -1, topic: -1, key: -1, payload: -1, headers: -1}
	for i, c := range m.Columns {
		switch c.Name {
		case "seq":
			rel.seq = i
		case "id":
			rel.id = i
		case "topic":
			rel.topic = i
		case "key":
			rel.key = i
		case "payload":
			rel.payload = i
		case "headers":
			rel.headers = i
		}
	}
	if m.RelationName != "outbox" || min(rel.seq, rel.id, rel.topic, rel.key, rel.payload, rel.headers) < 0 {
		return nil, fmt.Errorf("WAL stream: relation %s.%s is not an outbox table", m.Namespace, m.RelationName)
	}
	return rel, nil
}

// decode turns an inserted tuple into a row. The stream sends values in
// binary form (pgoutput's binary option); text form is read too.
func (rel *relation) decode(t *pglogrepl.TupleData) (row, error) {
	rw := row{schema: rel.schema}
	col := func(i int) (*pglogrepl.TupleDataColumn, error) {
		if i >= len(t.Columns) || t.Columns[i].DataType == pglogrepl.TupleDataTypeNull || t.Columns[i].DataType == pglogrepl.TupleDataTypeToast {
			return nil, fmt.Errorf("WAL stream: %s.outbox row lacks column %d", rel.schema, i)
		}
		return t.Columns[i], nil
	}
	bad := func(name string, err error) (row, error) {
		return row{}, fmt.Errorf("WAL stream: decode %s.outbox column %s: %w", rel.schema, name, err)
	}
	c, err := col(rel.seq)
	if err != nil {
		return row{}, err
	}
	if c.DataType == pglogrepl.TupleDataTypeBinary {
		if len(c.Data) != 8 {
			return bad("seq", fmt.Errorf("%d bytes", len(c.Data)))
		}
		rw.seq = int64(binary.BigEndian.Uint64(c.Data))
	} else if rw.seq, err = strconv.ParseInt(string(c.Data), 10, 64); err != nil {
		return bad("seq", err)
	}
	if c, err = col(rel.id); err != nil {
		return row{}, err
	}
	if c.DataType == pglogrepl.TupleDataTypeBinary {
		if rw.id, err = uuid.FromBytes(c.Data); err != nil {
			return bad("id", err)
		}
	} else if rw.id, err = uuid.ParseBytes(c.Data); err != nil {
		return bad("id", err)
	}
	if c, err = col(rel.topic); err != nil {
		return row{}, err
	}
	rw.topic = string(c.Data)
	if c, err = col(rel.key); err != nil {
		return row{}, err
	}
	rw.key = string(c.Data)
	if c, err = col(rel.payload); err != nil {
		return row{}, err
	}
	if c.DataType == pglogrepl.TupleDataTypeBinary {
		rw.payload = c.Data
	} else {
		s, ok := strings.CutPrefix(string(c.Data), `\x`)
		if !ok {
			return bad("payload", errors.New("not hex"))
		}
		if rw.payload, err = hex.DecodeString(s); err != nil {
			return bad("payload", err)
		}
	}
	if c, err = col(rel.headers); err != nil {
		return row{}, err
	}
	h := c.Data
	if c.DataType == pglogrepl.TupleDataTypeBinary {
		if len(h) == 0 || h[0] != 1 {
			return bad("headers", errors.New("unknown jsonb binary version"))
		}
		h = h[1:]
	}
	if err := json.Unmarshal(h, &rw.headers); err != nil {
		return bad("headers", err)
	}
	return rw, nil
}

// deleter deletes published rows a little later, many at once: one
// transaction, without waiting for its WAL flush, per DeleteInterval
// instead of one per batch. A row published but not yet deleted when the
// relay dies is published again by the next leader's drain.
//
// Logical decoding sends a transaction once its commit is in the WAL, which
// can be a moment before other sessions see it committed: a DELETE may then
// not find a row already published. Such a row stays pending and is tried
// again each round, up to maxDeleteRounds rounds (a row published twice, and
// deleted the first time, is never found again).
type deleter struct {
	r       *Relay
	mu      sync.Mutex
	pending map[string][]pendingRow
}

type pendingRow struct {
	seq int64
	// rounds is how many deletes did not find the row yet.
	rounds int
}

// maxDeleteRounds bounds the retries of a row a delete did not find: 50
// rounds of 200 ms is 10 s, far beyond the moment between a commit's WAL
// record and its visibility.
const maxDeleteRounds = 50

func newDeleter(r *Relay) *deleter { return &deleter{r: r, pending: map[string][]pendingRow{}} }

func (d *deleter) add(batch []row) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, rw := range batch {
		d.pending[rw.schema] = append(d.pending[rw.schema], pendingRow{seq: rw.seq})
	}
}

func (d *deleter) requeue(todo map[string][]pendingRow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for s, rows := range todo {
		d.pending[s] = append(d.pending[s], rows...)
	}
}

// run deletes what was added every DeleteInterval until ctx ends, then once
// more.
func (d *deleter) run(ctx context.Context) {
	t := time.NewTicker(d.r.cfg.DeleteInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = d.flush(fctx)
			cancel()
			return
		case <-t.C:
			if err := d.flush(ctx); err != nil && ctx.Err() == nil {
				d.r.log.Warn("delete published outbox rows failed; retrying", "err", err)
			}
		}
	}
}

// flush deletes what is pending; rows not found yet stay pending.
func (d *deleter) flush(ctx context.Context) error {
	d.mu.Lock()
	todo := d.pending
	d.pending = map[string][]pendingRow{}
	d.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	missed, err := d.remove(ctx, todo)
	if err != nil {
		d.requeue(todo)
		return err
	}
	for s, rows := range missed {
		kept := rows[:0]
		for _, p := range rows {
			if p.rounds++; p.rounds < maxDeleteRounds {
				kept = append(kept, p)
			}
		}
		missed[s] = kept
	}
	d.requeue(missed)
	return nil
}

// deleteNow deletes the rows of batch at once (rows just read, so visible).
func (d *deleter) deleteNow(ctx context.Context, batch []row) error {
	todo := map[string][]pendingRow{}
	for _, rw := range batch {
		todo[rw.schema] = append(todo[rw.schema], pendingRow{seq: rw.seq})
	}
	_, err := d.remove(ctx, todo)
	return err
}

// remove deletes the rows of todo in one transaction and returns those it
// did not find.
func (d *deleter) remove(ctx context.Context, todo map[string][]pendingRow) (missed map[string][]pendingRow, err error) {
	missed = map[string][]pendingRow{}
	err = pgx.BeginFunc(ctx, d.r.cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		for _, o := range d.r.cfg.Outboxes {
			rows := todo[o.Schema()]
			if len(rows) == 0 {
				continue
			}
			seqs := make([]int64, len(rows))
			for i, p := range rows {
				seqs[i] = p.seq
			}
			res, err := tx.Query(ctx, o.q.removeSome, seqs)
			if err != nil {
				return err
			}
			found, err := pgx.CollectRows(res, pgx.RowTo[int64])
			if err != nil {
				return err
			}
			if len(found) == len(rows) {
				continue
			}
			gone := make(map[int64]bool, len(found))
			for _, s := range found {
				gone[s] = true
			}
			for _, p := range rows {
				if !gone[p.seq] {
					missed[o.Schema()] = append(missed[o.Schema()], p)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete published outbox rows: %w", err)
	}
	return missed, nil
}
