// Package saga is Sagaflow's engine. A Definition lists a saga's steps, each
// with an action command, a compensation command and a retry policy. The
// Engine keeps every saga instance and its history in PostgreSQL and moves
// it one transaction at a time: it consumes participants' replies through an
// inbox, locks the saga row, checks that the reply answers the step and
// attempt it waits for, and writes the next command (or the compensations,
// newest completed step first) through the transactional outbox. A deadline
// sweeper resends overdue commands with backoff and, when a step's attempts
// are spent, compensates. The engine knows nothing about orders.
package saga

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
)

// RetryPolicy bounds how long the engine waits for a reply and how often it
// resends. Attempt n waits Timeout·Multiplier^(n-1), at most MaxTimeout,
// spread by ±Jitter so that many sagas that timed out together do not resend
// together.
type RetryPolicy struct {
	// MaxAttempts is how many times the command is sent before the step
	// fails (an action) or the saga is marked stuck (a compensation).
	MaxAttempts int
	// Timeout is the step deadline of the first attempt.
	Timeout    time.Duration
	Multiplier float64
	MaxTimeout time.Duration
	// Jitter is a fraction (0.2 = ±20%).
	Jitter float64
}

func (p RetryPolicy) withDefaults(attempts int) RetryPolicy {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = attempts
	}
	if p.Timeout <= 0 {
		p.Timeout = 5 * time.Second
	}
	if p.Multiplier < 1 {
		p.Multiplier = 2
	}
	if p.MaxTimeout <= 0 {
		p.MaxTimeout = 30 * time.Second
	}
	if p.Jitter < 0 || p.Jitter >= 1 {
		p.Jitter = 0
	}
	return p
}

// timeout is how long attempt n (from 1) waits for its reply.
func (p RetryPolicy) timeout(n int) time.Duration {
	d := float64(p.Timeout)
	for i := 1; i < n; i++ {
		d *= p.Multiplier
		if d >= float64(p.MaxTimeout) {
			d = float64(p.MaxTimeout)
			break
		}
	}
	if p.Jitter > 0 {
		d *= 1 + p.Jitter*(2*rand.Float64()-1)
	}
	return time.Duration(d)
}

// Step is one step of a saga.
type Step struct {
	// Name identifies the step (and, in the order saga, its participant).
	Name string
	// Topic receives the step's commands.
	Topic string
	// ActionType and CompensationType are the message types of its
	// commands. An empty CompensationType makes the step a pivot: it cannot
	// be undone, so it must be the last step.
	ActionType       string
	CompensationType string
	// Retry governs the action (default 3 attempts); CompensationRetry the
	// compensation (default 10 attempts, then the saga is stuck).
	Retry             RetryPolicy
	CompensationRetry RetryPolicy
}

// Hook queues, on the batch of statements of the transaction that ends a
// saga, the application's record of the outcome (the order saga confirms or
// cancels its order and publishes an order event through its outbox). The
// batch is sent after the hook returns, in one round trip with the saga's
// own writes; a check on a statement's result goes in a callback
// (QueuedQuery.Exec), whose error rolls the transaction back.
type Hook func(b *pgx.Batch, inst *Instance) error

// Definition is a saga type.
type Definition struct {
	// Type names the saga type, stored with each instance.
	Type  string
	Steps []Step
	// ReplyTo is the topic the orchestrator reads replies from: every
	// command names it (reply_to), so that participants answer there.
	// Empty: commands name none, and participants answer on the replies
	// topic they are configured with.
	ReplyTo string
	// Deadline bounds a whole saga: past it, the step in flight gets no
	// more attempts and the saga compensates (default 5 minutes).
	Deadline time.Duration
	// OnCompleted runs when every step succeeded; OnCancelled when the saga
	// ends compensated or failed (Instance.Reason says why). Both may be nil.
	OnCompleted Hook
	OnCancelled Hook
}

func (d *Definition) validate() error {
	if d.Type == "" {
		return errors.New("saga definition without a type")
	}
	if len(d.Steps) == 0 {
		return fmt.Errorf("saga definition %s has no steps", d.Type)
	}
	seen := map[string]bool{}
	for i, s := range d.Steps {
		if s.Name == "" || s.Topic == "" || s.ActionType == "" {
			return fmt.Errorf("saga definition %s: step %d needs a name, a topic and an action type", d.Type, i)
		}
		if seen[s.Name] {
			return fmt.Errorf("saga definition %s: step name %s used twice", d.Type, s.Name)
		}
		seen[s.Name] = true
		if s.CompensationType == "" && i != len(d.Steps)-1 {
			return fmt.Errorf("saga definition %s: step %s has no compensation but is not the last (pivot) step", d.Type, s.Name)
		}
		d.Steps[i].Retry = s.Retry.withDefaults(3)
		d.Steps[i].CompensationRetry = s.CompensationRetry.withDefaults(10)
	}
	if d.Deadline <= 0 {
		d.Deadline = 5 * time.Minute
	}
	return nil
}

// stepName names step i, or says that the definition has no such step.
func (d *Definition) stepName(i int) string {
	if i < 0 || i >= len(d.Steps) {
		return fmt.Sprintf("#%d (not in the definition)", i)
	}
	return d.Steps[i].Name
}

func (d *Definition) stepIndex(name string) int {
	for i, s := range d.Steps {
		if s.Name == name {
			return i
		}
	}
	return -1
}
