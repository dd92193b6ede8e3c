package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/kafkax"
)

// Producer sends a batch of messages to Kafka and returns when all are
// acknowledged (sarama's SyncProducer). Messages of one partition keep their
// order within a batch.
type Producer interface {
	SendMessages(msgs []*sarama.ProducerMessage) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// Pool connects to the database; the relay opens a dedicated connection
	// per outbox from its configuration (the leader's, which holds the
	// advisory lock).
	Pool *pgxpool.Pool
	// Outboxes to drain.
	Outboxes []*Outbox
	// Producer publishes batches.
	Producer Producer
	// Mode is how the relay learns of committed rows (default ModeAuto:
	// from the WAL wherever the database allows it).
	Mode Mode
	// Slot names the logical replication slot and the publication the WAL
	// relay streams from (default DefaultSlotName). Relays of the same
	// outboxes share it: the slot admits one streaming relay at a time,
	// which makes it the leader.
	Slot string
	// StatusInterval is how often the WAL relay reports the position up to
	// which Kafka has everything (default 1 s). A restarted relay repeats
	// what came after the last report.
	StatusInterval time.Duration
	// DeleteInterval is how long the WAL relay gathers published rows before
	// it deletes them in one transaction (default 200 ms).
	DeleteInterval time.Duration
	// BatchSize is the most rows read, sent and deleted at once (default
	// 5000: a 100,000-row backlog drained ~47% faster than with 1000).
	BatchSize int
	// In ModePoll the relay polls its outbox: at once after a batch, then after
	// MinPollInterval (default 2 ms), doubling while the outbox stays empty
	// up to PollInterval (default 100 ms). A write through an Outbox in this
	// process wakes it at once. (A NOTIFY trigger would wake it from other
	// processes too, but a notifying transaction holds a database-wide lock
	// through its WAL flush, which serialised durable commits at ~1,400/s
	// on this machine; see the outbox issue's note.)
	MinPollInterval time.Duration
	PollInterval    time.Duration
	// StandbyInterval is how often a relay that is not the leader of an
	// outbox tries to become it (default 1 s).
	StandbyInterval time.Duration
	// DuplicateEach publishes every row twice: a test switch that proves the
	// consumers' inboxes absorb duplicates.
	DuplicateEach bool
	// SchemaIDs, when set, are the schema registry's ids of each topic's
	// schema: messages to those topics are sent in the Confluent wire
	// format (a zero byte, the id in 4 bytes big-endian, then the JSON),
	// which a stock JSON Schema deserializer in any language reads. The
	// ids were registered at start, so a registry outage does not stop
	// publishing.
	SchemaIDs map[string]int
	// Logger logs leadership changes and errors.
	Logger *slog.Logger
}

// Relay publishes committed outbox rows to Kafka and then deletes them.
//
// Rows are deleted rather than marked: a marked row would have to be deleted
// by retention anyway, and the relay's fetch would have to skip ever more
// dead rows. Kafka keeps the published copy.
//
// One relay process at a time drains an outbox: it holds a session advisory
// lock on a dedicated connection, and deletes on that same connection, so a
// relay that lost its connection (and with it the lock) cannot delete rows
// another relay is publishing. Other relays wait as standbys. Per-key order
// follows from one publisher reading rows in seq order and sending each
// partition's messages in order with an idempotent producer.
type Relay struct {
	cfg     RelayConfig
	log     *slog.Logger
	stats   map[string]*relayStats
	started atomic.Bool
	mode    atomic.Value // Mode, once Run decided it
	wal     *walState
	// invisibleWaits counts batches the WAL relay held back until their
	// transactions were visible.
	invisibleWaits atomic.Int64
	// localVisible counts batches the WAL relay found visible in this
	// process's commit log; snapshotReads the server snapshots it read to
	// check the others.
	localVisible  atomic.Int64
	snapshotReads atomic.Int64
	// parked counts rows moved to a parked table.
	parked atomic.Int64
	// probing: the last try failed, so each call carries one row per key
	// until one succeeds in full (see onePerKey).
	probing atomic.Bool
}

type relayStats struct {
	published atomic.Int64
	batches   atomic.Int64
	leader    atomic.Bool
	failures  atomic.Int64
}

// RelayStats is a snapshot of one outbox's relay counters.
type RelayStats struct {
	Schema    string
	Leader    bool
	Published int64
	Batches   int64
	Failures  int64
}

// NewRelay checks cfg and returns a relay ready to Run.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if cfg.Pool == nil || cfg.Producer == nil || len(cfg.Outboxes) == 0 {
		return nil, errors.New("outbox relay needs a pool, a producer and at least one outbox")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 5000
	}
	if cfg.MinPollInterval <= 0 {
		cfg.MinPollInterval = 2 * time.Millisecond
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.PollInterval < cfg.MinPollInterval {
		cfg.PollInterval = cfg.MinPollInterval
	}
	if cfg.StandbyInterval <= 0 {
		cfg.StandbyInterval = time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.DeleteInterval <= 0 {
		cfg.DeleteInterval = 200 * time.Millisecond
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	if _, err := ParseMode(string(cfg.Mode)); err != nil {
		return nil, err
	}
	if cfg.Slot != "" && !validSlot.MatchString(cfg.Slot) {
		return nil, fmt.Errorf("outbox relay: slot name %q: use 1 to 63 lowercase letters, digits and underscores", cfg.Slot)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Relay{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "relay"),
		stats: map[string]*relayStats{},
	}
	r.wal = &walState{del: newDeleter(r)}
	for _, o := range cfg.Outboxes {
		r.stats[o.Schema()] = &relayStats{}
	}
	return r, nil
}

var validSlot = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Run drains the outboxes until ctx ends, then returns nil. Database and
// Kafka outages are retried with backoff; rows stay in the outbox meanwhile.
// It fails only when ModeWAL was asked for and the database cannot stream.
func (r *Relay) Run(ctx context.Context) error {
	if r.started.Swap(true) {
		return errors.New("outbox relay: Run called twice")
	}
	mode, err := r.resolveMode(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.mode.Store(mode)
	if mode == ModeWAL {
		return r.runWAL(ctx)
	}
	var wg sync.WaitGroup
	for _, o := range r.cfg.Outboxes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.runOutbox(ctx, o)
		}()
	}
	wg.Wait()
	return nil
}

// Mode is how the relay runs, once Run decided it ("" before).
func (r *Relay) Mode() Mode {
	m, _ := r.mode.Load().(Mode)
	return m
}

// SlotsRecreated counts the replication slots the WAL relay found lost and
// created again.
func (r *Relay) SlotsRecreated() int64 {
	return r.wal.slotsRecreated.Load()
}

// InvisibleWaits counts the batches the WAL relay held back because a
// transaction was streamed before other sessions could see it.
func (r *Relay) InvisibleWaits() int64 { return r.invisibleWaits.Load() }

// Visibility counts how the WAL relay knew its batches visible: local
// batches, all of whose transactions this process committed through an
// inbox or BeginWith (no round trip), and the snapshots it read from the
// server for the others.
func (r *Relay) Visibility() (local, snapshotReads int64) {
	return r.localVisible.Load(), r.snapshotReads.Load()
}

// Stats returns the counters of every outbox.
func (r *Relay) Stats() []RelayStats {
	out := make([]RelayStats, 0, len(r.cfg.Outboxes))
	for _, o := range r.cfg.Outboxes {
		s := r.stats[o.Schema()]
		out = append(out, RelayStats{
			Schema:    o.Schema(),
			Leader:    s.leader.Load(),
			Published: s.published.Load(),
			Batches:   s.batches.Load(),
			Failures:  s.failures.Load(),
		})
	}
	return out
}

// LeaderTimeout bounds how long PostgreSQL keeps the session of a relay
// leader whose host went silent (power loss, a network partition), and so
// how long its lead — the poll relay's advisory lock, the WAL relay's slot
// — outlives it: a standby leads within LeaderTimeout plus its
// StandbyInterval. Without it the server would wait for TCP keepalive to
// give up, about two hours with Linux defaults.
const LeaderTimeout = 10 * time.Second

// leaderParams are the per-session settings of a leader's connection that
// make the server drop it once the client goes silent: TCP keepalive
// probes and a user timeout on unacknowledged data (for a host that is
// gone), and the idle timeout of the protocol itself (for a client that is
// alive at the TCP level but sends nothing, such as one behind a hung
// proxy): idle_session_timeout for the poll relay, which queries at least
// every PollInterval, wal_sender_timeout for the WAL relay, which reports
// its position every StatusInterval.
func leaderParams(p map[string]string, replication bool) {
	ms := strconv.FormatInt(LeaderTimeout.Milliseconds(), 10)
	p["tcp_keepalives_idle"] = "5"
	p["tcp_keepalives_interval"] = "2"
	p["tcp_keepalives_count"] = "3"
	p["tcp_user_timeout"] = ms
	if replication {
		p["wal_sender_timeout"] = ms
	} else {
		p["idle_session_timeout"] = ms
	}
}

// connect opens a dedicated connection named sagaflow-relay-<role> (its
// application_name, as operators see it in pg_stat_activity), with the
// leader's session settings.
func (r *Relay) connect(ctx context.Context, role string) (*pgx.Conn, error) {
	cfg := r.cfg.Pool.Config().ConnConfig.Copy()
	cfg.RuntimeParams["application_name"] = "sagaflow-relay-" + role
	leaderParams(cfg.RuntimeParams, false)
	// The relay's deletes need not wait for the WAL flush: a delete lost in
	// a database crash only publishes its rows again, which the consumers'
	// inboxes absorb. This takes a WAL flush per batch off the commit path.
	cfg.RuntimeParams["synchronous_commit"] = "off"
	return pgx.ConnectConfig(ctx, cfg)
}

// runOutbox is the life of one outbox's relay: connect, become leader, drain;
// on any database error start over after a backoff.
func (r *Relay) runOutbox(ctx context.Context, o *Outbox) {
	log := r.log.With("outbox", o.Schema())
	st := r.stats[o.Schema()]
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		err := r.lead(ctx, o, log, st, backoff)
		st.leader.Store(false)
		if ctx.Err() != nil {
			return
		}
		st.failures.Add(1)
		log.Warn("outbox relay lost its database connection; reconnecting", "err", err)
		backoff.wait(ctx)
	}
}

// lead connects, waits to hold the outbox's leader lock, then drains it until
// ctx ends or the connection fails.
func (r *Relay) lead(ctx context.Context, o *Outbox, log *slog.Logger, st *relayStats, backoff *backoff) error {
	conn, err := r.connect(ctx, o.Schema())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	lockName := "sagaflow.relay." + o.Schema()
	for {
		var ok bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lockName).Scan(&ok); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("take the leader lock of outbox %s: %w", o.Schema(), err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.StandbyInterval):
		}
	}
	st.leader.Store(true)
	backoff.reset()
	log.Info("outbox relay is the leader")

	wake, unsubscribe := subscribe(o.Schema())
	defer unsubscribe()
	idle := r.cfg.MinPollInterval
	batch := make([]row, 0, r.cfg.BatchSize)
	unknown := map[uuid.UUID]int{}
	sendBackoff := newBackoff(100*time.Millisecond, time.Second)
	for ctx.Err() == nil {
		batch, err = fetch(ctx, conn, o.q.fetch, r.cfg.BatchSize, batch[:0], o.Schema())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read outbox %s: %w", o.Schema(), err)
		}
		if len(batch) == 0 {
			t := time.NewTimer(idle)
			select {
			case <-ctx.Done():
			case <-wake:
				// The writer has not committed yet: look again shortly.
				idle = r.cfg.MinPollInterval
				t.Reset(idle)
				select {
				case <-ctx.Done():
				case <-t.C:
				}
			case <-t.C:
				idle = min(idle*2, r.cfg.PollInterval)
			}
			t.Stop()
			continue
		}
		idle = r.cfg.MinPollInterval
		// One try per batch: the rows Kafka took are deleted, the ones it
		// will never take parked, and the ones that failed stay for the
		// next batch, which also brings newer rows of every other key, so
		// that one sick partition does not hold up the rest. After a
		// failure the relay probes, one row per key (see onePerKey).
		out, _ := r.try(batch, unknown) // rows not tried stay in the table

		if err := r.park(ctx, out.parked, out.parkErrs); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if len(out.sent) > 0 {
			seqs := make([]int64, len(out.sent))
			for i, b := range out.sent {
				seqs[i] = b.seq
			}
			if _, err := conn.Exec(ctx, o.q.remove, seqs); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				// The rows were published; they will be published again by
				// whoever leads next, and the consumers' inboxes absorb that.
				return fmt.Errorf("delete %d published rows of outbox %s: %w", len(seqs), o.Schema(), err)
			}
		}
		if len(out.retry) > 0 {
			log.Warn("publish outbox rows to Kafka failed; retrying them with the next batch",
				"rows", len(out.retry), "sent", len(out.sent), "err", out.err)
			// Back off (the session kept busy, or idle_session_timeout
			// would end the lead), but not long: other keys wait too.
			if !sendBackoff.wait(ctx) {
				return nil
			}
			if err := conn.Ping(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("ping while Kafka fails: %w", err)
			}
		} else {
			sendBackoff.reset()
		}
		batch = out.sent
		st.published.Add(int64(len(batch)))
		st.batches.Add(1)
	}
	return nil
}

func (r *Relay) messages(batch []row) []*sarama.ProducerMessage {
	n := len(batch)
	if r.cfg.DuplicateEach {
		n *= 2
	}
	msgs := make([]*sarama.ProducerMessage, 0, n)
	for i := range batch {
		// Metadata is the row's index, by which sendOnce tells which rows
		// a partial failure failed.
		m := batch[i].producerMessage(r.cfg.SchemaIDs)
		m.Metadata = i
		msgs = append(msgs, m)
		if r.cfg.DuplicateEach {
			d := batch[i].producerMessage(r.cfg.SchemaIDs)
			d.Metadata = i
			msgs = append(msgs, d)
		}
	}
	return msgs
}

func firstProducerError(err error) error {
	var perrs sarama.ProducerErrors
	if errors.As(err, &perrs) && len(perrs) > 0 {
		return fmt.Errorf("%d of the batch failed, first: %w", len(perrs), perrs[0].Err)
	}
	return err
}

// row is one outbox row.
type row struct {
	schema  string
	seq     int64
	id      uuid.UUID
	topic   string
	key     string
	payload []byte
	headers map[string]string
}

func fetch(ctx context.Context, conn *pgx.Conn, query string, limit int, dst []row, schema string) ([]row, error) {
	rows, err := conn.Query(ctx, query, limit)
	if err != nil {
		return dst, err
	}
	defer rows.Close()
	for rows.Next() {
		rw := row{schema: schema}
		if err := rows.Scan(&rw.seq, &rw.id, &rw.topic, &rw.key, &rw.payload, &rw.headers); err != nil {
			return dst, err
		}
		dst = append(dst, rw)
	}
	return dst, rows.Err()
}

func (rw *row) producerMessage(schemaIDs map[string]int) *sarama.ProducerMessage {
	headers := make([]sarama.RecordHeader, 0, len(rw.headers)+2)
	headers = append(headers,
		sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: []byte(rw.id.String())},
		sarama.RecordHeader{Key: []byte(kafkax.KeyMetadata), Value: []byte(rw.key)},
	)
	for k, v := range rw.headers {
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	value := rw.payload
	if id, ok := schemaIDs[rw.topic]; ok {
		value = Frame(id, rw.payload)
	}
	return &sarama.ProducerMessage{
		Topic:   rw.topic,
		Key:     sarama.StringEncoder(rw.key),
		Value:   sarama.ByteEncoder(value),
		Headers: headers,
	}
}

// Backlog is how far an outbox is behind.
type Backlog struct {
	Schema string
	// Rows waiting to be published.
	Rows int64
	// OldestAge is the age of the oldest waiting row.
	OldestAge time.Duration
}

// Backlog reads the backlog of outbox o.
func (o *Outbox) Backlog(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (Backlog, error) {
	b := Backlog{Schema: o.Schema()}
	var age float64
	if err := db.QueryRow(ctx, o.q.backlog).Scan(&b.Rows, &age); err != nil {
		return b, fmt.Errorf("read backlog of outbox %s: %w", o.Schema(), err)
	}
	b.OldestAge = time.Duration(age * float64(time.Second))
	return b, nil
}

// OldestAge is how long the first row still waiting in outbox o (in seq
// order) has waited, by the database's clock; 0 when none waits. The
// saga engine's delivery check asks it every sweep: a row older than a few
// seconds means the relay cannot publish.
func (o *Outbox) OldestAge(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (time.Duration, error) {
	var age float64
	if err := db.QueryRow(ctx, o.q.oldest).Scan(&age); err != nil {
		return 0, fmt.Errorf("read the oldest row of outbox %s: %w", o.Schema(), err)
	}
	return time.Duration(age * float64(time.Second)), nil
}

// backoff is an exponential backoff between lo and hi.
type backoff struct {
	lo, hi, cur time.Duration
}

func newBackoff(lo, hi time.Duration) *backoff { return &backoff{lo: lo, hi: hi, cur: lo} }

func (b *backoff) reset() { b.cur = b.lo }

// wait sleeps the current interval and doubles it; false when ctx ended.
func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.cur)
	defer t.Stop()
	b.cur = min(b.cur*2, b.hi)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// wakers are the relays of this process, by outbox schema, woken when an
// Outbox of this process writes.
var wakers = struct {
	sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}{subs: map[string]map[chan struct{}]struct{}{}}

func subscribe(schema string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	wakers.Lock()
	defer wakers.Unlock()
	if wakers.subs[schema] == nil {
		wakers.subs[schema] = map[chan struct{}]struct{}{}
	}
	wakers.subs[schema][ch] = struct{}{}
	return ch, func() {
		wakers.Lock()
		defer wakers.Unlock()
		delete(wakers.subs[schema], ch)
	}
}

// wake tells this process's relays of schema that a write is on its way.
func wake(schema string) {
	wakers.Lock()
	defer wakers.Unlock()
	for ch := range wakers.subs[schema] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
