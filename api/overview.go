package api

import (
	"net/http"
	"time"

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
