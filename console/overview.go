package console

import (
	"html/template"
	"net/http"
	"time"

	"github.com/sagaflow/sagaflow/overview"
)

// overviewData is the overview page: what overview.Take returns (as GET
// /overview and `sagaflow overview` show it) and its charts.
type overviewData struct {
	*overview.Overview
	// Ended and Durations are the last hour's charts.
	Ended, Durations template.HTML
}

// allStates in the order the console shows them.
var allStates = overview.States

func (s *server) overview(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	now := time.Now()
	o, err := overview.Take(r.Context(), overview.Sources{Pool: s.cfg.Pool, Kafka: s.cfg.Kafka, Topics: s.cfg.Topics,
		DeadLetters: s.cfg.DeadLetters}, now)
	if err != nil {
		return "", view{}, err
	}
	d := overviewData{Overview: o, Ended: endedChart(o.Minutes, now), Durations: durationChart(o.Minutes, now)}
	return "overview", view{Title: "Overview", Nav: "overview", Data: d}, nil
}
