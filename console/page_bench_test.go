package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/console"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// pages serves a console on a database holding 10,000 stuck sagas and one
// saga with 20,000 history rows (the sizes the console must handle).
func pages(b *testing.B) (srv *httptest.Server, big string) {
	b.Helper()
	db := testenv.DB(b)
	ctx := context.Background()
	big = "0193b5a2-7c1e-7d3f-9a4b-000000000001"
	for _, sql := range []string{
		`INSERT INTO saga.instances (id, type, state, step, attempt, data, reason, deadline, created_at)
		SELECT gen_random_uuid(), 'order', 'stuck', 1, 10, '{}', 'compensation of payment unanswered', now() + interval '1 hour', now() - n * interval '1 second'
		FROM generate_series(1, 10000) AS n`,
		`INSERT INTO saga.instances (id, type, state, step, attempt, data, deadline) VALUES ($1, 'order', 'running', 1, 1, '{}', now() + interval '1 hour')`,
		`INSERT INTO saga.history (saga_id, step, kind, attempt, event, reason, at)
		SELECT $1, 'payment', 'action', n / 2, CASE WHEN n % 2 = 0 THEN 'sent' ELSE 'timed out' END, 'resending', now() - (20000 - n) * interval '1 millisecond'
		FROM generate_series(1, 20000) AS n`,
		`ANALYZE saga.instances`,
		`ANALYZE saga.history`,
	} {
		var args []any
		if strings.Contains(sql, "$1") {
			args = append(args, big)
		}
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			b.Fatal(err)
		}
	}
	engine, err := saga.NewEngine(db.Pool, slog.Default())
	if err != nil {
		b.Fatal(err)
	}
	svc := order.NewService(db.Pool, engine, "order.events")
	if err := engine.Define(svc.NewDefinition(order.SagaConfig{Topics: kafkax.DefaultTopics()})); err != nil {
		b.Fatal(err)
	}
	h, err := console.New(console.Config{Base: "", Pool: db.Pool, Engine: engine})
	if err != nil {
		b.Fatal(err)
	}
	srv = httptest.NewServer(h)
	b.Cleanup(srv.Close)
	return srv, big
}

func get(b *testing.B, url string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	_, err = io.Copy(io.Discard, resp.Body) // the whole page, as a browser reads it
	resp.Body.Close()
	if err != nil {
		b.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
}

// The list of stuck sagas (10,000 of them), first page and a later one;
// the overview; a saga with a 20,000-row history.
func BenchmarkConsolePages(b *testing.B) {
	srv, big := pages(b)
	for _, p := range []struct{ name, path string }{
		{"sagas-stuck-10k", "/sagas?state=stuck"},
		{"sagas-stuck-10k-page-100", "/sagas?state=stuck&before=ffffffff-ffff-ffff-ffff-ffffffffffff&age=80m"},
		{"overview-10k", "/"},
		{"saga-history-20k", "/sagas/" + big},
		{"saga-history-20k-last-page", "/sagas/" + big + "?after=19800"},
	} {
		b.Run(p.name, func(b *testing.B) {
			for b.Loop() {
				get(b, srv.URL+p.path)
			}
		})
	}
}
