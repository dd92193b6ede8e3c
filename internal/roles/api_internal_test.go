package roles

import (
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/api"
)

// Every wait of the API's server is bounded, and a handler that runs to
// its request timeout still has time to write its answer.
func TestAPIServerTimeouts(t *testing.T) {
	t.Parallel()
	for _, rt := range []time.Duration{0, time.Second, time.Minute} {
		srv := newAPIServer(api.Config{RequestTimeout: rt}, nil)
		want := rt
		if want == 0 {
			want = api.DefaultRequestTimeout
		}
		if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout != want || srv.WriteTimeout <= want || srv.IdleTimeout <= 0 {
			t.Errorf("request timeout %s: header %s, read %s, write %s, idle %s", rt,
				srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout)
		}
	}
}
