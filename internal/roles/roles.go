// Package roles assembles Sagaflow's services from its packages and runs
// them: the order API, the orchestrator (reply consumer and deadline
// sweeper), the three participants, and the outbox relay with inbox
// retention and the dead-letter ingester. `sagaflow serve --role …` runs
// one role per process (several instances of each may run); `sagaflow dev`
// and the tests run them all in one process.
package roles

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/console"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/jaeger"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// The roles.
const (
	API          = "api"
	Orchestrator = "orchestrator"
	Inventory    = "inventory"
	Payment      = "payment"
	Shipping     = "shipping"
	Relay        = "relay"
	All          = "all"
)

// DeadLetterGroup is the consumer (group name suffix) of the dead-letter
// ingester, which the relay role runs.
const DeadLetterGroup = "deadletters"

// Names lists every role but All.
var Names = []string{API, Orchestrator, Inventory, Payment, Shipping, Relay}

// Config is what the roles need.
type Config struct {
	Pool   *pgxpool.Pool
	Kafka  kafkax.Config
	Topics kafkax.Topics
	// Roles to run; All runs every one.
	Roles []string
	// HTTPAddr is where the API listens (role api).
	HTTPAddr string
	// Listener, when set, is used instead of listening on HTTPAddr.
	Listener net.Listener
	// Saga tunes the order saga's timeouts and attempts.
	Saga order.SagaConfig
	// AllowInjection lets participants honour failure injection (order
	// field inject, and Inject); off unless switched on explicitly.
	AllowInjection bool
	// Inject is a default injection mode per participant.
	Inject map[string]string
	// Crash ends the process for crash-before/after-commit injection
	// (default: exit).
	Crash func(point string)
	// DuplicateRelay makes the relay publish every row twice (a test switch).
	DuplicateRelay bool
	// OutboxMode is how the relay learns of committed rows (default
	// outbox.ModeAuto: streamed from the WAL wherever the database allows).
	OutboxMode outbox.Mode
	// SweepInterval of the deadline sweeper (default 1 s: a step is noticed overdue at most a second late, and an idle process does not query four times a second).
	SweepInterval time.Duration
	// DeliveryStallAfter: while the oldest unpublished row of any outbox is
	// older than this, the deadline sweeper holds overdue steps instead of
	// counting them as attempts (default 3 s; negative never holds). See
	// saga.Engine.SetDeliveryCheck.
	DeliveryStallAfter time.Duration
	// InboxRetention is how long inbox rows are kept (default 7 days).
	InboxRetention time.Duration
	// DeadLetterRetention is how long recorded dead letters are kept
	// (default deadletter.DefaultRetention; negative: for ever).
	DeadLetterRetention time.Duration
	// MetricsAddr, when set, serves Prometheus metrics at /metrics there.
	MetricsAddr string
	Logger      *slog.Logger

	// APIPool, when set, is the API's own database pool (placements, reads),
	// so that the other roles' work — participants retrying against a sick
	// database — cannot take every connection the API needs (default: Pool).
	// Set it up with dbpool.BoundAcquire, so that AcquireTimeout applies.
	// Operator actions run on the engine, on Pool.
	APIPool *pgxpool.Pool
	// OperatorTokens may call the API's operator actions (api.Config's
	// Operators; none refuses them).
	OperatorTokens *api.Tokens
	// ProtectReads puts the API's reads behind an operator token, and the
	// console behind its sign-in.
	ProtectReads bool
	// ReadOnly makes the console show no action and the API refuse every
	// operator action.
	ReadOnly bool
	// TraceURL links the console's saga pages to their traces (a URL with
	// {trace_id}).
	TraceURL string
	// CommandSchemaVersion, when not zero, is the schema version of the
	// commands the orchestrator writes (saga.Engine.SetCommandVersion): the
	// one before the newest while participants are being upgraded.
	CommandSchemaVersion int
	// TraceQuery is Jaeger's query API (http://HOST:16686): the console
	// draws each saga's trace from it. Empty: it does not.
	TraceQuery string
	// SchemaIDs, when set, are the schema registry's ids of each topic's
	// schema: the relay sends in the Confluent wire format (see
	// outbox.RelayConfig.SchemaIDs). Consumers read both formats anyway.
	SchemaIDs map[string]int
	// MaxInFlight, RequestTimeout and AcquireTimeout bound the API's work
	// (api.Config's; zero takes its defaults). The HTTP server's read and
	// write timeouts follow RequestTimeout.
	MaxInFlight int
	// MaxSagasInFlight is the API's admission bound (api.Config).
	MaxSagasInFlight int
	RequestTimeout   time.Duration
	AcquireTimeout   time.Duration
}

// Stack is a set of running roles.
type Stack struct {
	cfg    Config
	Engine *saga.Engine
	Orders *order.Service
	Relay  *outbox.Relay
	// Ingester records dead letters (role relay).
	Ingester *deadletter.Ingester
	// Addr is the API's address once it listens.
	Addr string

	ready chan struct{}
}

func (c *Config) has(role string) bool {
	return slices.Contains(c.Roles, role) || slices.Contains(c.Roles, All)
}

// New builds the stack (nothing runs until Run).
func New(cfg Config) (*Stack, error) {
	for _, r := range cfg.Roles {
		if r != All && !slices.Contains(Names, r) {
			return nil, fmt.Errorf("unknown role %q (roles: %v or all)", r, Names)
		}
	}
	if len(cfg.Roles) == 0 {
		return nil, errors.New("no role to run")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Topics.SagaReplies == "" {
		cfg.Topics = kafkax.DefaultTopics()
	}
	cfg.Saga.Topics = cfg.Topics
	engine, err := saga.NewEngine(cfg.Pool, cfg.Logger)
	if err != nil {
		return nil, err
	}
	if cfg.DeliveryStallAfter == 0 {
		cfg.DeliveryStallAfter = DefaultDeliveryStallAfter
	}
	if cfg.DeliveryStallAfter > 0 {
		engine.SetDeliveryCheck(deliveryCheck(cfg.Pool, outboxSchemas, cfg.DeliveryStallAfter))
	}
	if cfg.CommandSchemaVersion != 0 {
		if err := engine.SetCommandVersion(cfg.CommandSchemaVersion); err != nil {
			return nil, err
		}
	}
	orders := order.NewService(cfg.Pool, engine, cfg.Topics.OrderEvents)
	if err := engine.Define(orders.NewDefinition(cfg.Saga)); err != nil {
		return nil, err
	}
	return &Stack{cfg: cfg, Engine: engine, Orders: orders, ready: make(chan struct{})}, nil
}

// DefaultDeliveryStallAfter is Config.DeliveryStallAfter's default: the WAL
// relay publishes a row well within a second of its commit even at full
// load on a small machine, so three seconds means it cannot.
const DefaultDeliveryStallAfter = 3 * time.Second

// deliveryCheck reports a stall while the oldest row waiting in any of the
// schemas' outboxes is older than after: the relay cannot publish (broker
// down, a partition without leader, no relay running), so commands are not
// reaching participants or replies are not reaching the orchestrator.
func deliveryCheck(pool *pgxpool.Pool, schemas []string, after time.Duration) saga.DeliveryCheck {
	obs := make([]*outbox.Outbox, len(schemas))
	for i, sc := range schemas {
		obs[i] = outbox.New(sc)
	}
	return func(ctx context.Context) (string, error) {
		for _, ob := range obs {
			age, err := ob.OldestAge(ctx, pool)
			if err != nil {
				return "", err
			}
			if age > after {
				return fmt.Sprintf("delivery stalled: a message has waited %s in outbox %s", age.Round(100*time.Millisecond), ob.Schema()), nil
			}
		}
		return "", nil
	}
}

// Ready is closed once every role started (the API listens, consumers
// joined their groups' routers).
func (s *Stack) Ready() <-chan struct{} { return s.ready }

// Run runs the roles until ctx ends, then stops them and returns. It fails
// fast when a role cannot start.
func (s *Stack) Run(ctx context.Context) error {
	cfg := s.cfg
	log := cfg.Logger
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Kafka.Logger == nil {
		cfg.Kafka.Logger = log // the replication decision (Info) and each topic difference (Warn)
	}
	if err := cfg.Kafka.EnsureTopics(ctx, cfg.Topics.All()...); err != nil {
		return err // with StrictTopics: each topic and setting that differs
	}
	if cfg.has(Relay) { // the relay role purges the inboxes with this window
		window := cfg.InboxRetention
		if window <= 0 {
			window = outbox.DefaultInboxRetention
		}
		if err := cfg.Kafka.CheckInboxRetention(ctx, window, cfg.Topics.Consumed()...); err != nil {
			return fmt.Errorf("inbox retention: %w", err)
		}
	}
	wlog := kafkax.Logger(log)

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	goRun := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()

	// Consumers: one watermill router for every consumer role.
	var router *message.Router
	consumerRoles := []string{}
	for _, r := range []string{Orchestrator, Inventory, Payment, Shipping} {
		if cfg.has(r) {
			consumerRoles = append(consumerRoles, r)
		}
	}
	if len(consumerRoles) > 0 {
		var err error
		router, err = message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, wlog)
		if err != nil {
			return fmt.Errorf("create router: %w", err)
		}
		dlq, err := cfg.Kafka.NewPublisher(wlog)
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = dlq.Close() })
		for _, r := range consumerRoles {
			sub, err := cfg.Kafka.NewSubscriber(cfg.Topics.Group(r), wlog)
			if err != nil {
				return err
			}
			closers = append(closers, func() { _ = sub.Close() })
			if err := s.register(router, r, sub, dlq); err != nil {
				return err
			}
		}
		goRun("consumers", router.Run)
	}
	if cfg.has(Orchestrator) {
		goRun("deadline sweeper", func(ctx context.Context) error {
			return s.Engine.RunSweeper(ctx, cfg.SweepInterval, 100)
		})
	}
	if cfg.has(Relay) {
		producer, err := cfg.Kafka.NewRelayProducer()
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = producer.Close() })
		schemas := outboxSchemas
		var obs []*outbox.Outbox
		for _, sc := range schemas {
			obs = append(obs, outbox.New(sc))
		}
		relay, err := outbox.NewRelay(outbox.RelayConfig{Pool: cfg.Pool, Outboxes: obs, Producer: producer,
			Mode: cfg.OutboxMode, DuplicateEach: cfg.DuplicateRelay, SchemaIDs: cfg.SchemaIDs, Logger: log})
		if err != nil {
			return err
		}
		s.Relay = relay
		goRun("relay", relay.Run)
		retention := outbox.NewRetention(outbox.RetentionConfig{Pool: cfg.Pool, Schemas: schemas, Window: cfg.InboxRetention, Logger: log})
		goRun("inbox retention", retention.Run)
		ingester := deadletter.NewIngester(deadletter.IngesterConfig{Kafka: cfg.Kafka, Topics: cfg.Topics.DeadLetterTopics(),
			Group: cfg.Topics.Group(DeadLetterGroup), Store: deadletter.NewStore(cfg.Pool), Retention: cfg.DeadLetterRetention, Logger: log})
		s.Ingester = ingester
		goRun("dead-letter ingester", ingester.Run)
	}
	if cfg.has(API) {
		var injection func(string) error
		if cfg.AllowInjection {
			injection = steps.CheckInjection
		}
		ln := cfg.Listener
		if ln == nil {
			var err error
			ln, err = net.Listen("tcp", cfg.HTTPAddr)
			if err != nil {
				return fmt.Errorf("listen on %s (is the port in use? choose another with --http): %w", cfg.HTTPAddr, err)
			}
		}
		s.Addr = ln.Addr().String()
		pool, orders := cfg.Pool, s.Orders
		if cfg.APIPool != nil {
			pool, orders = cfg.APIPool, order.NewService(cfg.APIPool, s.Engine, cfg.Topics.OrderEvents)
		}
		replayPub, err := cfg.Kafka.NewPublisher(wlog)
		if err != nil {
			return err
		}
		closers = append(closers, func() { _ = replayPub.Close() })
		deadLetters := deadletter.NewStore(pool)
		replayer := deadletter.NewReplayer(deadLetters, replayPub)
		kafka := cfg.Kafka
		var traces *jaeger.Client
		if cfg.TraceQuery != "" {
			traces = jaeger.New(cfg.TraceQuery)
		}
		// With protected reads the console asks operators to sign in.
		ui, err := console.New(console.Config{Base: ConsolePath, Pool: pool, Engine: s.Engine, DeadLetters: deadLetters,
			Replayer: replayer, Kafka: &kafka, Topics: cfg.Topics, Operators: cfg.OperatorTokens, ReadOnly: cfg.ReadOnly,
			RequireLogin: cfg.ProtectReads, TraceURL: cfg.TraceURL, Traces: traces, Logger: log})
		if err != nil {
			return err
		}
		srv := newAPIServer(api.Config{Pool: pool, Orders: orders, Engine: s.Engine, Logger: log, Injection: injection,
			DeadLetters: deadLetters, Replayer: replayer, Stock: stock{pool}, ReadOnly: cfg.ReadOnly, Kafka: &kafka, Topics: cfg.Topics,
			Ready:     func(ctx context.Context) error { return cfg.Kafka.Ping(ctx) },
			Operators: cfg.OperatorTokens, ProtectReads: cfg.ProtectReads,
			MaxInFlight: cfg.MaxInFlight, MaxSagasInFlight: cfg.MaxSagasInFlight, RequestTimeout: cfg.RequestTimeout, AcquireTimeout: cfg.AcquireTimeout}, ui)
		goRun("api", func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				sctx, c := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer c()
				_ = srv.Shutdown(sctx)
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	if cfg.MetricsAddr != "" {
		goRun("metrics", func(ctx context.Context) error { return s.serveMetrics(ctx, cfg.MetricsAddr) })
	}
	if router != nil {
		select {
		case <-router.Running():
		case <-ctx.Done():
		}
	}
	close(s.ready)
	log.Info("sagaflow roles running", "roles", cfg.Roles, "api", s.Addr)

	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func (s *Stack) register(router *message.Router, role string, sub message.Subscriber, dlq message.Publisher) error {
	cfg := s.cfg
	if role == Orchestrator {
		return s.Engine.Register(router, saga.OrchestratorConfig{
			Group: cfg.Topics.Group(Orchestrator), RepliesTopic: cfg.Topics.SagaReplies, Subscriber: sub,
			DeadLetter: dlq, DeadLetterTopic: cfg.Topics.DeadLetter(Orchestrator), Logger: cfg.Logger,
		})
	}
	scfg := steps.Config{Pool: cfg.Pool, Topics: cfg.Topics, AllowInjection: cfg.AllowInjection,
		Inject: cfg.Inject[role], Crash: cfg.Crash, Logger: cfg.Logger}
	var p *steps.Participant
	var err error
	switch role {
	case Inventory:
		p, err = steps.NewInventory(scfg)
	case Payment:
		p, err = steps.NewPayment(scfg)
	case Shipping:
		p, err = steps.NewShipping(scfg)
	}
	if err != nil {
		return err
	}
	return p.Register(router, sub, dlq)
}

// stock adapts the inventory participant's stock table to the API.
type stock struct{ pool *pgxpool.Pool }

func (s stock) List(ctx context.Context, after string, limit int) ([]api.StockLevel, error) {
	levels, err := steps.ListStock(ctx, s.pool, after, limit)
	out := make([]api.StockLevel, len(levels))
	for i, l := range levels {
		out[i] = api.StockLevel{SKU: l.SKU, Available: l.Available, Held: l.Held}
	}
	return out, err
}

func (s stock) Set(ctx context.Context, sku string, available int) (api.StockLevel, error) {
	l, err := steps.SetStock(ctx, s.pool, sku, available)
	return api.StockLevel{SKU: l.SKU, Available: l.Available, Held: l.Held}, err
}
