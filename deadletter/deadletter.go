// Package deadletter records the messages Sagaflow's consumers gave up on
// and lets an operator find, inspect, replay and purge them.
//
// A consumer that gives up on a message (a permanent error, retries spent,
// a message of a future schema version) publishes it to its group's
// dead-letter topic with the reason and its origin (package outbox stamps
// the origin partition, offset, key, consumer group and attempts). The
// Ingester reads every dead-letter topic and records each dead letter once
// in ops.dead_letters, keyed by its own place in the dead-letter topic, so
// a redelivery is a no-op. The Kafka topics stay the source: a participant
// written in another language dead-letters the same way.
//
// Replay publishes a dead letter again to its origin topic, with its key and
// headers, under a new message id derived from the dead letter's id and
// replay number (so a replay repeated after a crash has the same id, which
// the inbox absorbs) and a header naming the dead letter.
package deadletter

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// DeadLetter is one recorded dead letter.
type DeadLetter struct {
	ID int64 `json:"id"`
	// Where the dead letter itself lies.
	DLQTopic     string `json:"dlq_topic"`
	DLQPartition int32  `json:"dlq_partition"`
	DLQOffset    int64  `json:"dlq_offset"`
	// MessageID is the original message's id.
	MessageID     string `json:"message_id"`
	ConsumerGroup string `json:"consumer_group"`
	// Where the original message lay (partition and offset are unknown for
	// a dead letter published by a consumer that does not stamp them).
	OriginTopic     string            `json:"origin_topic"`
	OriginPartition *int32            `json:"origin_partition,omitempty"`
	OriginOffset    *int64            `json:"origin_offset,omitempty"`
	Key             string            `json:"key"`
	Type            string            `json:"type"`
	Headers         map[string]string `json:"headers"`
	Payload         []byte            `json:"-"`
	Error           string            `json:"error"`
	// ErrorPattern is Error with ids, numbers and quoted values replaced;
	// Fingerprint hashes (consumer group, type, pattern).
	ErrorPattern   string     `json:"error_pattern"`
	Fingerprint    string     `json:"fingerprint"`
	Attempts       *int       `json:"attempts,omitempty"`
	SagaID         *uuid.UUID `json:"saga_id,omitempty"`
	Step           string     `json:"step,omitempty"`
	DeadLetteredAt time.Time  `json:"dead_lettered_at"`
	RecordedAt     time.Time  `json:"recorded_at"`
	Replays        int        `json:"replays"`
	LastReplayedAt *time.Time `json:"last_replayed_at,omitempty"`
}

// MarshalJSON adds the payload: as JSON when it is JSON, else as a string
// (invalid UTF-8 replaced), so that a person can read it.
func (d DeadLetter) MarshalJSON() ([]byte, error) {
	type plain DeadLetter
	var payload any = string(d.Payload)
	if json.Valid(d.Payload) {
		payload = json.RawMessage(d.Payload)
	}
	return json.Marshal(struct {
		plain
		Payload any `json:"payload"`
	}{plain(d), payload})
}

// Group is the dead letters of one fingerprint.
type Group struct {
	Fingerprint   string    `json:"fingerprint"`
	ConsumerGroup string    `json:"consumer_group"`
	Type          string    `json:"type"`
	ErrorPattern  string    `json:"error_pattern"`
	Count         int64     `json:"count"`
	Replayed      int64     `json:"replayed"`
	FirstSeen     time.Time `json:"first_seen"`
	LastSeen      time.Time `json:"last_seen"`
	// LatestID is the newest dead letter of the group.
	LatestID int64 `json:"latest_id"`
}

// headersNotReplayed are the headers a replay drops: what the dead-letter
// path added, and the ids the publisher sets itself.
var headersNotReplayed = []string{
	middleware.ReasonForPoisonedKey, middleware.PoisonedTopicKey, middleware.PoisonedHandlerKey,
	middleware.PoisonedSubscriberKey, outbox.HeaderDeadPartition, outbox.HeaderDeadOffset,
	outbox.HeaderDeadGroup, outbox.HeaderDeadAttempts, outbox.HeaderDeadAt, outbox.HeaderReplayedFrom,
	"_watermill_message_uuid",
}

// FromMessage decodes a dead letter read from dlqTopic at partition and
// offset. It never fails: whatever the message lacks is left empty (a
// dead letter is worth keeping even when nothing in it decodes).
func FromMessage(dlqTopic string, partition int32, offset int64, msg *message.Message) DeadLetter {
	md := msg.Metadata
	d := DeadLetter{
		DLQTopic: dlqTopic, DLQPartition: partition, DLQOffset: offset,
		MessageID:     msg.UUID,
		ConsumerGroup: md.Get(outbox.HeaderDeadGroup),
		OriginTopic:   md.Get(middleware.PoisonedTopicKey),
		Key:           md.Get(kafkax.KeyMetadata),
		Type:          md.Get(outbox.HeaderType),
		Headers:       make(map[string]string, len(md)),
		Payload:       msg.Payload,
		Error:         md.Get(middleware.ReasonForPoisonedKey),
	}
	for k, v := range md {
		d.Headers[k] = v
	}
	if d.ConsumerGroup == "" { // a dead-letter topic is named <group>.dlq
		d.ConsumerGroup = strings.TrimSuffix(dlqTopic, ".dlq")
	}
	if p, err := strconv.ParseInt(md.Get(outbox.HeaderDeadPartition), 10, 32); err == nil {
		p32 := int32(p)
		d.OriginPartition = &p32
	}
	if o, err := strconv.ParseInt(md.Get(outbox.HeaderDeadOffset), 10, 64); err == nil {
		d.OriginOffset = &o
	}
	if n, err := strconv.Atoi(md.Get(outbox.HeaderDeadAttempts)); err == nil {
		d.Attempts = &n
	}
	d.DeadLetteredAt = time.Now().UTC()
	if at, err := time.Parse(time.RFC3339Nano, md.Get(outbox.HeaderDeadAt)); err == nil {
		d.DeadLetteredAt = at
	}
	// Commands and replies carry the saga and step in their body.
	var ref struct {
		SagaID *uuid.UUID `json:"saga_id"`
		Step   string     `json:"step"`
	}
	if json.Unmarshal(msg.Payload, &ref) == nil {
		d.SagaID, d.Step = ref.SagaID, ref.Step
	}
	d.ErrorPattern = Pattern(d.Error)
	d.Fingerprint = Fingerprint(d.ConsumerGroup, d.Type, d.ErrorPattern)
	return d
}

var (
	uuidRe   = regexp.MustCompile(`[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`)
	quotedRe = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'[^']*'`)
	numberRe = regexp.MustCompile(`\b\d+(?:\.\d+)?\b`)
	spaceRe  = regexp.MustCompile(`\s+`)
)

// Pattern normalises an error message: ids, quoted values and numbers
// become placeholders, so that the dead letters of one cause (an order's
// bad quantity, a saga's unknown step) read the same.
func Pattern(errText string) string {
	p := uuidRe.ReplaceAllString(errText, "<id>")
	p = quotedRe.ReplaceAllString(p, "<value>")
	p = numberRe.ReplaceAllString(p, "<n>")
	p = strings.TrimSpace(spaceRe.ReplaceAllString(p, " "))
	if len(p) > 500 {
		p = p[:500]
	}
	return p
}

// Fingerprint identifies a cause: the consumer group, the message type and
// the error pattern.
func Fingerprint(group, typ, pattern string) string {
	h := sha256.Sum256([]byte(group + "\x00" + typ + "\x00" + pattern))
	return hex.EncodeToString(h[:8])
}

// replayNamespace derives replayed messages' ids.
var replayNamespace = uuid.MustParse("6f3a1c52-5d0e-4f7b-9c1e-2b7d8e4a9f10")

// ReplayID is the message id of the n-th replay of dead letter id: the same
// for a replay repeated after a crash, so the inbox absorbs the repeat.
func ReplayID(id int64, n int) uuid.UUID {
	return uuid.NewSHA1(replayNamespace, []byte(strconv.FormatInt(id, 10)+"/"+strconv.Itoa(n)))
}
