package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/registry"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
	"github.com/sagaflow/sagaflow/telemetry"
)

// commonFlags are the connection flags every service command takes.
type commonFlags struct {
	databaseURL string
	brokers     string
	partitions  int
	replication int
	topicPrefix string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	// No env default here: the usage would print it, password and all.
	fs.StringVar(&c.databaseURL, "database-url", "", "PostgreSQL connection string (default $DATABASE_URL)")
	fs.StringVar(&c.brokers, "kafka-brokers", env("KAFKA_BROKERS", ""), "Kafka bootstrap brokers, comma separated (default $KAFKA_BROKERS)")
	fs.IntVar(&c.partitions, "partitions", 0, fmt.Sprintf("partitions of topics created at start-up (0: %d; an existing topic keeps its count, and only a count set here is compared with it)", kafkax.DefaultPartitions))
	fs.IntVar(&c.replication, "replication-factor", 0, "replication factor of topics created at start-up (0: min(3, brokers in the cluster), with min.insync.replicas one less, at least 1)")
	fs.StringVar(&c.topicPrefix, "topic-prefix", env("SAGAFLOW_TOPIC_PREFIX", ""), "prefix of every topic and consumer group name")
}

// dbURL is --database-url, or $DATABASE_URL without it.
func (c *commonFlags) dbURL() string {
	if c.databaseURL != "" {
		return c.databaseURL
	}
	return os.Getenv("DATABASE_URL")
}

// checkBrokers refuses an explicitly empty broker list (--kafka-brokers ""
// or KAFKA_BROKERS set but empty, as a failed broker start leaves it):
// commands that fall back to embedded Kafka without brokers would
// otherwise measure or serve the wrong thing without a word.
func (c *commonFlags) checkBrokers(fs *flag.FlagSet) error {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "kafka-brokers" })
	if _, inEnv := os.LookupEnv("KAFKA_BROKERS"); !explicit && !inEnv {
		return nil
	}
	if len(kafkax.ParseBrokers(c.brokers)) == 0 {
		return errors.New("--kafka-brokers (or $KAFKA_BROKERS) is set but names no broker: give host:port[,host:port…], or leave both unset for embedded Kafka")
	}
	return nil
}

func (c *commonFlags) kafka(clientID string) kafkax.Config {
	return kafkax.Config{Brokers: kafkax.ParseBrokers(c.brokers), Partitions: int32(c.partitions),
		ReplicationFactor: int16(c.replication), ClientID: clientID}
}

func (c *commonFlags) topics() kafkax.Topics {
	if c.topicPrefix == "" {
		return kafkax.DefaultTopics()
	}
	return kafkax.PrefixedTopics(c.topicPrefix)
}

// pool opens a pool on the database, failing fast with one clear line.
func (c *commonFlags) pool(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	url := c.dbURL()
	if url == "" {
		return nil, errors.New("no database: set DATABASE_URL or pass --database-url postgres://user@host:port/db")
	}
	return openPool(ctx, url, maxConns)
}

// openPool opens a pool of at most maxConns connections (0: pgxpool's
// default) on the database at url, set up as every Sagaflow pool is
// (dbpool.Configure) and able to bound the API's waits for a connection
// (dbpool.BoundAcquire), and checks that the database answers.
func openPool(ctx context.Context, url string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("bad --database-url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	dbpool.Configure(cfg)
	if err := dbpool.BoundAcquire(cfg); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database unreachable at %s: %w", redact(url), err)
	}
	return pool, nil
}

// apiFlags bound the API's work (serve and dev).
type apiFlags struct {
	maxInFlight      int
	maxSagasInFlight int
	dbMaxConns       int
}

// defaultAPIDBMaxConns is the default size of the API's own pool: a
// placement holds a connection for a few milliseconds, so 8 serve well
// over a thousand a second.
const defaultAPIDBMaxConns = 8

func (a *apiFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&a.maxInFlight, "max-inflight", api.DefaultMaxInFlight,
		"requests the API handles at once; beyond them it answers 503 with Retry-After: 1 at once (/healthz and /readyz exempt; negative: no bound)")
	fs.IntVar(&a.maxSagasInFlight, "max-sagas-inflight", api.DefaultMaxSagasInFlight,
		"admission: while more sagas are running or compensating, POST /orders answers 503 with Retry-After (about throughput × step timeout; negative: no bound)")
	fs.IntVar(&a.dbMaxConns, "api-db-max-conns", defaultAPIDBMaxConns,
		"size of the API's own database pool, apart from --db-max-conns, so that the other roles cannot take every connection the API needs")
}

func (a *apiFlags) check() error {
	if a.dbMaxConns < 1 {
		return fmt.Errorf("--api-db-max-conns %d: the API needs at least one connection", a.dbMaxConns)
	}
	if a.maxInFlight == 0 {
		return errors.New("--max-inflight 0 would refuse every request: give a bound, or a negative number for none")
	}
	if a.maxSagasInFlight == 0 {
		return errors.New("--max-sagas-inflight 0 would refuse every order: give a bound, or a negative number for none")
	}
	return nil
}

// servesAPI reports whether the roles include the API.
func servesAPI(names []string) bool {
	return slices.Contains(names, roles.API) || slices.Contains(names, roles.All)
}

// operatorTokens loads the operator tokens of --operator-tokens FILE and of
// $SAGAFLOW_OPERATOR_TOKENS.
func operatorTokens(file string) (*api.Tokens, error) {
	return api.LoadTokens(file, os.Getenv(api.EnvOperatorTokens))
}

// describeOperators says, without a token, who may call operator actions.
func describeOperators(tokens *api.Tokens) string {
	if tokens.Len() == 0 {
		return "none: operator actions are refused (give tokens with --operator-tokens FILE or $" + api.EnvOperatorTokens + ")"
	}
	return strings.Join(tokens.Names(), ", ")
}

func redact(url string) string {
	if at := strings.LastIndex(url, "@"); at > 0 {
		if scheme := strings.Index(url, "://"); scheme > 0 && scheme < at {
			return url[:scheme+3] + "…" + url[at:]
		}
	}
	return url
}

// sagaFlags tune the order saga.
type sagaFlags struct {
	stepTimeout          time.Duration
	attempts             int
	compensationAttempts int
	deadline             time.Duration
	stallAfter           time.Duration
}

func (s *sagaFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&s.stepTimeout, "step-timeout", 5*time.Second, "how long a step's first attempt waits for its reply")
	fs.IntVar(&s.attempts, "attempts", 3, "attempts per step action before it fails")
	fs.IntVar(&s.compensationAttempts, "compensation-attempts", 10, "attempts per compensation before the saga is stuck")
	fs.DurationVar(&s.deadline, "saga-deadline", 5*time.Minute, "deadline of a whole saga")
	fs.DurationVar(&s.stallAfter, "delivery-stall-after", roles.DefaultDeliveryStallAfter,
		"while a message waits longer than this in an outbox, overdue steps are held, not counted as attempts (negative: never)")
}

func (s *sagaFlags) config() order.SagaConfig {
	return order.SagaConfig{StepTimeout: s.stepTimeout, Attempts: s.attempts, CompensationAttempts: s.compensationAttempts, Deadline: s.deadline}
}

// injectFlags parse per-participant failure injection.
func parseInject(specs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs {
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part == "" {
				continue
			}
			name, mode, ok := strings.Cut(part, ":")
			if !ok || (name != roles.Inventory && name != roles.Payment && name != roles.Shipping) || mode == "" {
				return nil, fmt.Errorf("bad --inject %q: want participant:mode, e.g. payment:refuse", part)
			}
			if err := steps.CheckInjection(mode); err != nil {
				return nil, fmt.Errorf("bad --inject %q: %w", part, err)
			}
			out[name] = mode
		}
	}
	return out, nil
}

func runServe(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("serve")
	var c commonFlags
	c.register(fs)
	var sf sagaFlags
	sf.register(fs)
	role := fs.String("role", "all", "role to run: api, orchestrator, inventory, payment, shipping, relay, or all (comma separated)")
	httpAddr := fs.String("http", env("SAGAFLOW_HTTP", "127.0.0.1:8080"), "API listen address (role api)")
	allowInjection := fs.Bool("allow-fault-injection", false, "let participants honour failure injection (order field inject, --inject); for tests and demos only")
	inject := fs.String("inject", env("SAGAFLOW_INJECT", ""), "default failure injection, participant:mode[,…] (needs --allow-fault-injection)")
	outboxMode := fs.String("outbox", env("SAGAFLOW_OUTBOX", "auto"), "how the relay learns of committed outbox rows: wal (a logical replication slot; needs wal_level=logical and a REPLICATION role), poll (reads the tables in a loop), or auto (wal where the database allows it)")
	duplicate := fs.Bool("duplicate-relay", false, "publish every outbox row twice (test switch: proves the inboxes absorb duplicates)")
	migrate := fs.Bool("migrate", false, "apply migrations before starting")
	maxConns := fs.Int("db-max-conns", 16, "database pool size (of every role but the API's placements and reads: --api-db-max-conns)")
	var af apiFlags
	af.register(fs)
	tokenFile := fs.String("operator-tokens", "", "file of operator tokens, one name:token a line (# comments); the API's operator actions need one, "+
		"and the name is recorded as who acted; $"+api.EnvOperatorTokens+" may hold more (name:token, comma separated). None: operator actions are refused")
	protectReads := fs.Bool("protect-reads", false, "the API's reads (GET /orders/{id}, GET /sagas…) need an operator token too (POST /orders, /healthz, /readyz stay open), and the console asks operators to sign in with their token")
	readOnly := fs.Bool("console-read-only", false, "the console at /ui/ shows no action and the API refuses every operator action")
	schemaRegistry := fs.String("schema-registry", env("SAGAFLOW_SCHEMA_REGISTRY", ""), "Confluent-compatible schema registry API (e.g. http://127.0.0.1:18081/apis/ccompat/v7): register the wire contract's schemas under each topic's subject at start, and refuse to start if the registry refuses them")
	schemaCompat := fs.String("schema-compatibility", registry.DefaultCompatibility, "compatibility level set on each subject ("+strings.Join(registry.Compatibilities, ", ")+")")
	traceURL := fs.String("trace-url", env("SAGAFLOW_TRACE_URL", ""), "link each saga's console page to its trace: a URL with {trace_id} (Jaeger: http://HOST:16686/trace/{trace_id})")
	commandVersion := fs.Int("command-schema-version", 0, fmt.Sprintf("schema version of the commands the orchestrator writes: %d (the newest, default) or %d, while participants that read only %d are upgraded (consumers first); replies come back in the version asked", saga.SchemaVersion, saga.SchemaVersion-1, saga.SchemaVersion-1))
	traceQuery := fs.String("trace-query", env("SAGAFLOW_TRACE_QUERY", ""), "Jaeger's query API (http://HOST:16686): the console draws each saga's trace from it")
	metricsAddr := fs.String("metrics", env("SAGAFLOW_METRICS", ""), "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9090); off when empty")
	strictTopics := fs.Bool("strict-topics", false, "refuse to start when an existing topic has fewer partitions, another replication factor or another min.insync.replicas than configured (default: warn)")
	inboxRetention := fs.Duration("inbox-retention", outbox.DefaultInboxRetention, "how long inboxes remember applied message ids; must exceed each consumed topic's retention.ms + segment.ms (checked at start)")
	deadRetention := fs.Duration("dead-letter-retention", deadletter.DefaultRetention, "how long the relay role keeps recorded dead letters (sagaflow dlq, the console); negative: for ever")
	allowInfinite := fs.Bool("allow-infinite-retention", false, "accept consumed topics that keep messages for ever (retention.ms -1 or compacted), which no inbox retention covers")
	instanceID := fs.String("instance-id", env("SAGAFLOW_INSTANCE_ID", ""), "stable id of this instance (e.g. a pod name): static consumer-group membership, so a restart takes its partitions back at once")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := c.checkBrokers(fs); err != nil {
		return err
	}
	mode, err := outbox.ParseMode(*outboxMode)
	if err != nil {
		return err
	}
	injected, err := parseInject([]string{*inject})
	if err != nil {
		return err
	}
	if len(injected) > 0 && !*allowInjection {
		return errors.New("--inject needs --allow-fault-injection: failure injection is never on by accident")
	}
	if err := af.check(); err != nil {
		return err
	}
	tokens, err := operatorTokens(*tokenFile)
	if err != nil {
		return err
	}
	if *protectReads && tokens.Len() == 0 {
		return errors.New("--protect-reads needs operator tokens: give them with --operator-tokens FILE (one name:token a line) or $" + api.EnvOperatorTokens)
	}
	roleNames := strings.Split(*role, ",")
	if *migrate {
		if err := runMigrate(ctx, []string{"--database-url", c.dbURL()}, stdout); err != nil {
			return err
		}
	}
	pool, err := c.pool(ctx, int32(*maxConns))
	if err != nil {
		return err
	}
	defer pool.Close()
	var apiPool *pgxpool.Pool
	if servesAPI(roleNames) {
		if apiPool, err = c.pool(ctx, int32(af.dbMaxConns)); err != nil {
			return err
		}
		defer apiPool.Close()
	}
	kcfg := c.kafka("sagaflow-" + strings.ReplaceAll(*role, ",", "-"))
	kcfg.InstanceID = *instanceID
	kcfg.StrictTopics = *strictTopics
	kcfg.AllowInfiniteRetention = *allowInfinite
	if err := kcfg.Ping(ctx); err != nil {
		return err
	}
	var schemaIDs map[string]int
	if *schemaRegistry != "" {
		if schemaIDs, err = registerContract(ctx, pool, *schemaRegistry, c.topics(), *schemaCompat, stdout); err != nil {
			return err
		}
	}
	stopTracing, err := startTracing(ctx, "sagaflow-"+strings.ReplaceAll(*role, ",", "-"))
	if err != nil {
		return err
	}
	defer stopTracing()
	stack, err := roles.New(roles.Config{
		Pool: pool, Kafka: kcfg, Topics: c.topics(), Roles: roleNames, HTTPAddr: *httpAddr,
		Saga: sf.config(), DeliveryStallAfter: sf.stallAfter, AllowInjection: *allowInjection, Inject: injected, DuplicateRelay: *duplicate,
		OutboxMode: mode, Crash: crash, MetricsAddr: *metricsAddr,
		APIPool: apiPool, OperatorTokens: tokens, ProtectReads: *protectReads, ReadOnly: *readOnly, TraceURL: *traceURL, TraceQuery: *traceQuery, CommandSchemaVersion: *commandVersion, SchemaIDs: schemaIDs, MaxInFlight: af.maxInFlight, MaxSagasInFlight: af.maxSagasInFlight, InboxRetention: *inboxRetention, DeadLetterRetention: *deadRetention,
	})
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-stack.Ready():
			fmt.Fprintf(stdout, "sagaflow serve: roles %s running (pid %d)\n", *role, os.Getpid())
			if stack.Addr != "" {
				fmt.Fprintf(stdout, "  API at http://%s\n", stack.Addr)
				fmt.Fprintf(stdout, "  operators: %s\n", describeOperators(tokens))
			}
		case <-ctx.Done():
		}
	}()
	return stack.Run(ctx)
}

// crash ends the process at an injected crash point, as kill -9 would: no
// deferred clean-up, no commit, no ack.
func crash(point string) {
	fmt.Fprintf(os.Stderr, "sagaflow: injected crash at %s\n", point)
	os.Exit(3)
}

// startTracing turns tracing on when the OTEL_* environment asks for it
// (telemetry.Setup); the returned func flushes the spans, within 5 s.
func startTracing(ctx context.Context, service string) (stop func(), err error) {
	shutdown, err := telemetry.Setup(ctx, service)
	if err != nil {
		return nil, err
	}
	if telemetry.Enabled() {
		slog.Info("tracing on: spans are exported over OTLP", "service", service)
	}
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			slog.Warn("flush traces", "err", err)
		}
	}, nil
}

// registerContract registers the wire contract's schemas in the registry
// at url, within 30 s, remembers the ids in the database, and returns each
// topic's newest schema id (the relay's wire format); a refusal stops the
// process from starting. While the registry is unreachable, the ids an
// earlier start remembered serve, so an outage does not stop traffic.
func registerContract(ctx context.Context, db registry.DB, url string, topics kafkax.Topics, compat string, stdout io.Writer) (map[string]int, error) {
	if !slices.Contains(registry.Compatibilities, compat) {
		return nil, fmt.Errorf("--schema-compatibility %q is not one of %s", compat, strings.Join(registry.Compatibilities, ", "))
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	regs, err := registry.RegisterContract(ctx, registry.New(url), topics, compat)
	var ie *registry.IncompatibleError
	if errors.As(err, &ie) {
		return nil, fmt.Errorf("refusing to start: %w", err)
	}
	if registry.Unreachable(err) {
		known, ok, lerr := registry.Remembered(ctx, db, url, topics)
		if lerr != nil || !ok {
			return nil, fmt.Errorf("register the wire contract in the schema registry (and no ids are remembered from an earlier start): %w", err)
		}
		slog.Warn("the schema registry is unreachable: using the schema ids remembered from the last registration", "registry", url, "err", err)
		return idsOf(known), nil
	}
	if err != nil {
		return nil, fmt.Errorf("register the wire contract in the schema registry: %w", err)
	}
	if err := registry.Remember(ctx, db, url, regs); err != nil {
		return nil, err
	}
	for _, r := range regs {
		fmt.Fprintf(stdout, "schema %s v%d registered under %s (id %d, %s)\n", r.Schema, r.Version, r.Subject, r.ID, compat)
	}
	return idsOf(regs), nil
}

// idsOf maps each topic to its newest schema's id.
func idsOf(regs []registry.Registered) map[string]int {
	ids := map[string]int{}
	for _, r := range regs {
		ids[r.Topic] = r.ID // versions come oldest first: the newest wins
	}
	return ids
}
