package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/steps"
)

// The SKUs a run orders: Config.SKUs of them with more stock than any run
// takes (order n takes one unit of SKU n mod SKUs), and one that is sold
// out (the inventory refusal). One SKU makes every reservation queue for
// the same stock row lock: a hot-SKU benchmark.
const (
	SoldOutSKU = "bench-sold-out"
	// Stock is what each SKU is seeded with.
	Stock = 1_000_000_000
)

// SKU names the bench's i-th SKU.
func SKU(i int) string { return fmt.Sprintf("bench-sku-%04d", i) }

// stock is what a run seeds.
func stock(skus int) map[string]int {
	m := map[string]int{SoldOutSKU: 0}
	for i := range skus {
		m[SKU(i)] = Stock
	}
	return m
}

// kind is what an order is built to do: succeed, or be refused by one step
// through that step's business rules.
type kind int8

const (
	happy           kind = iota
	refuseInventory      // the sold-out SKU
	refusePayment        // a blocked customer
	refuseShipping       // an undeliverable country
	kinds
)

// mixKind decides order n's kind: a fraction refuse of the orders are
// refused, spread evenly over time (order n is refused when n·refuse and
// (n+1)·refuse have different integer parts) and, round robin, over the
// three steps.
func mixKind(n int64, refuse float64) kind {
	if refuse <= 0 {
		return happy
	}
	a, b := math.Floor(float64(n)*refuse), math.Floor(float64(n+1)*refuse)
	if b > a {
		return kind(1 + int64(a)%3)
	}
	return happy
}

// request builds the order of a kind for SKU sku.
func request(k kind, sku int) *order.PlaceRequest {
	r := &order.PlaceRequest{
		CustomerID: "bench-customer",
		Items:      []order.Item{{SKU: SKU(sku), Quantity: 1}},
		Amount:     order.Amount{Value: 1999, Currency: "EUR"},
		ShippingAddress: order.Address{Name: "Bench", Line1: "1 Load Street", City: "Berlin",
			PostalCode: "10115", Country: "DE"},
	}
	switch k {
	case refuseInventory:
		r.Items[0].SKU = SoldOutSKU
	case refusePayment:
		r.CustomerID = steps.BlockedCustomerPrefix + "bench-customer"
	case refuseShipping:
		r.ShippingAddress.Country = steps.DefaultBlockedCountries[0]
	}
	return r
}

// placer places one order, of kind k for the sku-th SKU, and returns its
// saga id.
type placer interface {
	place(ctx context.Context, key string, k kind, sku int) (uuid.UUID, error)
}

// httpPlacer posts orders to the API, retrying (with the same idempotency
// key, so never twice) when the API is unreachable or answers 5xx or 429.
type httpPlacer struct {
	client *http.Client
	url    string
	bodies [kinds][][]byte // by kind and SKU
	// rejected times every 503 and 429 answer (an overloaded API's: each
	// is retried), from the request's send to its answer.
	rejected Histogram
}

func newHTTPPlacer(base string, skus int) *httpPlacer {
	p := &httpPlacer{
		url: strings.TrimRight(base, "/") + "/orders",
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				MaxIdleConns:        4096,
				MaxIdleConnsPerHost: 4096,
				IdleConnTimeout:     90 * time.Second,
			},
		},
	}
	for k := range kinds {
		for i := range skus {
			b, _ := json.Marshal(request(k, i))
			p.bodies[k] = append(p.bodies[k], b)
		}
	}
	return p
}

// retryFor bounds how long a placement is retried.
const retryFor = 10 * time.Second

func (p *httpPlacer) place(ctx context.Context, key string, k kind, sku int) (uuid.UUID, error) {
	deadline := time.Now().Add(retryFor)
	backoff := 50 * time.Millisecond
	for {
		id, retry, after, err := p.post(ctx, key, p.bodies[k][sku])
		if err == nil || !retry || time.Now().After(deadline) {
			return id, err
		}
		wait := backoff
		if after > 0 { // a well-behaved client waits as the server asks
			wait = after
		}
		select {
		case <-ctx.Done():
			return uuid.Nil, err
		case <-time.After(wait):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// post sends one placement; after is the answer's Retry-After (0: none).
func (p *httpPlacer) post(ctx context.Context, key string, body []byte) (id uuid.UUID, retry bool, after time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return uuid.Nil, false, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(api.HeaderIdempotencyKey, key)
	sent := time.Now()
	resp, err := p.client.Do(req)
	if err != nil {
		return uuid.Nil, ctx.Err() == nil, 0, fmt.Errorf("POST %s: %w", p.url, err)
	}
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if err != nil {
		return uuid.Nil, true, 0, fmt.Errorf("POST %s: read answer: %w", p.url, err)
	}
	if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests {
		p.rejected.Record(time.Since(sent))
	}
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		retry := resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			after = time.Duration(secs) * time.Second
		}
		return uuid.Nil, retry, after, fmt.Errorf("POST %s answered %d: %s", p.url, resp.StatusCode, firstLine(string(answer)))
	}
	var placed api.PlaceResponse
	if err := json.Unmarshal(answer, &placed); err != nil || placed.SagaID == uuid.Nil {
		return uuid.Nil, false, 0, fmt.Errorf("POST %s: answer without a saga_id: %s", p.url, firstLine(string(answer)))
	}
	return placed.SagaID, false, 0, nil
}

// directPlacer calls the order service in process, without HTTP.
type directPlacer struct {
	orders *order.Service
	reqs   [kinds][]*order.PlaceRequest // by kind and SKU
}

func newDirectPlacer(orders *order.Service, skus int) *directPlacer {
	p := &directPlacer{orders: orders}
	for k := range kinds {
		for i := range skus {
			p.reqs[k] = append(p.reqs[k], request(k, i))
		}
	}
	return p
}

func (p *directPlacer) place(ctx context.Context, key string, k kind, sku int) (uuid.UUID, error) {
	placed, err := p.orders.Place(ctx, key, p.reqs[k][sku])
	if err != nil {
		return uuid.Nil, err
	}
	return placed.SagaID, nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// tracked is a placed saga.
type tracked struct {
	start    time.Time // intended (open loop) or actual (closed loop) send time
	measured bool
	expect   string        // the order event type the order's kind should end in
	done     chan struct{} // closed when it ends, for a closed-loop worker
	slot     bool          // holds an open-loop in-flight slot
	ended    bool
	endType  string    // the terminal event's type
	endAt    time.Time // when it was received
}

type earlyEvent struct {
	typ string
	at  time.Time
}

// tracker matches terminal order events to placed sagas and keeps the
// counts and latencies. An event can arrive before the POST that started its
// saga has returned: it waits in early until the saga id is known.
type tracker struct {
	mStart, mEnd time.Time // the measured window
	slots        chan struct{}

	mu          sync.Mutex
	sagas       map[uuid.UUID]*tracked
	early       map[uuid.UUID]earlyEvent
	measuredIDs []uuid.UUID
	errSamples  []string

	latency Histogram // measured sagas, POST to terminal event
	all     Histogram // every saga (progress during the warm-up)
	post    Histogram // POST answer time of measured sagas

	begun, ended, failed atomic.Int64
	inWindow             atomic.Int64 // terminal events received in the measured window
	placedM, endedM      atomic.Int64 // measured sagas
	confirmed, cancelled atomic.Int64 // measured sagas
	unexpected           atomic.Int64
	expectedRefusals     atomic.Int64 // measured sagas built to be refused
	maxLag               atomic.Int64 // open loop: most a send was behind schedule (ns)
	unsent               atomic.Int64 // open loop: scheduled but never sent
	placedAll            atomic.Int64
}

func newTracker(mStart, mEnd time.Time, maxInflight int) *tracker {
	return &tracker{mStart: mStart, mEnd: mEnd, slots: make(chan struct{}, maxInflight),
		sagas: map[uuid.UUID]*tracked{}, early: map[uuid.UUID]earlyEvent{}}
}

func (t *tracker) inflight() int64 { return t.begun.Load() - t.ended.Load() - t.failed.Load() }

// setWindow sets the measured window. The load's goroutines, which read it
// without the lock, start after it is set.
func (t *tracker) setWindow(mStart, mEnd time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.mStart, t.mEnd = mStart, mEnd
}

// prime places one order and waits for its saga to end, before the clock
// starts: a fresh stack's roles report ready once their consumers joined
// their routers, which is not yet a saga end to end (a consumer group may
// still be taking its partitions), and a slow first saga would otherwise
// fill the warm-up and the measured window with the start-up. It returns how long the saga took; a saga that does not end
// within limit fails the run, since then no measurement would mean
// anything.
func prime(ctx context.Context, p placer, t *tracker, key string, limit time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	start := time.Now()
	done := make(chan struct{})
	t.begun.Add(1)
	id, err := p.place(ctx, key, happy, 0)
	if err != nil {
		t.fail(err, false)
		return 0, fmt.Errorf("place a first order: %w", err)
	}
	t.placed(id, &tracked{start: start, expect: order.EventConfirmed, done: done})
	select {
	case <-done:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("the first saga (%s) did not end within %s: is every role running, and is Kafka reachable?", id, limit)
	}
}

func (t *tracker) measuredAt(start time.Time) bool {
	return !start.Before(t.mStart) && start.Before(t.mEnd)
}

// fail records a placement that failed.
func (t *tracker) fail(err error, slot bool) {
	t.failed.Add(1)
	if slot {
		<-t.slots
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.errSamples) < 5 {
		t.errSamples = append(t.errSamples, err.Error())
	}
}

// placed records a placed saga; it ends at once if its event came first.
func (t *tracker) placed(id uuid.UUID, rec *tracked) {
	t.placedAll.Add(1)
	t.mu.Lock()
	defer t.mu.Unlock()
	if rec.measured {
		t.placedM.Add(1)
		t.measuredIDs = append(t.measuredIDs, id)
	}
	if old, ok := t.sagas[id]; ok {
		// The same saga answered twice (an idempotent replay): count it once.
		if rec.slot {
			<-t.slots
		}
		if rec.done != nil && old.ended {
			close(rec.done)
		}
		t.ended.Add(1)
		return
	}
	t.sagas[id] = rec
	if e, ok := t.early[id]; ok {
		delete(t.early, id)
		t.finish(rec, e.typ, e.at)
	}
}

// event takes an order event received at at.
func (t *tracker) event(ev order.Event, at time.Time) {
	if ev.Type != order.EventConfirmed && ev.Type != order.EventCancelled {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	rec, ok := t.sagas[ev.SagaID]
	if !ok {
		if _, dup := t.early[ev.SagaID]; !dup {
			t.early[ev.SagaID] = earlyEvent{ev.Type, at}
		}
		return
	}
	if !rec.ended { // a redelivered event changes nothing
		t.finish(rec, ev.Type, at)
	}
}

// finish ends a saga; t.mu is held.
func (t *tracker) finish(rec *tracked, typ string, at time.Time) {
	rec.ended, rec.endType, rec.endAt = true, typ, at
	t.ended.Add(1)
	if !at.Before(t.mStart) && at.Before(t.mEnd) {
		t.inWindow.Add(1)
	}
	lat := at.Sub(rec.start)
	t.all.Record(lat)
	if rec.measured {
		t.latency.Record(lat)
		t.endedM.Add(1)
		if typ == order.EventConfirmed {
			t.confirmed.Add(1)
		} else {
			t.cancelled.Add(1)
		}
		if typ != rec.expect {
			t.unexpected.Add(1)
		}
	}
	if rec.done != nil {
		close(rec.done)
	}
	if rec.slot {
		<-t.slots
	}
}

// prune forgets early events older than age: they belong to sagas this run
// did not place (another client of a shared topic).
func (t *tracker) prune(age time.Duration) {
	cut := time.Now().Add(-age)
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, e := range t.early {
		if e.at.Before(cut) {
			delete(t.early, id)
		}
	}
}

func (t *tracker) ids() []uuid.UUID {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]uuid.UUID(nil), t.measuredIDs...)
}

// confirmedAt returns when each measured saga's OrderConfirmed arrived.
func (t *tracker) confirmedAt() map[uuid.UUID]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[uuid.UUID]time.Time{}
	for _, id := range t.measuredIDs {
		if rec := t.sagas[id]; rec != nil && rec.ended && rec.endType == order.EventConfirmed {
			out[id] = rec.endAt
		}
	}
	return out
}

func (t *tracker) samples() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.errSamples...)
}

// loader drives the load.
type loader struct {
	t       *tracker
	p       placer
	refuse  float64
	skus    int
	keyBase string
	t0, end time.Time // the load runs from t0 (warm-up first) to end
	settle  time.Duration
	next    atomic.Int64
}

// placeOne places order n, meant to be sent at start; done (closed loop)
// is closed when it ends. It reports whether the order was placed.
func (l *loader) placeOne(ctx context.Context, n int64, start time.Time, slot bool, done chan struct{}) bool {
	t := l.t
	k := mixKind(n, l.refuse)
	measured := t.measuredAt(start)
	t.begun.Add(1)
	sent := time.Now()
	id, err := l.p.place(ctx, l.keyBase+strconv.FormatInt(n, 10), k, int(n%int64(l.skus)))
	if measured {
		t.post.Record(time.Since(sent))
	}
	if err != nil {
		t.fail(err, slot)
		return false
	}
	expect := order.EventConfirmed
	if k != happy {
		expect = order.EventCancelled
		if measured {
			t.expectedRefusals.Add(1)
		}
	}
	t.placed(id, &tracked{start: start, measured: measured, expect: expect, done: done, slot: slot})
	return true
}

// openLoop sends order i at t0 + i/rate whatever the answers, so a slow
// system cannot slow the load down and hide its latency (coordinated
// omission): a saga's latency counts from its scheduled time. At most
// cap(slots) sagas are in flight; when that many are, sends wait (and their
// latency includes the wait). A schedule that falls more than settle behind
// stops; what it did not send counts as unsent.
func (l *loader) openLoop(ctx context.Context, rate float64) {
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	giveUp := time.NewTimer(time.Until(l.end.Add(l.settle)))
	defer giveUp.Stop()
	total := int64(math.Ceil(l.end.Sub(l.t0).Seconds() * rate))
	for i := int64(0); ; i++ {
		at := l.t0.Add(time.Duration(float64(i) * float64(time.Second) / rate))
		if !at.Before(l.end) {
			return
		}
		if d := time.Until(at); d > 0 {
			timer.Reset(d)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-giveUp.C:
			l.t.unsent.Store(max(total-i, 0))
			return
		case l.t.slots <- struct{}{}:
		}
		if lag := int64(time.Since(at)); lag > l.t.maxLag.Load() {
			l.t.maxLag.Store(lag)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.placeOne(ctx, i, at, true, nil)
		}()
	}
}

// closedLoop runs n workers, each placing an order and waiting for its
// saga to end before the next; a saga's latency counts from its send.
func (l *loader) closedLoop(ctx context.Context, n int) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for range n {
		wg.Go(func() {
			timer := time.NewTimer(time.Hour)
			defer timer.Stop()
			for ctx.Err() == nil && time.Now().Before(l.end) {
				done := make(chan struct{})
				if !l.placeOne(ctx, l.next.Add(1)-1, time.Now(), false, done) {
					select {
					case <-ctx.Done():
					case <-time.After(20 * time.Millisecond):
					}
					continue
				}
				timer.Reset(l.settle)
				select {
				case <-ctx.Done():
				case <-done:
				case <-timer.C: // it counts as unfinished
				}
			}
		})
	}
}
