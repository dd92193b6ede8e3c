package steps

import (
	"context"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/outbox"
	"github.com/sagaflow/sagaflow/saga"
)

// actionBatch is a participant's outbox.BatchHandler: the action commands
// of a shared transaction lock their steps rows with one statement, read
// them with another, and write their effects, rows and replies in one
// round trip. Compensations, commands with an injected fault and commands
// that do not decode go through Handle, one at a time.
type actionBatch struct{ p *Participant }

// action is a decoded action command.
type action struct {
	msgID string
	cmd   saga.Command
	data  order.Data
	// ctx is the message's: its consumer span, while tracing is on.
	ctx context.Context
	// read is set once Prelude's statements locked and read its steps
	// row; found says whether there was one, with its status and reason.
	read, found    bool
	status, reason string
	// pre is what the effect's prelude read (prereader), shared by the
	// batch's actions.
	pre any
}

var _ outbox.BatchPrelude = actionBatch{}

// Prelude locks the actions' steps rows and reads them, and then runs the
// effect's own prelude (inventory locks and reads its stock rows), in the
// round trip of the inbox's BEGIN and claim: the locks and reads
// HandleBatch would otherwise send in round trips of their own. A
// redelivery's locks and reads change nothing.
func (ab actionBatch) Prelude(b *pgx.Batch, items []any) {
	p := ab.p
	acts, keys, ids := stepKeys(items)
	b.Queue(p.q.lockMany, p.name, keys)
	var read *pgx.QueuedQuery
	if len(ids) == 1 {
		read = b.Queue(p.q.readOne, p.name, ids[0])
	} else {
		read = b.Queue(p.q.readMany, p.name, ids)
	}
	read.Query(func(rows pgx.Rows) error {
		found, err := scanSteps(rows)
		if err != nil {
			return fmt.Errorf("read %d step rows: %w", len(ids), err)
		}
		for _, a := range acts {
			r, ok := found[a.cmd.SagaID]
			a.read, a.found, a.status, a.reason = true, ok, r.status, r.reason
		}
		return nil
	})
	if pr, ok := p.fx.(prereader); ok {
		ds := make([]*order.Data, len(acts))
		for i, a := range acts {
			ds[i] = &a.data
		}
		pre := pr.prelude(b, ds)
		for _, a := range acts {
			a.pre = pre
		}
	}
}

// stepKeys returns the actions of items, their lock keys and saga ids.
func stepKeys(items []any) ([]*action, []string, []uuid.UUID) {
	acts := make([]*action, len(items))
	keys := make([]string, len(items))
	ids := make([]uuid.UUID, len(items))
	for i, it := range items {
		a := it.(*action)
		acts[i], keys[i], ids[i] = a, a.cmd.SagaID.String()+"/"+a.cmd.Step, a.cmd.SagaID
	}
	return acts, keys, ids
}

// stepRow is a steps row's status and refusal reason.
type stepRow struct{ status, reason string }

// scanSteps reads rows of readMany by saga id.
func scanSteps(rows pgx.Rows) (map[uuid.UUID]stepRow, error) {
	found := map[uuid.UUID]stepRow{}
	var (
		id     uuid.UUID
		status string
		reason *string
	)
	_, err := pgx.ForEachRow(rows, []any{&id, &status, &reason}, func() error {
		r := stepRow{status: status}
		if reason != nil {
			r.reason = *reason
		}
		found[id] = r
		return nil
	})
	return found, err
}

// Take takes the action commands that decode, validate and ask for no
// injected fault.
func (ab actionBatch) Take(msg *message.Message) (any, bool) {
	p := ab.p
	if msg.Metadata.Get(outbox.HeaderType) != p.actionType {
		return nil, false
	}
	cmd, data, err := p.decode(msg)
	if err != nil || cmd.Kind != saga.KindAction {
		return nil, false
	}
	if p.injection(cmd.Kind, &data).kind != modeNone {
		return nil, false
	}
	return &action{msgID: msg.UUID, cmd: cmd, data: data, ctx: msg.Context()}, true
}

// HandleBatch applies the actions as the package documentation's table says.
func (ab actionBatch) HandleBatch(ctx context.Context, tx pgx.Tx, items []any) error {
	p := ab.p
	acts, _, _ := stepKeys(items)
	if !acts[0].read {
		// No prelude ran: its lock and read, in a round trip of their own.
		var pre pgx.Batch
		ab.Prelude(&pre, items)
		if err := tx.SendBatch(ctx, &pre).Close(); err != nil {
			return fmt.Errorf("lock and read %d step rows: %w", len(acts), err)
		}
	}
	found := make(map[uuid.UUID]stepRow, len(acts))
	for _, a := range acts {
		if a.found {
			found[a.cmd.SagaID] = stepRow{a.status, a.reason}
		}
	}
	var b pgx.Batch
	// Outcomes of the actions seen before; effects of the new ones.
	outcomes := make([]saga.Outcome, len(acts))
	reasons := make([]string, len(acts))
	var (
		fresh    []int
		freshIDs []uuid.UUID
		freshDs  []*order.Data
		err      error
	)
	for i, a := range acts {
		r, ok := found[a.cmd.SagaID]
		if !ok {
			fresh = append(fresh, i)
			freshIDs = append(freshIDs, a.cmd.SagaID)
			freshDs = append(freshDs, &a.data)
			continue
		}
		if outcomes[i], reasons[i], err = answerAgain(r.status, r.reason); err != nil {
			return fmt.Errorf("%s action of saga %s: %w", p.name, a.cmd.SagaID, err)
		}
	}
	if len(fresh) > 0 {
		var refusals []string
		if pr, ok := p.fx.(prereader); ok {
			refusals, err = pr.applyPre(ctx, tx, &b, freshIDs, freshDs, acts[0].pre)
		} else {
			refusals, err = p.fx.apply(ctx, tx, &b, freshIDs, freshDs)
		}
		if err != nil {
			return fmt.Errorf("%s: %d actions: %w", p.name, len(fresh), err)
		}
		n := len(fresh)
		rowIDs, steps, statuses, rowReasons := make([]uuid.UUID, n), make([]string, n), make([]string, n), make([]*string, n)
		for k, i := range fresh {
			rowIDs[k], steps[k] = acts[i].cmd.SagaID, acts[i].cmd.Step
			if refusals[k] != "" {
				outcomes[i], reasons[i] = saga.Refused, refusals[k]
				statuses[k], rowReasons[k] = statusRefused, &refusals[k]
				p.log.Info("refused", "saga_id", acts[i].cmd.SagaID, "reason", refusals[k])
				continue
			}
			outcomes[i], statuses[k] = saga.Succeeded, statusDone
		}
		b.Queue(p.q.insertMany, rowIDs, steps, statuses, rowReasons)
	}
	replies := make([]outbox.Message, len(acts))
	for i, a := range acts {
		if replies[i], err = saga.NewReply(p.Name(), p.cfg.Topics.SagaReplies, a.cmd, a.msgID, outcomes[i], reasons[i]); err != nil {
			return err
		}
		replies[i] = outbox.Traced(a.ctx, replies[i])
	}
	if err := p.out.Queue(&b, replies...); err != nil {
		return err
	}
	if err := saga.SendBatch(ctx, tx, &b); err != nil {
		return fmt.Errorf("%s: write the outcomes of %d actions: %w", p.name, len(acts), err)
	}
	return nil
}
