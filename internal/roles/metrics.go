package roles

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/overview"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/telemetry"
)

// outboxSchemas are the schemas whose outboxes the relay drains.
var outboxSchemas = outbox.ServiceSchemas

// registry builds the process's Prometheus metrics: outbox backlog (rows and
// age of the oldest, read from the database at scrape time), relay
// throughput, saga engine counters, and the Go runtime.
func (s *Stack) registry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := telemetry.Register(reg); err != nil {
		panic(err) // a fresh registry: a name registered twice is a bug here
	}
	reg.MustRegister(&stateCollector{s: s, desc: prometheus.NewDesc("sagaflow_sagas",
		"Sagas in each state, read from the database at scrape time.", []string{"state"}, nil)})
	if s.cfg.Kafka.Brokers != nil {
		reg.MustRegister(&lagCollector{s: s, desc: prometheus.NewDesc("sagaflow_consumer_lag_messages",
			"Messages a consumer group has not read yet (the broker's end offsets minus the group's committed offsets), at scrape time.",
			[]string{"group", "topic"}, nil)})
	}
	reg.MustRegister(&backlogCollector{s: s,
		rows: prometheus.NewDesc("sagaflow_outbox_backlog_rows", "Outbox rows waiting to be published.", []string{"outbox"}, nil),
		age:  prometheus.NewDesc("sagaflow_outbox_oldest_age_seconds", "Age of the oldest outbox row waiting to be published.", []string{"outbox"}, nil),
		slotLag: prometheus.NewDesc("sagaflow_outbox_slot_lag_bytes",
			"WAL the relay's replication slot holds back (current WAL end minus its confirmed position).", []string{"slot"}, nil),
		slotActive: prometheus.NewDesc("sagaflow_outbox_slot_active",
			"1 while a relay streams from the replication slot, 0 when none does.", []string{"slot"}, nil),
		parked: prometheus.NewDesc("sagaflow_outbox_parked_rows",
			"Outbox rows parked because Kafka will never accept them; `sagaflow parked` lists, retries or discards them.", []string{"outbox"}, nil),
	})
	if s.Relay != nil {
		relay := s.Relay
		for _, schema := range outboxSchemas {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "sagaflow_relay_published_total", Help: "Outbox rows this process's relay published.",
				ConstLabels: prometheus.Labels{"outbox": schema},
			}, func() float64 {
				for _, st := range relay.Stats() {
					if st.Schema == schema {
						return float64(st.Published)
					}
				}
				return 0
			}))
		}
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sagaflow_relay_parked_total", Help: "Outbox rows this process's relay parked because Kafka will never accept them (see `sagaflow parked`).",
		}, func() float64 { return float64(relay.Parked()) }))
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sagaflow_relay_slots_recreated_total", Help: "Replication slots this process's relay found lost and created again.",
		}, func() float64 { return float64(relay.SlotsRecreated()) }))
		for by, get := range map[string]func() int64{
			"commit_log": func() int64 { l, _ := relay.Visibility(); return l },
			"snapshot":   func() int64 { _, r := relay.Visibility(); return r },
		} {
			reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name:        "sagaflow_relay_visibility_checks_total",
				Help:        "How the WAL relay knew a streamed batch visible: commit_log counts batches this process committed (no round trip), snapshot the server snapshots read for the others.",
				ConstLabels: prometheus.Labels{"by": by},
			}, func() float64 { return float64(get()) }))
		}
	}
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "sagaflow_consumer_transient_giveups_total",
		Help: "Messages dead-lettered because every delivery failed with a transient error that may be their own (statement timeout, serialization failure).",
	}, func() float64 { return float64(outbox.TransientGiveUps()) }))
	engine := s.Engine
	for name, get := range map[string]func() int64{
		"started":        func() int64 { return engine.Metrics().Started },
		"completed":      func() int64 { return engine.Metrics().Completed },
		"cancelled":      func() int64 { return engine.Metrics().Cancelled },
		"stale_replies":  func() int64 { return engine.Metrics().StaleReplies },
		"timeouts":       func() int64 { return engine.Metrics().Timeouts },
		"stuck":          func() int64 { return engine.Metrics().Stuck },
		"deadlines_held": func() int64 { return engine.Metrics().DeadlinesHeld },
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "sagaflow_saga_" + name + "_total", Help: "Sagas " + name + " by this process's engine.",
		}, func() float64 { return float64(get()) }))
	}
	return reg
}

type backlogCollector struct {
	s                                      *Stack
	rows, age, slotLag, slotActive, parked *prometheus.Desc
}

func (c *backlogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rows
	ch <- c.age
	ch <- c.slotLag
	ch <- c.slotActive
	ch <- c.parked
}

func (c *backlogCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, schema := range outboxSchemas {
		b, err := outbox.New(schema).Backlog(ctx, c.s.cfg.Pool)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.rows, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.rows, prometheus.GaugeValue, float64(b.Rows), schema)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, b.OldestAge.Seconds(), schema)
		parked, err := outbox.New(schema).CountParked(ctx, c.s.cfg.Pool)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(c.parked, err)
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(parked), schema)
	}
	slots, err := outbox.Slots(ctx, c.s.cfg.Pool)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.slotLag, err)
		return
	}
	for _, sl := range slots {
		active := 0.0
		if sl.Active {
			active = 1
		}
		ch <- prometheus.MustNewConstMetric(c.slotLag, prometheus.GaugeValue, float64(sl.LagBytes), sl.Name)
		ch <- prometheus.MustNewConstMetric(c.slotActive, prometheus.GaugeValue, active, sl.Name)
	}
}

// stateCollector counts the sagas in each state at scrape time (one
// grouped count on the (state, id) index).
type stateCollector struct {
	s    *Stack
	desc *prometheus.Desc
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := saga.CountByState(ctx, c.s.cfg.Pool)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, st := range overview.States {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
}

// lagCollector asks the broker for every Sagaflow consumer group's lag at
// scrape time (overview.LagTimeout at most).
type lagCollector struct {
	s    *Stack
	desc *prometheus.Desc
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	kafka := c.s.cfg.Kafka
	lags, err := overview.Lag(context.Background(), &kafka, c.s.cfg.Topics)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, l := range lags {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(l.Lag), l.Group, l.Topic)
	}
}

// serveMetrics serves /metrics on addr until ctx ends.
func (s *Stack) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	// OpenMetrics carries the histograms' exemplars (trace ids).
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry(), promhttp.HandlerOpts{EnableOpenMetrics: true}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
