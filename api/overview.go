package api

import (
	"net/http"
	"time"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/overview"
)

// getOverview is GET /overview: the figures of the console's overview page
// (overview.Take).
func (s *server) getOverview(w http.ResponseWriter, r *http.Request) error {
	o, err := overview.Take(r.Context(), overview.Sources{Pool: s.cfg.Pool, Kafka: s.cfg.Kafka, Topics: s.cfg.Topics,
		DeadLetters: s.cfg.DeadLetters}, time.Now())
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, o)
	return nil
}

// asyncapi is GET /asyncapi.json: the wire contract (contract.AsyncAPI) on
// this deployment's topic and group names.
func (s *server) asyncapi(w http.ResponseWriter, _ *http.Request) error {
	topics := s.cfg.Topics
	if topics.SagaReplies == "" {
		topics = kafkax.DefaultTopics()
	}
	doc, err := contract.AsyncAPI(topics)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	_, err = w.Write(doc)
	return err
}
