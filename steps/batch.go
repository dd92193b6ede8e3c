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
	acts := make([]*action, len(items))
	keys := make([]string, len(items))
	ids := make([]uuid.UUID, len(items))
	for i, it := range items {
		a := it.(*action)
		acts[i], keys[i], ids[i] = a, a.cmd.SagaID.String()+"/"+a.cmd.Step, a.cmd.SagaID
	}
	// One round trip: lock every (saga, step) in key order, then read the
	// rows in a statement of its own, whose snapshot comes after the locks.
	var b pgx.Batch
	b.Queue(p.q.lockMany, p.name, keys)
	b.Queue(p.q.readMany, p.name, ids)
	br := tx.SendBatch(ctx, &b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return fmt.Errorf("lock %d step rows: %w", len(keys), err)
	}
	type row struct{ status, reason string }
	found := make(map[uuid.UUID]row, len(ids))
	rows, _ := br.Query()
	var (
		id     uuid.UUID
		status string
		reason *string
	)
	_, err := pgx.ForEachRow(rows, []any{&id, &status, &reason}, func() error {
		r := row{status: status}
		if reason != nil {
			r.reason = *reason
		}
		found[id] = r
		return nil
	})
	if err != nil {
		_ = br.Close()
		return fmt.Errorf("read %d step rows: %w", len(ids), err)
	}
	if err := br.Close(); err != nil {
		return fmt.Errorf("read %d step rows: %w", len(ids), err)
	}

	// Outcomes of the actions seen before; effects of the new ones.
	outcomes := make([]saga.Outcome, len(acts))
	reasons := make([]string, len(acts))
	var (
		fresh    []int
		freshIDs []uuid.UUID
		freshDs  []*order.Data
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
		refusals, err := p.fx.apply(ctx, tx, &b, freshIDs, freshDs)
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
