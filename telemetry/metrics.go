package telemetry

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
)

// Sagaflow's Prometheus metrics of events (the gauges read from the
// database or the broker at scrape time are collected by the composition
// root). They are process-wide, like the tracer; Register adds them to a
// registry. Histograms carry the trace id of the span they were observed
// in as an exemplar (OpenMetrics), so that a slow bucket leads to a trace.
var (
	// SagaDuration is placement to terminal state, by saga type and
	// outcome (completed, compensated, failed).
	SagaDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sagaflow_saga_duration_seconds", Help: "Sagas from placement to their terminal state, by type and outcome.",
		Buckets: []float64{.025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"type", "outcome"})
	// StepLatency is a step's command written to its reply handled, by
	// step and kind (action, compensation).
	StepLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sagaflow_step_latency_seconds", Help: "A step's latest command written to its reply handled, by step and kind.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"step", "kind"})
	// StepTimeouts and Resends count the sweeper's work: steps whose
	// deadline passed, and commands it sent again.
	StepTimeouts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_step_timeouts_total", Help: "Steps whose deadline passed unanswered, by step and kind.",
	}, []string{"step", "kind"})
	Resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_step_resends_total", Help: "Commands the sweeper sent again after a timeout, by step and kind.",
	}, []string{"step", "kind"})
	// Duplicates counts redeliveries an inbox absorbed, by consumer.
	Duplicates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_inbox_duplicates_total", Help: "Messages an inbox had already applied (redeliveries, duplicates), by consumer.",
	}, []string{"consumer"})
	// DeadLetters counts messages dead-lettered, by consumer and reason
	// class: permanent (undecodable, unknown type, future version …),
	// retries_exhausted, transient_giveup.
	DeadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_dead_letters_total", Help: "Messages dead-lettered, by consumer and reason class.",
	}, []string{"consumer", "reason"})
	// TransientRetries counts handler runs retried after a transient
	// error (database unreachable, lost race), by consumer.
	TransientRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_consumer_transient_retries_total", Help: "Handler runs retried after a transient error, by consumer.",
	}, []string{"consumer"})
	// HTTPRequests and HTTPDuration are the API's requests by route
	// pattern, method and status.
	HTTPRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sagaflow_http_requests_total", Help: "API requests by route, method and status.",
	}, []string{"route", "method", "status"})
	HTTPDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "sagaflow_http_request_duration_seconds", Help: "API request handling time by route and method.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"route", "method"})
)

// Register adds Sagaflow's event metrics to reg.
func Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{SagaDuration, StepLatency, StepTimeouts, Resends, Duplicates, DeadLetters,
		TransientRetries, HTTPRequests, HTTPDuration} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Observe records d in h, with the trace id of ctx's span as exemplar when
// it has one.
func Observe(ctx context.Context, h prometheus.Observer, d time.Duration) {
	if ctx != nil {
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && sc.IsSampled() {
			if eo, ok := h.(prometheus.ExemplarObserver); ok {
				eo.ObserveWithExemplar(d.Seconds(), prometheus.Labels{"trace_id": sc.TraceID().String()})
				return
			}
		}
	}
	h.Observe(d.Seconds())
}
