package steps_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/steps"
)

// injected returns the standard order asking participant name to misbehave
// with mode on the given kind of command.
func injected(name string, kind saga.Kind, mode string) order.Data {
	d := newOrder()
	d.Inject = map[string]string{steps.InjectKey(name, kind): mode}
	return d
}

// refuse: the action is refused without effect, like a business refusal;
// an injected compensation refusal replies Refused and undoes nothing.
func TestInjectRefuse(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, injected(name, saga.KindAction, steps.InjectRefuse)))
			e.wantEffect(p, s, none)
			e.wantStatus(p, s, "refused", steps.ReasonInjected)
			e.wantReplies(p, s, reply(s, name, saga.KindAction, 1, saga.Refused, steps.ReasonInjected))

			s2 := newSaga()
			d := injected(name, saga.KindCompensation, steps.InjectRefuse)
			e.mustDeliver(p, command(t, p, saga.KindAction, s2, 1, d))
			e.mustDeliver(p, command(t, p, saga.KindCompensation, s2, 1, d))
			e.wantEffect(p, s2, applied)
			e.wantStatus(p, s2, "done", "")
			e.wantReplies(p, s2,
				reply(s2, name, saga.KindAction, 1, saga.Succeeded, ""),
				reply(s2, name, saga.KindCompensation, 1, saga.Refused, steps.ReasonInjected))
		})
	}
}

// error: a fault (neither permanent nor transient, so retried then
// dead-lettered); nothing commits, not even the inbox claim.
func TestInjectError(t *testing.T) {
	t.Parallel()
	for _, kind := range []saga.Kind{saga.KindAction, saga.KindCompensation} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(order.StepPayment, nil)
			s := newSaga()
			msg := command(t, p, kind, s, 1, injected(p.Name(), kind, steps.InjectError))
			for range 2 { // every delivery fails the same way
				_, err := e.deliver(p, msg)
				if err == nil || !strings.Contains(err.Error(), "injected fault") {
					t.Fatalf("got %v, want the injected fault", err)
				}
				if outbox.IsPermanent(err) || outbox.IsTransient(err) {
					t.Fatalf("injected fault is permanent %v / transient %v; want a retried fault", outbox.IsPermanent(err), outbox.IsTransient(err))
				}
			}
			e.wantStatus(p, s, "", "")
			e.wantEffect(p, s, none)
			e.wantReplies(p, s)
			if n := e.inboxRows(p); n != 0 {
				t.Fatalf("inbox recorded %d messages, want 0", n)
			}
		})
	}
}

// drop: the command is consumed (a redelivery is a duplicate) but nothing
// else happens: no effect, no steps row, no reply.
func TestInjectDrop(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			msg := command(t, p, saga.KindAction, s, 1, injected(name, saga.KindAction, steps.InjectDrop))
			e.mustDeliver(p, msg)
			if dup, err := e.deliver(p, msg); err != nil || !dup {
				t.Fatalf("redelivery of a dropped command: duplicate %v, err %v; want a skipped duplicate", dup, err)
			}
			e.wantStatus(p, s, "", "")
			e.wantEffect(p, s, none)
			e.wantReplies(p, s)
			if name == order.StepInventory {
				e.wantStock(map[string]int{"A": 10, "B": 5})
			}
		})
	}
}

// delay: the command is handled after the delay; a delay cut short by the
// message's context fails the delivery and commits nothing.
func TestInjectDelay(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepShipping, nil)

	s := newSaga()
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, injected(p.Name(), saga.KindAction, "delay=1ms")))
	e.wantEffect(p, s, applied)
	e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Succeeded, ""))

	s2 := newSaga()
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := e.deliverCtx(ctx, p, command(t, p, saga.KindAction, s2, 1, injected(p.Name(), saga.KindAction, "delay=1h")))
		errc <- err
	}()
	// The handler sleeps inside its transaction after the inbox claim,
	// which wrote (so the transaction has an id) and is the only statement
	// before the delay.
	waitFor(t, "the delivery asleep in its transaction", func() bool {
		var n int
		_ = e.db.Pool.QueryRow(e.ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND state = 'idle in transaction' AND backend_xid IS NOT NULL`).Scan(&n)
		return n == 1
	})
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "injected delay") {
		t.Fatalf("cancelled delay: %v, want the interrupted injected delay", err)
	}
	e.wantStatus(p, s2, "", "")
	e.wantEffect(p, s2, none)
	e.wantReplies(p, s2)
	if n := e.inboxRows(p); n != 1 {
		t.Fatalf("inbox holds %d messages, want only the first", n)
	}
}

// crash-before-commit: the effect is applied in the transaction, then the
// crash point is reached; the transaction rolls back. The redelivery after
// the "restart" goes through without crashing again.
func TestInjectCrashBeforeCommit(t *testing.T) {
	t.Parallel()
	for _, name := range participants {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(name, nil)
			s := newSaga()
			msg := command(t, p, saga.KindAction, s, 1, injected(name, saga.KindAction, steps.InjectCrashBeforeCommit))
			_, err := e.deliver(p, msg)
			if err == nil || outbox.IsPermanent(err) {
				t.Fatalf("delivery that crashed: %v, want a retryable error", err)
			}
			if got := e.crashPoints(); !slices.Equal(got, []string{steps.CrashBeforeCommit}) {
				t.Fatalf("crash points %v, want [%s]", got, steps.CrashBeforeCommit)
			}
			e.wantStatus(p, s, "", "")
			e.wantEffect(p, s, none)
			e.wantReplies(p, s)
			e.wantStock(map[string]int{"A": 10, "B": 5})
			if n := e.inboxRows(p); n != 0 {
				t.Fatalf("inbox recorded %d messages, want 0", n)
			}

			e.mustDeliver(p, msg)
			if got := e.crashPoints(); len(got) != 1 {
				t.Fatalf("crash points %v after the redelivery, want one crash only", got)
			}
			e.wantStatus(p, s, "done", "")
			e.wantEffect(p, s, applied)
			e.wantReplies(p, s, reply(s, name, saga.KindAction, 1, saga.Succeeded, ""))
		})
	}
}

// A Crash that does not return (it panics, as a dying process would stop)
// leaves nothing committed either.
func TestInjectCrashBeforeCommitPanics(t *testing.T) {
	t.Parallel()
	e := setup(t)
	p := e.participant(order.StepPayment, func(c *steps.Config) {
		c.Crash = func(point string) { panic("crashed at " + point) }
	})
	s := newSaga()
	func() {
		defer func() {
			if r := recover(); r != "crashed at "+steps.CrashBeforeCommit {
				t.Fatalf("recovered %v, want the crash panic", r)
			}
		}()
		_, _ = e.deliver(p, command(t, p, saga.KindAction, s, 1, injected(p.Name(), saga.KindAction, steps.InjectCrashBeforeCommit)))
	}()
	e.wantStatus(p, s, "", "")
	e.wantEffect(p, s, none)
	e.wantReplies(p, s)
}

// crash-after-commit: the transaction commits; the after-commit hook
// crashes before the ack; the redelivery is skipped by the inbox and does
// not crash again.
func TestInjectCrashAfterCommit(t *testing.T) {
	t.Parallel()
	for _, kind := range []saga.Kind{saga.KindAction, saga.KindCompensation} {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			p := e.participant(order.StepInventory, nil)
			s := newSaga()
			d := injected(p.Name(), kind, steps.InjectCrashAfterCommit)
			if kind == saga.KindCompensation {
				first := command(t, p, saga.KindAction, s, 1, d)
				e.mustDeliver(p, first)
				p.AfterCommit(first) // the action asks for no crash
				if got := e.crashPoints(); len(got) != 0 {
					t.Fatalf("crash points %v after the action, want none", got)
				}
			}
			msg := command(t, p, kind, s, 1, d)
			e.mustDeliver(p, msg)
			if got := e.crashPoints(); len(got) != 0 {
				t.Fatalf("crashed at %v before the commit", got)
			}
			p.AfterCommit(msg)
			if got := e.crashPoints(); !slices.Equal(got, []string{steps.CrashAfterCommit}) {
				t.Fatalf("crash points %v, want [%s]", got, steps.CrashAfterCommit)
			}
			if kind == saga.KindAction {
				e.wantStatus(p, s, "done", "")
				e.wantStock(map[string]int{"A": 8, "B": 4})
			} else {
				e.wantStatus(p, s, "compensated", "")
				e.wantStock(map[string]int{"A": 10, "B": 5})
			}

			if dup, err := e.deliver(p, msg); err != nil || !dup {
				t.Fatalf("redelivery after the crash: duplicate %v, err %v; want a skipped duplicate", dup, err)
			}
			p.AfterCommit(msg)
			if got := e.crashPoints(); len(got) != 1 {
				t.Fatalf("crash points %v after the redelivery, want one crash only", got)
			}
			if n := len(e.replies(p, s)); n != map[saga.Kind]int{saga.KindAction: 1, saga.KindCompensation: 2}[kind] {
				t.Fatalf("%d replies", n)
			}
		})
	}
}

// Without AllowInjection every mode, from the command or the configuration,
// is ignored: the command is handled normally and never crashes.
func TestInjectionNotAllowed(t *testing.T) {
	t.Parallel()
	modes := []string{steps.InjectRefuse, steps.InjectError, "delay=1h", steps.InjectDrop, steps.InjectCrashBeforeCommit, steps.InjectCrashAfterCommit}
	for _, mode := range modes {
		for _, where := range []string{"command", "config"} {
			t.Run(where+"/"+mode, func(t *testing.T) {
				t.Parallel()
				e := setup(t)
				p := e.participant(order.StepPayment, func(c *steps.Config) {
					c.AllowInjection = false
					if where == "config" {
						c.Inject = mode
					}
				})
				s := newSaga()
				d := newOrder()
				if where == "command" {
					d = injected(p.Name(), saga.KindAction, mode)
				}
				msg := command(t, p, saga.KindAction, s, 1, d)
				e.mustDeliver(p, msg)
				p.AfterCommit(msg)
				e.wantEffect(p, s, applied)
				e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Succeeded, ""))
				if got := e.crashPoints(); len(got) != 0 {
					t.Fatalf("crashed at %v", got)
				}
			})
		}
	}
}

// Config.Inject applies to every command of the participant unless the
// command names its own mode ("none" switches it off); a mode applies to
// its kind of command only; an unknown mode in a command is ignored, while
// an unknown mode in the configuration is rejected up front.
func TestInjectionSources(t *testing.T) {
	t.Parallel()
	e := setup(t)

	byConfig := e.participant(order.StepShipping, func(c *steps.Config) { c.Inject = steps.InjectRefuse })
	s := newSaga()
	e.mustDeliver(byConfig, command(t, byConfig, saga.KindAction, s, 1, newOrder()))
	e.wantReplies(byConfig, s, reply(s, byConfig.Name(), saga.KindAction, 1, saga.Refused, steps.ReasonInjected))
	s = newSaga()
	e.mustDeliver(byConfig, command(t, byConfig, saga.KindAction, s, 1, injected(byConfig.Name(), saga.KindAction, steps.InjectNone)))
	e.wantReplies(byConfig, s, reply(s, byConfig.Name(), saga.KindAction, 1, saga.Succeeded, ""))

	p := e.participant(order.StepInventory, nil)
	s = newSaga()
	d := injected(p.Name(), saga.KindCompensation, steps.InjectError)
	d.Inject[order.StepPayment] = steps.InjectError // another participant's mode
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, d))
	if _, err := e.deliver(p, command(t, p, saga.KindCompensation, s, 1, d)); err == nil || !strings.Contains(err.Error(), "injected fault") {
		t.Fatalf("compensation: %v, want the injected fault", err)
	}
	e.wantStatus(p, s, "done", "")

	s = newSaga()
	e.mustDeliver(p, command(t, p, saga.KindAction, s, 1, injected(p.Name(), saga.KindAction, "explode")))
	e.wantReplies(p, s, reply(s, p.Name(), saga.KindAction, 1, saga.Succeeded, ""))

	cfg := e.config()
	cfg.Inject = "explode"
	if _, err := steps.NewPayment(cfg); err == nil || !strings.Contains(err.Error(), `unknown injection mode "explode"`) {
		t.Fatalf("NewPayment with Inject %q: %v, want an unknown mode error", cfg.Inject, err)
	}
}

func TestCheckInjection(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		mode string
		ok   bool
	}{
		{"", true}, {"none", true}, {"refuse", true}, {"error", true}, {"drop", true},
		{"delay=2s", true}, {"delay=0s", true}, {"crash-before-commit", true}, {"crash-after-commit", true},
		{"delay=", false}, {"delay=-1s", false}, {"delay=soon", false}, {"crash", false}, {"REFUSE", false},
	} {
		if err := steps.CheckInjection(tt.mode); (err == nil) != tt.ok {
			t.Errorf("CheckInjection(%q) = %v, want ok %v", tt.mode, err, tt.ok)
		}
	}
	if got := steps.InjectKey("payment", saga.KindCompensation); got != "payment.compensation" {
		t.Errorf("InjectKey = %q", got)
	}
}
