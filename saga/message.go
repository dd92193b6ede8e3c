package saga

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/outbox"
)

// SchemaVersion is the version of the command and reply payloads this build
// writes by default. It reads that version and the one before it, which
// fitCommand and upcastReply lift to this one; a message of a higher
// version is refused as permanent (dead-lettered), never half-understood.
// Consumers are deployed before producers, or the orchestrator is held at
// the older version (Engine.SetCommandVersion) until they are.
const SchemaVersion = 2

// topicName is what Kafka accepts as a topic name.
var topicName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,249}$`)

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
	// ReplyTo is the topic to answer on, the orchestrator's replies topic
	// (version 2): the return address, so that a participant needs no
	// configuration of it. Empty in a version 1 command, whose participant
	// answers on the topic it is configured with.
	ReplyTo string `json:"reply_to,omitempty"`
	// Version is the schema version the command arrived in (not on the
	// wire): a participant answers in it, so that an orchestrator that
	// reads only the older version keeps reading its answers during a
	// rolling upgrade.
	Version int `json:"-"`
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
	// Participant names the service that answered, for the saga's history
	// (version 2; a version 1 reply is upcast as answered by the
	// participant named like its step).
	Participant string `json:"participant,omitempty"`
}

// ReplyType is the message type of every reply.
const ReplyType = "saga.reply"

// DecodeCommand decodes a command message of this schema version or the one
// before it (upcast), checking its fields. Its errors are permanent:
// retrying cannot fix the message.
func DecodeCommand(msg *message.Message) (Command, error) {
	var c Command
	v, err := outbox.VersionOf(msg, SchemaVersion)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(msg.Payload, &c); err != nil {
		return c, outbox.Permanent(fmt.Errorf("decode command %s: %w", msg.UUID, err))
	}
	fitCommand(v, &c)
	c.Version = v
	if c.SagaID == uuid.Nil || c.Step == "" || c.Attempt < 1 || (c.Kind != KindAction && c.Kind != KindCompensation) {
		return c, outbox.Permanent(fmt.Errorf("command %s lacks saga_id, step, kind or attempt: %s", msg.UUID, truncate(msg.Payload)))
	}
	if c.ReplyTo != "" && !topicName.MatchString(c.ReplyTo) {
		return c, outbox.Permanent(fmt.Errorf("command %s: reply_to %q is not a topic name", msg.UUID, truncate([]byte(c.ReplyTo))))
	}
	return c, nil
}

// fitCommand keeps only what version v of a command has: it writes an
// older version during a rolling upgrade, and it reads an older one (a
// field of a newer version found in an older message is not trusted).
// Version 1 has no reply_to, so NewReply answers on the configured replies
// topic.
func fitCommand(v int, c *Command) {
	if v < 2 {
		c.ReplyTo = ""
	}
}

// downcastReply drops what version v of a reply lacks.
func downcastReply(v int, r *Reply) {
	if v < 2 {
		r.Participant = ""
	}
}

// DecodeReply decodes a reply message like DecodeCommand.
func DecodeReply(msg *message.Message) (Reply, error) {
	var r Reply
	v, err := outbox.VersionOf(msg, SchemaVersion)
	if err != nil {
		return r, err
	}
	if t := msg.Metadata.Get(outbox.HeaderType); t != ReplyType {
		return r, outbox.Permanent(fmt.Errorf("reply %s: unknown message type %q, want %q", msg.UUID, t, ReplyType))
	}
	if err := json.Unmarshal(msg.Payload, &r); err != nil {
		return r, outbox.Permanent(fmt.Errorf("decode reply %s: %w", msg.UUID, err))
	}
	upcastReply(v, &r)
	if r.SagaID == uuid.Nil || r.Step == "" || r.Attempt < 1 || (r.Outcome != Succeeded && r.Outcome != Refused) ||
		(r.Kind != KindAction && r.Kind != KindCompensation) {
		return r, outbox.Permanent(fmt.Errorf("reply %s lacks saga_id, step, kind, attempt or outcome: %s", msg.UUID, truncate(msg.Payload)))
	}
	// The step, reason and participant go to text columns (saga.history),
	// which cannot hold a NUL (SQLSTATE 22021): no delivery of such a reply
	// could commit.
	if strings.ContainsRune(r.Step, 0) || strings.ContainsRune(r.Reason, 0) || strings.ContainsRune(r.Participant, 0) {
		return r, outbox.Permanent(fmt.Errorf("reply %s has a NUL character in its step, reason or participant: %s", msg.UUID, truncate(msg.Payload)))
	}
	if len(r.Participant) > maxParticipant {
		return r, outbox.Permanent(fmt.Errorf("reply %s: participant is %d bytes, at most %d", msg.UUID, len(r.Participant), maxParticipant))
	}
	return r, nil
}

// maxParticipant bounds a reply's participant name (the schema's maxLength).
const maxParticipant = 200

// upcastReply lifts a reply of version v to SchemaVersion. Version 1 does
// not name who answered; every participant that wrote version 1 was the
// order saga's, named like its step (inventory, payment, shipping).
func upcastReply(v int, r *Reply) {
	if v < 2 {
		r.Participant = r.Step
	}
}

// NewReply builds the outbox message with which participant answers cmd
// (the message that carried it is causation): on the command's reply_to
// topic, or on topic (the participant's configured replies topic) when the
// command names none; in the command's schema version (the newest for a
// command built in code), so that an orchestrator still writing and reading
// the older version understands the answer.
func NewReply(participant, topic string, cmd Command, causation string, outcome Outcome, reason string) (outbox.Message, error) {
	v := cmd.Version
	if v == 0 {
		v = SchemaVersion
	}
	r := Reply{SagaID: cmd.SagaID, Step: cmd.Step, Kind: cmd.Kind, Attempt: cmd.Attempt, Outcome: outcome, Reason: reason, Participant: participant}
	downcastReply(v, &r)
	payload, err := json.Marshal(r)
	if err != nil {
		return outbox.Message{}, fmt.Errorf("encode reply of saga %s: %w", cmd.SagaID, err)
	}
	if cmd.ReplyTo != "" {
		topic = cmd.ReplyTo
	}
	return outbox.Message{
		Topic:         topic,
		Key:           cmd.SagaID.String(),
		Payload:       payload,
		Type:          ReplyType,
		SchemaVersion: v,
		CorrelationID: cmd.SagaID.String(),
		CausationID:   causation,
	}, nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "…"
	}
	return string(b)
}
