package saga

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/outbox"
)

// SchemaVersion is the version of the command and reply payloads this build
// writes and understands. A message with a higher version is refused as
// permanent (dead-lettered), never half-understood.
const SchemaVersion = 1

// Kind says whether a command runs a step's action or its compensation.
type Kind string

// The kinds of command.
const (
	KindAction       Kind = "action"
	KindCompensation Kind = "compensation"
)

// Outcome is a participant's answer.
type Outcome string

// The outcomes a participant replies with. A fault (error, panic, bad
// payload) is never a reply: it is retried and dead-lettered by the
// participant's consumer, and the saga's step deadline does the rest.
const (
	// Succeeded: the action's effect is applied (or the compensation's
	// undo is, or there was nothing to undo).
	Succeeded Outcome = "succeeded"
	// Refused: a business refusal (out of stock, card declined, address not
	// deliverable); the action made no change. The saga compensates at once.
	Refused Outcome = "refused"
)

// Command asks a participant to run a step's action or compensation. It is
// published to the step's topic keyed by saga id, with message type
// Step.ActionType or Step.CompensationType.
type Command struct {
	SagaID   uuid.UUID `json:"saga_id"`
	SagaType string    `json:"saga_type"`
	Step     string    `json:"step"`
	Kind     Kind      `json:"kind"`
	// Attempt numbers resends of the same command (from 1); the reply
	// carries it back so that the orchestrator only accepts the answer to
	// the attempt it waits for.
	Attempt int `json:"attempt"`
	// Data is the saga's data (for the order saga: the order).
	Data json.RawMessage `json:"data"`
}

// Reply answers a Command. It is published to the replies topic keyed by
// saga id with message type ReplyType.
type Reply struct {
	SagaID  uuid.UUID `json:"saga_id"`
	Step    string    `json:"step"`
	Kind    Kind      `json:"kind"`
	Attempt int       `json:"attempt"`
	Outcome Outcome   `json:"outcome"`
	// Reason explains a refusal, for the saga's history and the order.
	Reason string `json:"reason,omitempty"`
}

// ReplyType is the message type of every reply.
const ReplyType = "saga.reply"

// DecodeCommand decodes a command message, checking its schema version and
// fields. Its errors are permanent: retrying cannot fix the message.
func DecodeCommand(msg *message.Message) (Command, error) {
	var c Command
	if err := checkVersion(msg); err != nil {
		return c, err
	}
	if err := json.Unmarshal(msg.Payload, &c); err != nil {
		return c, outbox.Permanent(fmt.Errorf("decode command %s: %w", msg.UUID, err))
	}
	if c.SagaID == uuid.Nil || c.Step == "" || c.Attempt < 1 || (c.Kind != KindAction && c.Kind != KindCompensation) {
		return c, outbox.Permanent(fmt.Errorf("command %s lacks saga_id, step, kind or attempt: %s", msg.UUID, truncate(msg.Payload)))
	}
	return c, nil
}

// DecodeReply decodes a reply message like DecodeCommand.
func DecodeReply(msg *message.Message) (Reply, error) {
	var r Reply
	if err := checkVersion(msg); err != nil {
		return r, err
	}
	if t := msg.Metadata.Get(outbox.HeaderType); t != ReplyType {
		return r, outbox.Permanent(fmt.Errorf("reply %s: unknown message type %q, want %q", msg.UUID, t, ReplyType))
	}
	if err := json.Unmarshal(msg.Payload, &r); err != nil {
		return r, outbox.Permanent(fmt.Errorf("decode reply %s: %w", msg.UUID, err))
	}
	if r.SagaID == uuid.Nil || r.Step == "" || r.Attempt < 1 || (r.Outcome != Succeeded && r.Outcome != Refused) ||
		(r.Kind != KindAction && r.Kind != KindCompensation) {
		return r, outbox.Permanent(fmt.Errorf("reply %s lacks saga_id, step, kind, attempt or outcome: %s", msg.UUID, truncate(msg.Payload)))
	}
	// The step and reason go to text columns (saga.history), which cannot
	// hold a NUL (SQLSTATE 22021): no delivery of such a reply could commit.
	if strings.ContainsRune(r.Step, 0) || strings.ContainsRune(r.Reason, 0) {
		return r, outbox.Permanent(fmt.Errorf("reply %s has a NUL character in its step or reason: %s", msg.UUID, truncate(msg.Payload)))
	}
	return r, nil
}

// NewReply builds the outbox message that answers cmd (the message that
// carried it is causation).
func NewReply(topic string, cmd Command, causation string, outcome Outcome, reason string) (outbox.Message, error) {
	payload, err := json.Marshal(Reply{SagaID: cmd.SagaID, Step: cmd.Step, Kind: cmd.Kind, Attempt: cmd.Attempt, Outcome: outcome, Reason: reason})
	if err != nil {
		return outbox.Message{}, fmt.Errorf("encode reply of saga %s: %w", cmd.SagaID, err)
	}
	return outbox.Message{
		Topic:         topic,
		Key:           cmd.SagaID.String(),
		Payload:       payload,
		Type:          ReplyType,
		SchemaVersion: SchemaVersion,
		CorrelationID: cmd.SagaID.String(),
		CausationID:   causation,
	}, nil
}

func checkVersion(msg *message.Message) error {
	v := msg.Metadata.Get(outbox.HeaderSchemaVersion)
	if v == "" {
		return outbox.Permanent(fmt.Errorf("message %s has no %s header", msg.UUID, outbox.HeaderSchemaVersion))
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return outbox.Permanent(fmt.Errorf("message %s: bad schema version %q", msg.UUID, v))
	}
	if n > SchemaVersion {
		return outbox.Permanent(fmt.Errorf("message %s has schema version %d, this build understands up to %d", msg.UUID, n, SchemaVersion))
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
