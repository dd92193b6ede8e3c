package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/pgserver"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/migrations"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/steps"
)

// env is what a run measures and the means to load and observe it.
type env struct {
	pool   *pgxpool.Pool
	relay  *outbox.Relay // the in-process stack's; nil for running roles
	kafka  kafkax.Config
	topics kafkax.Topics
	placer placer
	cpu    []*cpuSource

	stack, transport, kafkaName string
	// outbox is the in-process relay's mode.
	outbox string

	closers []func()
}

// close stops what the env started, newest first.
func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

func (e *env) onClose(f func()) { e.closers = append(e.closers, f) }

// PGSettings are the in-process PostgreSQL server's settings: durable
// commits (the targets are measured with them) and room for the pool, the
// relay's dedicated connections and verify.
var PGSettings = map[string]string{"synchronous_commit": "on", "max_connections": "300"}

// startInProcess starts PostgreSQL, Kafka (kfake unless cfg.Brokers) and
// every role in this process.
func startInProcess(ctx context.Context, cfg *Config) (_ *env, err error) {
	e := &env{stack: "in-process", transport: "http", outbox: string(cfg.OutboxMode)}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	tmp, err := os.MkdirTemp("", "sagaflow-bench-")
	if err != nil {
		return nil, fmt.Errorf("create a temporary directory: %w", err)
	}
	e.onClose(func() { _ = os.RemoveAll(tmp) })
	// The server may run as the postgres user, which must reach its directory.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("open up %s: %w", tmp, err)
	}
	pgDir := filepath.Join(tmp, "pg")
	settings := maps.Clone(PGSettings)
	if cfg.PGStatements > 0 {
		settings["shared_preload_libraries"] = "pg_stat_statements"
		settings["pg_stat_statements.track_planning"] = "on"
	}
	pg, err := pgserver.Start(ctx, pgserver.Options{Dir: pgDir, Settings: settings})
	if err != nil {
		return nil, err
	}
	e.onClose(func() {
		if err := pg.Stop(); err != nil {
			cfg.Logger.Warn("stop PostgreSQL", "err", err)
		}
	})
	dbURL := pg.URL("postgres")
	if _, err := migrations.Apply(ctx, dbURL); err != nil {
		return nil, err
	}
	if cfg.PGStatements > 0 {
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return nil, fmt.Errorf("connect to PostgreSQL: %w", err)
		}
		_, err = conn.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
		conn.Close(ctx)
		if err != nil {
			return nil, fmt.Errorf("load pg_stat_statements (--pg-statements; is postgresql-contrib installed?): %w", err)
		}
	}
	if pid, err := postmasterPID(filepath.Join(pgDir, "data")); err == nil {
		e.cpu = addSource(e.cpu, &cpuSource{name: "postgres", pid: pid, note: "postmaster and backends"})
	}

	brokers := cfg.Brokers
	if len(brokers) == 0 {
		emb, err := kafkax.StartEmbedded(kafkax.EmbeddedOptions{Partitions: cfg.Partitions})
		if err != nil {
			return nil, err
		}
		e.onClose(emb.Close)
		brokers, e.kafkaName = emb.Brokers(), "kfake"
	} else {
		e.kafkaName = strings.Join(brokers, ",")
		for _, b := range brokerSources(brokers) {
			e.cpu = addSource(e.cpu, b)
		}
	}
	e.kafka = kafkax.Config{Brokers: brokers, Partitions: int32(cfg.Partitions),
		ReplicationFactor: int16(cfg.ReplicationFactor), ClientID: "sagaflow-bench"}
	if err := e.kafka.Ping(ctx); err != nil {
		return nil, err
	}
	e.topics = cfg.Topics
	ownTopics := e.topics.SagaReplies == ""
	if ownTopics {
		e.topics = kafkax.PrefixedTopics("sagaflow-bench-" + uuid.NewString()[:8] + ".")
	}
	if ownTopics && len(cfg.Brokers) > 0 && !cfg.KeepTopics {
		e.onClose(func() { deleteTopics(e.kafka, e.topics, cfg) })
	}

	pcfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	pcfg.MaxConns = int32(cfg.DBMaxConns)
	dbpool.Configure(pcfg)
	if e.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	e.onClose(e.pool.Close)
	if err := steps.SeedStock(ctx, e.pool, stock(cfg.SKUs)); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the API: %w", err)
	}
	stack, err := roles.New(roles.Config{
		Pool: e.pool, Kafka: e.kafka, Topics: e.topics, Roles: []string{roles.All}, Listener: ln,
		Saga:       order.SagaConfig{StepTimeout: 5 * time.Second, Attempts: 3, CompensationAttempts: 10, Deadline: 5 * time.Minute},
		OutboxMode: cfg.OutboxMode,
		Logger:     cfg.Logger,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	sctx, stop := context.WithCancel(ctx)
	stopped := make(chan struct{})
	var runErr error
	go func() {
		defer close(stopped)
		runErr = stack.Run(sctx)
	}()
	e.onClose(func() {
		stop()
		select {
		case <-stopped:
		case <-time.After(30 * time.Second):
			cfg.Logger.Warn("the in-process roles did not stop within 30 s")
		}
	})
	select {
	case <-stopped:
		return nil, fmt.Errorf("start the roles: %w", runErr)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-stack.Ready():
	}

	e.relay = stack.Relay
	note := "load generator and every role"
	if e.kafkaName == "kfake" {
		note += ", kfake"
	}
	e.cpu = append([]*cpuSource{{name: "this process", note: note}}, e.cpu...)
	if cfg.Direct {
		e.placer, e.transport = newDirectPlacer(stack.Orders, cfg.SKUs), "direct"
	} else {
		e.placer = newHTTPPlacer("http://"+stack.Addr, cfg.SKUs)
	}
	return e, nil
}

// startRemote connects to running roles.
func startRemote(ctx context.Context, cfg *Config) (_ *env, err error) {
	e := &env{stack: cfg.API, transport: "http", kafkaName: strings.Join(cfg.Brokers, ",")}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("bad database URL: %w", err)
	}
	pcfg.MaxConns = 4
	dbpool.Configure(pcfg)
	if e.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	e.onClose(e.pool.Close)
	if err := e.pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("database unreachable: %w", err)
	}
	e.kafka = kafkax.Config{Brokers: cfg.Brokers, ClientID: "sagaflow-bench"}
	if err := e.kafka.Ping(ctx); err != nil {
		return nil, err
	}
	e.topics = cfg.Topics
	if e.topics.SagaReplies == "" {
		e.topics = kafkax.DefaultTopics()
	}
	if err := ready(ctx, cfg.API); err != nil {
		return nil, err
	}
	if err := seedIfNeeded(ctx, e.pool, cfg.SKUs); err != nil {
		return nil, err
	}
	e.placer = newHTTPPlacer(cfg.API, cfg.SKUs)

	e.cpu = append(e.cpu, &cpuSource{name: "this process", note: "load generator"})
	if port, ok := urlPort(cfg.API, "80"); ok {
		if pid, err := listenerPID(port); err == nil && pid != os.Getpid() {
			e.cpu = addSource(e.cpu, &cpuSource{name: "api", pid: pid, note: "the process serving --api"})
		}
	}
	if host := pcfg.ConnConfig.Host; !strings.HasPrefix(host, "/") {
		if port, ok := localPort(net.JoinHostPort(host, strconv.Itoa(int(pcfg.ConnConfig.Port)))); ok {
			if pid, err := listenerPID(port); err == nil {
				e.cpu = addSource(e.cpu, &cpuSource{name: "postgres", pid: pid, note: "postmaster and backends"})
			}
		}
	}
	for _, b := range brokerSources(cfg.Brokers) {
		e.cpu = addSource(e.cpu, b)
	}
	return e, nil
}

// ready checks the API answers GET /readyz with 200.
func ready(ctx context.Context, base string) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	u := strings.TrimRight(base, "/") + "/readyz"
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("bad API URL %q: %w", base, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("API unreachable (is `sagaflow serve --role api` running there?): %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("API at %s is not ready: GET /readyz answered %d", base, resp.StatusCode)
	}
	return nil
}

// seedIfNeeded puts the bench SKUs on the shelves of a running system when
// they are missing or short (SeedStock wants no order of them in flight).
func seedIfNeeded(ctx context.Context, pool *pgxpool.Pool, skus int) error {
	want := stock(skus)
	rows, err := pool.Query(ctx, `SELECT sku, available FROM inventory.stock WHERE sku = ANY($1)`, slices.Collect(maps.Keys(want)))
	if err != nil {
		return fmt.Errorf("read the stock of the bench SKUs: %w", err)
	}
	have := map[string]int{}
	var sku string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&sku, &n}, func() error {
		have[sku] = n
		return nil
	}); err != nil {
		return fmt.Errorf("read the stock of the bench SKUs: %w", err)
	}
	seed := map[string]int{}
	for sku, units := range want {
		if n, ok := have[sku]; !ok || (units == 0 && n != 0) || (units > 0 && n < units/2) {
			seed[sku] = units
		}
	}
	if len(seed) == 0 {
		return nil
	}
	return steps.SeedStock(ctx, pool, seed)
}

// brokerSources are the local Kafka brokers whose process can be found.
func brokerSources(brokers []string) []*cpuSource {
	var out []*cpuSource
	seen := map[int]bool{}
	for _, b := range brokers {
		port, ok := localPort(b)
		if !ok {
			continue
		}
		if pid, err := listenerPID(port); err == nil && !seen[pid] && pid != os.Getpid() {
			seen[pid] = true
			src := &cpuSource{name: "kafka " + b, pid: pid, note: "broker"}
			if isJVM(pid) {
				src.warmAfter = warmBrokerCPU
			}
			out = append(out, src)
		}
	}
	return out
}

// postmasterPID reads the server's pid from postmaster.pid.
func postmasterPID(dataDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	return pid, nil
}

// deleteTopics removes the topics and consumer groups an in-process run
// made on a real broker.
func deleteTopics(kcfg kafkax.Config, topics kafkax.Topics, cfg *Config) {
	sc := sarama.NewConfig()
	sc.Version = kafkax.Version
	sc.ClientID = "sagaflow-bench"
	admin, err := sarama.NewClusterAdmin(kcfg.Brokers, sc)
	if err != nil {
		cfg.Logger.Warn("delete the run's topics", "err", err)
		return
	}
	defer admin.Close()
	var errs []error
	for _, c := range append([]string{}, kafkax.Consumers...) {
		if err := admin.DeleteConsumerGroup(topics.Group(c)); err != nil && !errors.Is(err, sarama.ErrGroupIDNotFound) {
			errs = append(errs, fmt.Errorf("group %s: %w", topics.Group(c), err))
		}
	}
	for _, t := range topics.All() {
		if err := admin.DeleteTopic(t); err != nil && !errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
			errs = append(errs, fmt.Errorf("topic %s: %w", t, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		cfg.Logger.Warn("delete the run's topics and groups (use --keep-topics to keep them)", "err", err)
	}
}
