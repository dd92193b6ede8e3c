package roles_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/internal/dbpool"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/order"
)

// answerBound is how long these tests wait for an answer the API must give
// promptly: far more than a slow machine needs, far less than a hang.
const answerBound = 15 * time.Second

// openPool opens a pool of size conns on the database at url, set up as
// serve sets up its pools.
func openPool(t *testing.T, url string, conns int32) *pgxpool.Pool {
	t.Helper()
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pc.MaxConns = conns
	dbpool.Configure(pc)
	if err := dbpool.BoundAcquire(pc); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// request sends a request that must be answered within answerBound.
func (e *env) request(method, path string, body []byte, header ...string) (int, http.Header, []byte) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), answerBound)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, e.base+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header, b
}

// The API has its own database pool: with every connection of the other
// roles' pool taken (participants retrying against a sick database would
// do that), orders are still accepted and read; once the connections come
// back, the saga runs to its end.
func TestAPIHasItsOwnPool(t *testing.T) {
	t.Parallel()
	var shared *pgxpool.Pool
	e := setup(t, func(c *roles.Config) {
		url := c.Pool.Config().ConnString()
		shared = openPool(t, url, 3)
		c.Pool, c.APIPool = shared, openPool(t, url, 2)
	})
	ctx, cancel := context.WithTimeout(context.Background(), answerBound)
	defer cancel()
	var held []*pgxpool.Conn
	release := func() {
		for _, c := range held {
			c.Release()
		}
		held = nil
	}
	t.Cleanup(release)
	for range shared.Config().MaxConns {
		c, err := shared.Acquire(ctx)
		if err != nil {
			t.Fatalf("take the stack's connections: %v", err)
		}
		held = append(held, c)
	}

	code, _, b := e.request(http.MethodPost, "/orders", orderBody(oneItem("sku-1", 1), nil, "DE"),
		"Content-Type", "application/json", "Idempotency-Key", "own-pool")
	if code != http.StatusAccepted {
		t.Fatalf("POST /orders with the stack's pool taken: %d %s", code, b)
	}
	var p placed
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	if code, _, b := e.request(http.MethodGet, "/orders/"+p.OrderID.String(), nil); code != http.StatusOK {
		t.Errorf("GET /orders/{id} with the stack's pool taken: %d %s", code, b)
	}
	release()
	deadline := time.Now().Add(time.Minute)
	for {
		status, reason := e.orderStatus(p.OrderID)
		if status == string(order.Confirmed) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s is %s (%s) a minute after the connections came back", p.OrderID, status, reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A request whose body never arrives does not hold its connection and
// handler for ever: the server's read timeout (RequestTimeout) ends it.
func TestAPISlowBodyIsCut(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) {
		c.Roles = []string{roles.API}
		c.RequestTimeout = time.Second
	})
	conn, err := net.Dial("tcp", e.stack.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Headers promise 1000 bytes; one is sent.
	if _, err := io.WriteString(conn, "POST /orders HTTP/1.1\r\nHost: sagaflow\r\nContent-Type: application/json\r\n"+
		"Idempotency-Key: slow\r\nContent-Length: 1000\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(answerBound)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("the server still waits for the body after %s", answerBound)
	case err != nil:
		t.Logf("the server closed the connection after %s (%v)", time.Since(start).Round(time.Millisecond), err)
	default:
		resp.Body.Close()
		t.Logf("the server answered %d after %s", resp.StatusCode, time.Since(start).Round(time.Millisecond))
		if resp.StatusCode < 400 {
			t.Errorf("a request without its body answered %d", resp.StatusCode)
		}
	}
	var n int
	if err := e.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM orders.orders`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d orders (%v)", n, err)
	}
}

// The stack hands the operator tokens, ProtectReads and the limits to the
// API.
func TestAPIConfigReachesTheAPI(t *testing.T) {
	t.Parallel()
	tokens, err := api.ParseTokenList("ops:ops-token-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, func(c *roles.Config) {
		c.Roles = []string{roles.API}
		c.OperatorTokens = tokens
		c.ProtectReads = true
	})
	if code, h, _ := e.request(http.MethodGet, "/sagas", nil); code != http.StatusUnauthorized || h.Get("WWW-Authenticate") == "" {
		t.Errorf("GET /sagas without a token: %d", code)
	}
	if code, _, b := e.request(http.MethodGet, "/sagas", nil, "Authorization", "Bearer ops-token-0123456789"); code != http.StatusOK {
		t.Errorf("GET /sagas with the token: %d %s", code, b)
	}
	if code, _, _ := e.request(http.MethodPost, "/orders", orderBody(oneItem("sku-1", 1), nil, "DE"),
		"Content-Type", "application/json", "Idempotency-Key", "open"); code != http.StatusAccepted {
		t.Errorf("POST /orders without a token: %d", code)
	}
}

// GET /stock lists the inventory's stock; PUT /stock/{sku} sets a SKU's
// units for an operator (and adds a new SKU), refusing a negative quantity.
func TestStockRoutes(t *testing.T) {
	t.Parallel()
	tokens, err := api.ParseTokenList("ops:ops-token-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t, func(c *roles.Config) {
		c.Roles = []string{roles.API}
		c.OperatorTokens = tokens
	})
	op := []string{"Authorization", "Bearer ops-token-0123456789", "Content-Type", "application/json"}
	if code, _, b := e.request(http.MethodPut, "/stock/new-sku", []byte(`{"available":7}`), "Content-Type", "application/json"); code != http.StatusUnauthorized {
		t.Errorf("PUT /stock without a token: %d %s", code, b)
	}
	if code, _, b := e.request(http.MethodPut, "/stock/new-sku", []byte(`{"available":-1}`), op...); code != http.StatusUnprocessableEntity {
		t.Errorf("PUT /stock with -1: %d %s", code, b)
	}
	if code, _, b := e.request(http.MethodPut, "/stock/new-sku", []byte(`{"available":7}`), op...); code != http.StatusOK || !strings.Contains(string(b), `"available":7`) {
		t.Fatalf("PUT /stock/new-sku: %d %s", code, b)
	}
	code, _, b := e.request(http.MethodGet, "/stock?limit=2", nil)
	var list api.StockList
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil || len(list.Stock) != 2 || list.Next != "new-sku" {
		t.Fatalf("GET /stock?limit=2: %d %s", code, b)
	}
	var page2 api.StockList
	code, _, b = e.request(http.MethodGet, "/stock?after="+list.Next, nil)
	if code != http.StatusOK || json.Unmarshal(b, &page2) != nil || len(page2.Stock) != 2 || page2.Stock[1].SKU != "sku-2" || page2.Next != "" {
		t.Fatalf("GET /stock?after=new-sku: %d %s", code, b)
	}
}
