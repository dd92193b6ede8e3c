package api_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/api"
)

func TestHealthz(t *testing.T) {
	t.Parallel()
	e := setup(t)
	res := e.do(http.MethodGet, "/healthz", "")
	var h api.Health
	res.decode(t, &h)
	if res.status != http.StatusOK || h.Status != "ok" {
		t.Errorf("healthz: %d %s", res.status, res.body)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		ready  func(context.Context) error
		status int
		checks map[string]string // check: a prefix of its state
	}{
		{"no kafka check", nil, http.StatusOK, map[string]string{"database": "ok"}},
		{"kafka reachable", func(context.Context) error { return nil }, http.StatusOK, map[string]string{"database": "ok", "kafka": "ok"}},
		{"kafka down", func(context.Context) error { return errors.New("kafka unreachable at 127.0.0.1:1") }, http.StatusServiceUnavailable,
			map[string]string{"database": "ok", "kafka": "down: kafka unreachable"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, func(_ *env, cfg *api.Config) { cfg.Ready = tc.ready })
			res := e.do(http.MethodGet, "/readyz", "")
			var checks map[string]string
			if tc.status == http.StatusOK {
				var h api.Health
				res.decode(t, &h)
				if res.status != http.StatusOK || h.Status != "ready" {
					t.Fatalf("readyz: %d %s", res.status, res.body)
				}
				checks = h.Checks
			} else {
				p := res.problem(t, tc.status)
				if p.Type != api.TypeUnavailable || !strings.Contains(p.Detail, "kafka") || strings.Contains(p.Detail, "database") {
					t.Errorf("problem %+v", p)
				}
				checks = p.Checks
			}
			if len(checks) != len(tc.checks) {
				t.Errorf("checks %v, want %v", checks, tc.checks)
			}
			for name, want := range tc.checks {
				if !strings.HasPrefix(checks[name], want) {
					t.Errorf("check %s: %q, want %q…", name, checks[name], want)
				}
			}
		})
	}
}

func TestRequestsAreLogged(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.do(http.MethodGet, "/healthz", "")
	e.srv.Close() // waits for the handlers, so their log lines are written
	logs := e.logs.String()
	for _, want := range []string{`level=DEBUG`, `msg="http request"`, `method=GET`, `path=/healthz`, `status=200`, `pattern="GET /healthz"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("request log lacks %s:\n%s", want, logs)
		}
	}
}
