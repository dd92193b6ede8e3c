package console_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/browsertest"
	"github.com/sagaflow/sagaflow/internal/roles"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The operator token of the tests.
const opToken = "ops-0123456789-abcdefghij"

// env is a Sagaflow stack (every role but those a test runs apart) on the
// test's database and topics, and a headless Chromium.
type env struct {
	t      *testing.T
	db     *testenv.Database
	kafka  kafkax.Config
	topics kafkax.Topics
	cfg    roles.Config
	base   string
	// browser is a tab of the test's Chromium.
	browser context.Context
}

func setup(t *testing.T, tweak func(*roles.Config)) *env {
	t.Helper()
	e := &env{t: t, db: testenv.DB(t), kafka: testenv.Kafka(t), topics: kafkax.PrefixedTopics(testenv.Name(t, "ui") + ".")}
	browsertest.Path(t)
	ctx := context.Background()
	if err := steps.SeedStock(ctx, e.db.Pool, map[string]int{"sku-1": 1000}); err != nil {
		t.Fatal(err)
	}
	tokens, err := api.ParseTokenList("ops:" + opToken)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = roles.Config{
		Pool: e.db.Pool, Kafka: e.kafka, Topics: e.topics, Roles: []string{roles.All},
		AllowInjection: true, SweepInterval: 50 * time.Millisecond, OperatorTokens: tokens,
		Crash: func(point string) { t.Errorf("unexpected injected crash at %s", point) },
	}
	e.cfg.Saga.StepTimeout = 30 * time.Second
	if tweak != nil {
		tweak(&e.cfg)
	}
	addr, _ := e.start(e.cfg)
	e.base = "http://" + addr
	e.browser = browsertest.Start(t)
	return e
}

// start runs a stack of cfg until the test ends or stop, and returns the
// API's address (empty without the api role).
func (e *env) start(cfg roles.Config) (addr string, stop func()) {
	e.t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Listener = ln
	stack, err := roles.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- stack.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				e.t.Errorf("stack: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	select {
	case <-stack.Ready():
	case err := <-done:
		e.t.Fatalf("stack did not start: %v", err)
	}
	return stack.Addr, stop
}

// do runs browser actions within a minute.
func (e *env) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.browser, time.Minute)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// text returns the text of the element sel.
func (e *env) text(sel string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.browser, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		e.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

// count returns how many elements match sel.
func (e *env) count(sel string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.browser, 30*time.Second)
	defer cancel()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", sel)))
	if err != nil {
		e.t.Fatalf("count %s: %v", sel, err)
	}
	return n
}

// eval evaluates a JavaScript expression whose value is a string.
func (e *env) eval(expr string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.browser, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		e.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shot saves a screenshot of the page as name.png.
func (e *env) shot(name string) {
	e.t.Helper()
	browsertest.Shot(e.t, e.browser, name)
}

// open loads a console page and waits for its heading.
func (e *env) open(path string) {
	e.t.Helper()
	e.do("open "+path, chromedp.Navigate(e.base+path), chromedp.WaitVisible(chromedp.CSS("h1")))
}

// place posts an order and returns its saga and order ids.
func (e *env) place(inject map[string]string) (sagaID, orderID uuid.UUID) {
	e.t.Helper()
	body := map[string]any{
		"customer_id": "c-" + uuid.NewString()[:8],
		"items":       []map[string]any{{"sku": "sku-1", "quantity": 1}},
		"amount":      map[string]any{"value": "12.50", "currency": "EUR"},
		"shipping_address": map[string]any{
			"name": "Ada", "line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"},
	}
	if inject != nil {
		body["inject"] = inject
	}
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, e.base+"/orders", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", uuid.NewString())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	var p api.PlaceResponse
	if resp.StatusCode != http.StatusAccepted || json.Unmarshal(answer, &p) != nil {
		e.t.Fatalf("POST /orders: %d %s", resp.StatusCode, answer)
	}
	return p.SagaID, p.OrderID
}

// audited fails the test unless saga id's history has event with reason
// (an operator action, with who and why).
func (e *env) audited(id uuid.UUID, event, reason string) {
	e.t.Helper()
	h, err := saga.History(context.Background(), e.db.Pool, id)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, x := range h {
		if x.Event == event && x.Reason == reason {
			return
		}
	}
	e.t.Fatalf("saga %s: no %s %q in the history: %+v", id, event, reason, h)
}

// waitState waits until saga id is in state.
func (e *env) waitState(id uuid.UUID, state saga.State, within time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(within)
	for {
		in, err := saga.Get(context.Background(), e.db.Pool, id)
		if err != nil {
			e.t.Fatal(err)
		}
		if in.State == state {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("saga %s is %s after %s, want %s (%s)", id, in.State, within, state, in.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// confirm fills a confirmation page's reason and token and confirms.
func (e *env) confirm(reason string) {
	e.t.Helper()
	e.do("confirm",
		chromedp.WaitVisible(chromedp.ID("confirm")),
		chromedp.SendKeys(chromedp.ID("reason"), reason),
		chromedp.SendKeys(chromedp.ID("token"), opToken),
		chromedp.Click(chromedp.ID("confirm")),
		chromedp.WaitVisible(chromedp.CSS("p.flash")),
	)
}

// An operator finds an order by its id, opens its saga and sees the three
// steps answered on the timeline; a saga stuck on an unanswered
// compensation is retried from the console (with a reason and the token)
// and ends compensated, the operator named in its history; a malformed
// message shows up under Dead letters, grouped by cause.
func TestConsoleFindRetryDeadLetters(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) {
		c.Saga.StepTimeout = 2 * time.Second
		c.Saga.CompensationAttempts = 1
	})
	ok, okOrder := e.place(nil)
	e.waitState(ok, saga.Completed, time.Minute)
	for i := range 4 { // more orders, two of them declined, for the overview
		var inject map[string]string
		if i%2 == 1 {
			inject = map[string]string{"payment": "refuse"}
		}
		id, _ := e.place(inject)
		want := saga.Completed
		if inject != nil {
			want = saga.Compensated
		}
		e.waitState(id, want, time.Minute)
	}

	e.open("/ui/")
	if n, c := e.text("#state-completed .n"), e.text("#state-compensated .n"); n != "3" || c != "2" {
		t.Fatalf("overview: %s completed and %s compensated sagas, want 3 and 2", n, c)
	}
	e.shot("overview")

	// Find the order by its id, open its saga.
	e.do("search", chromedp.SendKeys(chromedp.CSS("header input[name=q]"), okOrder.String()+"\n"),
		chromedp.WaitVisible(chromedp.CSS("#sagas tbody a")))
	e.do("open the saga", chromedp.Click(chromedp.CSS("#sagas tbody a")), chromedp.WaitVisible(chromedp.ID("timeline")))
	if got := e.text("#saga-state"); got != "completed" {
		t.Fatalf("saga page state %q", got)
	}
	if n := e.count("#timeline rect.span.ok"); n != 3 {
		t.Fatalf("timeline shows %d answered steps, want inventory, payment and shipping", n)
	}
	labels := e.eval(`Array.from(document.querySelectorAll("#timeline text.row-label")).map(t => t.textContent).join("|")`)
	if labels != "inventory action|payment action|shipping action" {
		t.Fatalf("timeline rows %q, want the three steps' actions", labels)
	}
	e.shot("saga-timeline")

	// A saga whose inventory compensation goes unanswered is stuck.
	stuck, _ := e.place(map[string]string{"payment": "refuse", "inventory.compensation": "drop"})
	e.waitState(stuck, saga.Stuck, time.Minute)
	// The cause is fixed (the inventory service answers again).
	if _, err := e.db.Pool.Exec(context.Background(), `UPDATE saga.instances SET data = data - 'inject' WHERE id = $1`, stuck); err != nil {
		t.Fatal(err)
	}
	e.open("/ui/sagas?state=stuck")
	e.shot("stuck-sagas")
	e.open("/ui/sagas/" + stuck.String())
	e.do("retry…", chromedp.Click(chromedp.ID("action-retry")))
	if what := e.text("#what"); !strings.Contains(what, "retry saga "+stuck.String()) {
		t.Fatalf("confirmation page says %q", what)
	}
	e.shot("confirm-retry")
	e.confirm("inventory is answering again")
	e.waitState(stuck, saga.Compensated, time.Minute)
	e.open("/ui/sagas/" + stuck.String())
	if n := e.count("#timeline circle.mark.operator"); n != 1 {
		t.Fatalf("the timeline shows %d operator actions, want the retry", n)
	}
	// Who answered: the participants' replies name them (schema version 2).
	if by := e.eval(`[...document.querySelectorAll("#history tbody tr")].filter(r => r.cells[5].textContent == "succeeded").map(r => r.cells[7].textContent).join(",")`); by != "inventory,inventory" {
		t.Errorf("the history's answers were given by %q, want inventory's action and compensation", by)
	}
	e.shot("saga-retried")
	e.audited(stuck, saga.EventOperatorRetry, "operator ops: inventory is answering again")

	// A malformed command is dead-lettered and shows under Dead letters.
	pub, err := e.kafka.NewPublisher(watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publishRaw(t, pub, e.topics.InventoryCommands, `{"saga_id": "other"}`) // another dead letter
	broken := publishRaw(t, pub, e.topics.InventoryCommands, `{"saga_id": "not json`)
	deadline := time.Now().Add(time.Minute)
	for {
		e.open("/ui/dead-letters")
		if e.count("#dead-letters tbody td.error-text") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the malformed command never showed under Dead letters")
		}
		time.Sleep(500 * time.Millisecond)
	}
	if got := e.text("#dead-letter-groups tbody tr"); !strings.Contains(got, e.topics.Group("inventory")) {
		t.Fatalf("dead-letter group %q is not the inventory consumer's", got)
	}
	e.shot("dead-letters")
	// Found by the id of the message that was dead-lettered.
	e.do("filter by message id", chromedp.SendKeys(chromedp.ID("message-id"), broken),
		chromedp.Submit(chromedp.ID("message-id")), chromedp.WaitVisible(chromedp.ID("filtered")))
	if n := e.count("#dead-letters tbody td.error-text"); n != 1 || !strings.Contains(e.eval("location.search"), "message_id="+broken) {
		t.Fatalf("filtered by message id %s: %d dead letters at %s", broken, n, e.eval("location.search"))
	}
	e.do("open it", chromedp.Click(chromedp.CSS("#dead-letters tbody td.num a")), chromedp.WaitVisible(chromedp.CSS("h1")))
	if body := e.text("main"); !strings.Contains(body, broken) || !strings.Contains(body, `"saga_id": "not json`) {
		t.Errorf("the dead letter's page does not show message %s and its payload:\n%s", broken, body)
	}
}

// publishRaw publishes payload to topic as a producer that gets it wrong
// would, and returns its message id.
func publishRaw(t *testing.T, pub message.Publisher, topic, payload string) string {
	t.Helper()
	m := message.NewMessage(uuid.NewString(), []byte(payload))
	m.Metadata.Set(kafkax.KeyMetadata, "broken")
	m.Metadata.Set(outbox.HeaderType, "inventory.reserve")
	if err := pub.Publish(topic, m); err != nil {
		t.Fatal(err)
	}
	return m.UUID
}

// waitDeadLetters waits until saga id has a recorded dead letter.
func (e *env) waitDeadLetters(id uuid.UUID) {
	e.t.Helper()
	store := deadletter.NewStore(e.db.Pool)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, err := store.Count(context.Background(), deadletter.Filter{SagaID: id})
		if err != nil {
			e.t.Fatal(err)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("no dead letter of saga %s recorded", id)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The payment service fails every charge (a bug): the command is
// dead-lettered and the saga waits at payment. A read-only console offers
// no action and the read-only API refuses one even with a token, while the
// normal API refuses it without one. The fixed payment service is
// deployed; the operator replays the dead letter from the console and the
// saga completes.
func TestConsoleReplayDeadLetterAndReadOnly(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) {
		c.Roles = []string{roles.API, roles.Orchestrator, roles.Inventory, roles.Shipping, roles.Relay}
		c.Saga.StepTimeout = time.Minute
	})
	buggy := e.cfg
	buggy.Roles, buggy.Inject = []string{roles.Payment}, map[string]string{roles.Payment: steps.InjectError}
	_, stopBuggy := e.start(buggy)
	id, _ := e.place(nil)
	e.waitDeadLetters(id)

	// Read-only: no action offered, none accepted.
	ro := e.cfg
	ro.Roles, ro.ReadOnly = []string{roles.API}, true
	roAddr, _ := e.start(ro)
	roBase := "http://" + roAddr
	e.do("open the saga read-only", chromedp.Navigate(roBase+"/ui/sagas/"+id.String()), chromedp.WaitVisible(chromedp.ID("timeline")))
	if n := e.count("#actions, a.action"); n != 0 || e.count("#read-only") != 1 {
		t.Fatalf("the read-only console offers %d actions (badge shown: %d)", n, e.count("#read-only"))
	}
	e.shot("saga-read-only")
	for _, c := range []struct {
		base, token string
		want        int
	}{{roBase, opToken, http.StatusForbidden}, {e.base, "", http.StatusUnauthorized}} {
		req, _ := http.NewRequest(http.MethodPost, c.base+"/sagas/"+id.String()+"/abort", strings.NewReader(`{"note":"x"}`))
		req.Header.Set("Content-Type", "application/json")
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Fatalf("POST /sagas/{id}/abort on %s with token %q: %d, want %d", c.base, c.token, resp.StatusCode, c.want)
		}
	}
	e.open("/ui/sagas/" + id.String())
	if e.count("#action-abort") != 1 {
		t.Fatal("the console offers no abort of a running saga")
	}

	// The fix is deployed; the operator replays the dead letter.
	stopBuggy()
	fixed := e.cfg
	fixed.Roles = []string{roles.Payment}
	e.start(fixed)
	e.open("/ui/dead-letters?saga_id=" + id.String())
	e.shot("dead-letters-payment")
	e.do("replay…", chromedp.Click(chromedp.CSS("#dead-letter-groups a.action")))
	if what := e.text("#what"); !strings.HasPrefix(what, "replay 1 dead letter(s)") {
		t.Fatalf("confirmation page says %q", what)
	}
	e.confirm("payment 1.4.2 deployed with the fix")
	if flash := e.text("p.flash"); !strings.Contains(flash, "1 dead letter(s) replayed by ops") {
		t.Fatalf("after the replay: %q", flash)
	}
	e.waitState(id, saga.Completed, time.Minute)
	e.open("/ui/sagas/" + id.String())
	if got := e.text("#saga-state"); got != "completed" {
		t.Fatalf("saga page state %q after the replay", got)
	}
	e.shot("saga-after-replay")
}

// With protected reads the console asks for sign-in: every page sends the
// browser to the sign-in page and back; an unknown token is refused; a
// signed-in operator acts without giving the token again and is named in
// the saga's history; signing out ends it.
func TestConsoleSignIn(t *testing.T) {
	t.Parallel()
	e := setup(t, func(c *roles.Config) {
		// No inventory: the saga waits on its first step, running.
		c.Roles = []string{roles.API, roles.Orchestrator, roles.Relay}
		c.ProtectReads = true
		c.Saga.StepTimeout = time.Minute
	})
	id, _ := e.place(nil)
	e.open("/ui/sagas/" + id.String())
	if got := e.text("h1"); got != "Sign in" {
		t.Fatalf("an unsigned visit shows %q, not the sign-in page", got)
	}
	if u := e.eval("location.pathname + location.search"); u != "/ui/login?next="+url.QueryEscape("/ui/sagas/"+id.String()) {
		t.Errorf("sign-in page at %s", u)
	}
	e.do("sign in with a wrong token", chromedp.SendKeys(chromedp.ID("token"), "not-a-token-0123456789"),
		chromedp.Click(chromedp.ID("sign-in")), chromedp.WaitVisible(chromedp.ID("login-error")))
	e.shot("sign-in-refused")
	e.do("sign in", chromedp.SendKeys(chromedp.ID("token"), opToken), chromedp.Click(chromedp.ID("sign-in")),
		chromedp.WaitVisible(chromedp.ID("timeline")))
	if who := e.text("#operator"); who != "ops" {
		t.Errorf("signed in as %q", who)
	}
	e.do("abort…", chromedp.Click(chromedp.ID("action-abort")), chromedp.WaitVisible(chromedp.ID("confirm")))
	if n := e.count("#token"); n != 0 {
		t.Errorf("the confirmation asks a signed-in operator for a token (%d fields)", n)
	}
	e.do("confirm the abort", chromedp.SendKeys(chromedp.ID("reason"), "customer cancelled by phone"),
		chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.CSS("p.flash")))
	if flash := e.text("p.flash"); !strings.Contains(flash, "abort done by ops") {
		t.Errorf("after the abort: %q", flash)
	}
	e.shot("saga-aborted-signed-in")
	e.audited(id, saga.EventOperatorAborted, "operator ops: customer cancelled by phone")
	e.do("sign out", chromedp.Click(chromedp.ID("sign-out")), chromedp.WaitVisible(chromedp.ID("sign-in")))
	e.open("/ui/")
	if got := e.text("h1"); got != "Sign in" {
		t.Errorf("after signing out the overview shows %q", got)
	}
	// A form posted without a session is refused.
	resp, err := http.PostForm(e.base+"/ui/sagas/"+id.String()+"/retry", url.Values{"reason": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("an unsigned POST: %d, want 401", resp.StatusCode)
	}
}
