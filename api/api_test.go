package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is one test's API on its own database.
type env struct {
	t      *testing.T
	srv    *httptest.Server
	pool   *pgxpool.Pool // the test database (also for counting rows)
	engine *saga.Engine
	orders *order.Service
	topics kafkax.Topics
	logs   *syncBuffer
}

// syncBuffer is a log destination safe for concurrent handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// setup builds a real order service and saga engine on a fresh database and
// serves the API; opts may change the configuration. Every answer is checked
// against the OpenAPI document (checkDoc).
func setup(t *testing.T, opts ...func(*env, *api.Config)) *env {
	t.Helper()
	db := testenv.DB(t)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	engine, err := saga.NewEngine(db.Pool, logger)
	if err != nil {
		t.Fatal(err)
	}
	topics := kafkax.PrefixedTopics(testenv.Name(t, "api") + ".")
	svc := order.NewService(db.Pool, engine, topics.OrderEvents)
	if err := engine.Define(svc.NewDefinition(order.SagaConfig{Topics: topics})); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, pool: db.Pool, engine: engine, orders: svc, topics: topics, logs: logs}
	cfg := api.Config{Pool: db.Pool, Orders: svc, Engine: engine, Logger: logger}
	for _, o := range opts {
		o(e, &cfg)
	}
	e.srv = httptest.NewServer(checkDoc(t, api.New(cfg)))
	t.Cleanup(e.srv.Close)
	return e
}

// response is an answer, read whole.
type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends a request; header holds name, value pairs.
func (e *env) do(method, path, body string, header ...string) *response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return e.send(method, path, rd, header...)
}

// send sends a request with a body reader.
func (e *env) send(method, path string, rd io.Reader, header ...string) *response {
	e.t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return &response{status: res.StatusCode, header: res.Header, body: b}
}

// place posts an order with an idempotency key.
func (e *env) place(key, body string) *response {
	e.t.Helper()
	return e.do(http.MethodPost, "/orders", body, "Content-Type", "application/json", api.HeaderIdempotencyKey, key)
}

// mustPlace places an order and returns its answer.
func (e *env) mustPlace(key, body string) api.PlaceResponse {
	e.t.Helper()
	res := e.place(key, body)
	if res.status != http.StatusAccepted {
		e.t.Fatalf("place: status %d: %s", res.status, res.body)
	}
	var p api.PlaceResponse
	res.decode(e.t, &p)
	return p
}

func (r *response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

// problem checks that r is a problem with the status and returns it.
func (r *response) problem(t testing.TB, status int) api.Problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != api.ContentTypeProblem {
		t.Fatalf("Content-Type %q, want %q", ct, api.ContentTypeProblem)
	}
	var p api.Problem
	r.decode(t, &p)
	if p.Status != status || p.Type == "" || p.Title == "" {
		t.Fatalf("problem %+v lacks type, title or status %d", p, status)
	}
	return p
}

// counts are the rows a placement writes.
type counts struct{ orders, sagas, commands, events int }

func (e *env) counts() counts {
	e.t.Helper()
	var c counts
	err := e.pool.QueryRow(context.Background(), `SELECT
	(SELECT count(*) FROM orders.orders), (SELECT count(*) FROM saga.instances),
	(SELECT count(*) FROM saga.outbox), (SELECT count(*) FROM orders.outbox)`).Scan(&c.orders, &c.sagas, &c.commands, &c.events)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// exec runs SQL on the test database.
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

// --- the OpenAPI document ---

type openAPIDoc struct {
	OpenAPI    string                                 `json:"openapi"`
	Paths      map[string]map[string]openAPIOperation `json:"paths"`
	Components struct {
		Responses map[string]openAPIResponse `json:"responses"`
	} `json:"components"`
}

type openAPIOperation struct {
	OperationID string                     `json:"operationId"`
	Responses   map[string]openAPIResponse `json:"responses"`
}

type openAPIResponse struct {
	Ref     string                     `json:"$ref"`
	Content map[string]json.RawMessage `json:"content"`
}

var (
	docOnce sync.Once
	doc     openAPIDoc
	docErr  error
)

// loadDoc reads openapi.json, the file the server embeds.
func loadDoc(t testing.TB) *openAPIDoc {
	t.Helper()
	docOnce.Do(func() {
		b, err := os.ReadFile("openapi.json")
		if err == nil {
			err = json.Unmarshal(b, &doc)
		}
		docErr = err
	})
	if docErr != nil {
		t.Fatalf("openapi.json: %v", docErr)
	}
	return &doc
}

// operation finds the documented operation of a request.
func (d *openAPIDoc) operation(method, path string) (string, *openAPIOperation) {
	for tmpl, ops := range d.Paths {
		re := "^" + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(tmpl), `[^/]+`) + "$"
		if !regexp.MustCompile(re).MatchString(path) {
			continue
		}
		if op, ok := ops[strings.ToLower(method)]; ok {
			return tmpl, &op
		}
	}
	return "", nil
}

// response resolves the documented response of a status.
func (d *openAPIDoc) response(op *openAPIOperation, status int) (openAPIResponse, bool) {
	r, ok := op.Responses[strconv.Itoa(status)]
	if !ok {
		r, ok = op.Responses["default"]
	}
	if ok && r.Ref != "" {
		r, ok = d.Components.Responses[strings.TrimPrefix(r.Ref, "#/components/responses/")]
	}
	return r, ok
}

// checkDoc serves h and fails t when an answer of a documented operation
// has a status or a content type its documentation does not list. The
// answer is buffered so that the check happens before the client sees it.
func checkDoc(t *testing.T, h http.Handler) http.Handler {
	d := loadDoc(t)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if r.Method != http.MethodHead {
			if tmpl, op := d.operation(r.Method, r.URL.Path); op != nil {
				ct := rec.Header().Get("Content-Type")
				resp, ok := d.response(op, rec.Code)
				switch {
				case !ok:
					t.Errorf("%s %s answered %d, which openapi.json does not document for %s %s: %s", r.Method, r.URL, rec.Code, r.Method, tmpl, rec.Body)
				case len(resp.Content) > 0 && resp.Content[mediaType(ct)] == nil:
					t.Errorf("%s %s answered %d as %q, which openapi.json does not document", r.Method, r.URL, rec.Code, ct)
				}
			}
			if rec.Code >= 400 && rec.Header().Get("Content-Type") != api.ContentTypeProblem {
				t.Errorf("%s %s answered %d as %q, not a problem", r.Method, r.URL, rec.Code, rec.Header().Get("Content-Type"))
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
	})
}

func mediaType(ct string) string {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.TrimSpace(mt)
}
