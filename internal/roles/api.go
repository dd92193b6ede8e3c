package roles

import (
	"net/http"
	"time"

	"github.com/sagaflow/sagaflow/api"
)

// ConsolePath is where the api role serves the operator console.
const ConsolePath = "/ui"

// Timeouts of the API's HTTP server besides the request's own
// (api.Config.RequestTimeout).
const (
	// apiHeaderTimeout bounds reading a request's headers: a client that
	// trickles them (slowloris) holds a connection no longer.
	apiHeaderTimeout = 5 * time.Second
	// apiWriteMargin is how much longer than the request timeout the
	// server gives a handler to write its answer: a request out of time
	// still gets its 503.
	apiWriteMargin = 5 * time.Second
	// apiIdleTimeout closes a kept-alive connection idle that long.
	apiIdleTimeout = 60 * time.Second
)

// newAPIServer is the API's HTTP server. Every wait has a bound: headers
// (apiHeaderTimeout), the whole request with its body (the request
// timeout: a body that never arrives ends there), the handler (the request
// timeout, inside the API), the answer (the request timeout and
// apiWriteMargin) and an idle connection (apiIdleTimeout). Load beyond
// cfg.MaxInFlight is answered 503 by the API.
func newAPIServer(cfg api.Config, ui http.Handler) *http.Server {
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = api.DefaultRequestTimeout
	}
	var handler http.Handler = api.New(cfg)
	if ui != nil {
		mux := http.NewServeMux()
		mux.Handle(ConsolePath+"/", http.StripPrefix(ConsolePath, ui))
		mux.Handle("/", handler)
		handler = mux
	}
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: apiHeaderTimeout,
		ReadTimeout:       timeout,
		WriteTimeout:      timeout + apiWriteMargin,
		IdleTimeout:       apiIdleTimeout,
	}
}
