package steps

import (
	"fmt"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
)

// Fault injection modes, set in Config.Inject or per command in
// order.Data.Inject. They are honoured only when Config.AllowInjection is
// set.
const (
	// InjectNone (or an empty mode) injects nothing; in order.Data.Inject
	// it overrides Config.Inject for one saga.
	InjectNone = "none"
	// InjectRefuse answers with a business refusal (reason
	// ReasonInjected) and no effect. An action records the refusal like a
	// real one; a compensation replies Refused and changes nothing.
	InjectRefuse = "refuse"
	// InjectError fails the command with a fault: it is retried, then
	// dead-lettered; nothing commits.
	InjectError = "error"
	// InjectDelayPrefix followed by a Go duration ("delay=2s") sleeps that
	// long (cut short by the message's context), then handles the command.
	InjectDelayPrefix = "delay="
	// InjectDrop consumes the command (the inbox records it) but applies no
	// effect and writes no reply: the step never answers.
	InjectDrop = "drop"
	// InjectCrashBeforeCommit applies the effect and writes the reply, then
	// calls Config.Crash before the transaction commits (the process dies,
	// the transaction rolls back, Kafka redelivers).
	InjectCrashBeforeCommit = "crash-before-commit"
	// InjectCrashAfterCommit commits, then calls Config.Crash before the
	// message is acknowledged (Kafka redelivers, the inbox skips it).
	InjectCrashAfterCommit = "crash-after-commit"
)

// Crash points, the argument of Config.Crash. Each crashes once per message:
// the redelivery after the crash goes through.
const (
	CrashBeforeCommit = InjectCrashBeforeCommit
	CrashAfterCommit  = InjectCrashAfterCommit
)

// InjectKey is the order.Data.Inject key that sets the mode of a
// participant's commands of one kind: the participant's name for its action
// ("payment"), with ".compensation" appended for its compensation
// ("payment.compensation").
func InjectKey(participant string, kind saga.Kind) string {
	if kind == saga.KindCompensation {
		return participant + ".compensation"
	}
	return participant
}

// CheckInjection reports whether mode is a valid injection mode: "", "none",
// "refuse", "error", "delay=DURATION", "drop", "crash-before-commit" or
// "crash-after-commit". The API and the command line use it to reject a
// typo up front; a participant that meets an invalid mode in a command logs
// an error and ignores it.
func CheckInjection(mode string) error {
	_, err := parseMode(mode)
	return err
}

type modeKind int

const (
	modeNone modeKind = iota
	modeRefuse
	modeError
	modeDelay
	modeDrop
	modeCrashBeforeCommit
	modeCrashAfterCommit
)

type mode struct {
	kind  modeKind
	delay time.Duration
}

func parseMode(s string) (mode, error) {
	switch s {
	case "", InjectNone:
		return mode{}, nil
	case InjectRefuse:
		return mode{kind: modeRefuse}, nil
	case InjectError:
		return mode{kind: modeError}, nil
	case InjectDrop:
		return mode{kind: modeDrop}, nil
	case InjectCrashBeforeCommit:
		return mode{kind: modeCrashBeforeCommit}, nil
	case InjectCrashAfterCommit:
		return mode{kind: modeCrashAfterCommit}, nil
	}
	if rest, ok := strings.CutPrefix(s, InjectDelayPrefix); ok {
		d, err := time.ParseDuration(rest)
		if err != nil || d < 0 {
			return mode{}, fmt.Errorf("injection mode %q: want delay=DURATION with a non-negative Go duration such as delay=2s", s)
		}
		return mode{kind: modeDelay, delay: d}, nil
	}
	return mode{}, fmt.Errorf("unknown injection mode %q (want none, refuse, error, delay=DURATION, drop, crash-before-commit or crash-after-commit)", s)
}

// injection resolves the mode of one command: the command's own
// (order.Data.Inject) over the participant's default (Config.Inject),
// honoured only when injection is allowed.
func (p *Participant) injection(kind saga.Kind, d *order.Data) mode {
	spec, own := d.Inject[InjectKey(p.name, kind)]
	if !own || spec == "" {
		if p.def.kind == modeNone || !p.cfg.AllowInjection {
			return mode{}
		}
		return p.def
	}
	if spec == InjectNone {
		return mode{}
	}
	if !p.cfg.AllowInjection {
		p.warnOnce.Do(func() {
			p.log.Warn("a command asks for fault injection, which is not allowed: ignoring it (and further requests)", "inject", spec)
		})
		return mode{}
	}
	m, err := parseMode(spec)
	if err != nil {
		p.log.Error("ignoring the command's injection mode", "err", err)
		return mode{}
	}
	return m
}
