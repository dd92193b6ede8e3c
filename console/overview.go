package console

import (
	"context"
	"html/template"
	"net/http"
	"time"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// overviewData is the overview page.
type overviewData struct {
	States []stateCount
	// Ended, P50 and P99 are the last hour's charts.
	Ended, Durations template.HTML
	EndedTotal       int64
	Outboxes         []outboxRow
	Lag              []lagRow
	LagError         string
	DeadLetters      []countRow
	DeadTotal        int64
}

type stateCount struct {
	State saga.State
	Count int64
}

type outboxRow struct {
	Schema    string
	Rows      int64
	OldestAge time.Duration
	Parked    int64
}

type lagRow struct {
	Group string
	Topic string
	Lag   int64
}

type countRow struct {
	Name  string
	Count int64
}

// allStates in the order the console shows them.
var allStates = []saga.State{saga.Running, saga.Compensating, saga.Stuck, saga.Completed, saga.Compensated, saga.Failed}

func (s *server) overview(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	ctx := r.Context()
	var d overviewData
	counts, err := saga.CountByState(ctx, s.cfg.Pool)
	if err != nil {
		return "", view{}, err
	}
	for _, st := range allStates {
		d.States = append(d.States, stateCount{st, counts[st]})
	}
	now := time.Now()
	minutes, err := saga.Throughput(ctx, s.cfg.Pool, now.Add(-time.Hour))
	if err != nil {
		return "", view{}, err
	}
	for _, m := range minutes {
		d.EndedTotal += m.Ended
	}
	d.Ended, d.Durations = endedChart(minutes, now), durationChart(minutes, now)
	for _, schema := range outbox.ServiceSchemas {
		ob := outbox.New(schema)
		b, err := ob.Backlog(ctx, s.cfg.Pool)
		if err != nil {
			return "", view{}, err
		}
		parked, err := ob.CountParked(ctx, s.cfg.Pool)
		if err != nil {
			return "", view{}, err
		}
		d.Outboxes = append(d.Outboxes, outboxRow{Schema: schema, Rows: b.Rows, OldestAge: b.OldestAge, Parked: parked})
	}
	if s.cfg.Kafka != nil {
		d.Lag, err = s.lag(ctx)
		if err != nil {
			d.LagError = err.Error()
		}
	}
	if s.cfg.DeadLetters != nil {
		groups, err := s.cfg.DeadLetters.Groups(ctx, deadletterAll, 1000)
		if err != nil {
			return "", view{}, err
		}
		by := map[string]int64{}
		var order []string
		for _, g := range groups {
			if _, seen := by[g.ConsumerGroup]; !seen {
				order = append(order, g.ConsumerGroup)
			}
			by[g.ConsumerGroup] += g.Count
			d.DeadTotal += g.Count
		}
		for _, c := range order {
			d.DeadLetters = append(d.DeadLetters, countRow{c, by[c]})
		}
	}
	return "overview", view{Title: "Overview", Nav: "overview", Data: d}, nil
}

// lag asks the broker for every Sagaflow consumer group's lag, within 3 s.
func (s *server) lag(ctx context.Context) ([]lagRow, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	groups := make(map[string][]string, len(kafkax.Consumers))
	for _, c := range kafkax.Consumers {
		groups[s.cfg.Topics.Group(c)] = []string{s.cfg.Topics.ConsumedBy(c)}
	}
	lags, err := s.cfg.Kafka.GroupLags(ctx, groups)
	if err != nil {
		return nil, err
	}
	var rows []lagRow
	for _, c := range kafkax.Consumers {
		group := s.cfg.Topics.Group(c)
		var lag int64
		for _, p := range lags[group] {
			lag += p.Lag
		}
		rows = append(rows, lagRow{Group: group, Topic: s.cfg.Topics.ConsumedBy(c), Lag: lag})
	}
	return rows, nil
}
