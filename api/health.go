package api

import (
	"context"
	_ "embed"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// readyTimeout bounds each readiness check.
const readyTimeout = 2 * time.Second

// Health is the answer to GET /healthz and, when ready, GET /readyz.
type Health struct {
	Status string `json:"status"`
	// Checks is the state of each dependency (GET /readyz): "ok" or what
	// is wrong.
	Checks map[string]string `json:"checks,omitempty"`
}

// healthz is GET /healthz: the process is alive and serving.
func (s *server) healthz(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, Health{Status: "ok"})
	return nil
}

// readyz is GET /readyz: the database answers and Kafka is reachable.
func (s *server) readyz(w http.ResponseWriter, r *http.Request) error {
	checks := map[string]func(context.Context) error{"database": s.cfg.Pool.Ping}
	if s.cfg.Ready != nil {
		checks["kafka"] = s.cfg.Ready
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	results := map[string]string{}
	var down []string
	for name, check := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
			defer cancel()
			err := check(ctx)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				results[name] = "down: " + err.Error()
				down = append(down, name)
				return
			}
			results[name] = "ok"
		})
	}
	wg.Wait()
	if len(down) > 0 {
		sort.Strings(down)
		return &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "not ready: " + strings.Join(down, ", ") + " down", Checks: results}
	}
	writeJSON(w, http.StatusOK, Health{Status: "ready", Checks: results})
	return nil
}

//go:embed openapi.json
var openAPIDocument []byte

// openapi is GET /openapi.json.
func (s *server) openapi(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(openAPIDocument)
	return nil
}
