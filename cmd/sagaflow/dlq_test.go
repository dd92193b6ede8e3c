package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// `sagaflow dlq` groups, lists and shows the recorded dead letters, replays
// and purges them by filter (with a dry run), and refuses a replay or purge
// without one.
func TestDLQCommand(t *testing.T) {
	db := testenv.DB(t)
	kafka := testenv.Kafka(t)
	ctx := context.Background()
	origin := testenv.Name(t, "inventory.commands")
	if err := kafka.EnsureTopics(ctx, origin); err != nil {
		t.Fatal(err)
	}
	store := deadletter.NewStore(db.Pool)
	saga := uuid.New()
	for i, reason := range []string{"decode command: quantity -1 is negative", "decode command: quantity -7 is negative", `unknown message type "inventory.explode"`} {
		msg := message.NewMessage(uuid.NewString(), []byte(`{"saga_id":"`+saga.String()+`","step":"inventory"}`))
		msg.Metadata.Set(kafkax.KeyMetadata, saga.String())
		msg.Metadata.Set(outbox.HeaderType, "inventory.reserve")
		msg.Metadata.Set(middleware.PoisonedTopicKey, origin)
		msg.Metadata.Set(middleware.ReasonForPoisonedKey, reason)
		if _, err := store.Record(ctx, deadletter.FromMessage("sagaflow.inventory.dlq", 0, int64(i), msg)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := runDLQ(ctx, append(args, "--database-url", db.URL, "--kafka-brokers", strings.Join(kafka.Brokers, ",")), &out)
		return out.String(), err
	}
	out, err := run("groups", "--json")
	var groups []deadletter.Group
	if err != nil || json.Unmarshal([]byte(out), &groups) != nil || len(groups) != 2 {
		t.Fatalf("groups: %v\n%s", err, out)
	}
	fp := groups[0].Fingerprint
	if groups[0].Count != 2 {
		fp = groups[1].Fingerprint
	}
	if out, err := run(); err != nil || !strings.Contains(out, "3 dead letter(s)") || !strings.Contains(out, "sagaflow.inventory") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err := run("list", "--limit", "1"); err != nil || !strings.Contains(out, "next page: --cursor") {
		t.Fatalf("list a page: %v\n%s", err, out)
	}
	second, err := store.Get(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run("list", "--message-id", second.MessageID, "--since", "1h", "--json"); err != nil || strings.Count(out, `"message_id"`) != 1 || !strings.Contains(out, second.MessageID) {
		t.Fatalf("list by message id: %v\n%s", err, out)
	}
	if out, err := run("list", "--since", "2099-01-01T00:00:00Z"); err != nil || !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("list since a future time: %v\n%s", err, out)
	}
	if out, err := run("show", "1"); err != nil || !strings.Contains(out, `"step": "inventory"`) || !strings.Contains(out, origin) {
		t.Fatalf("show: %v\n%s", err, out)
	}
	if out, err := run("replay", "--fingerprint", fp, "--dry-run"); err != nil || !strings.Contains(out, "2 dead letter(s) match; nothing done") {
		t.Fatalf("replay dry run: %v\n%s", err, out)
	}
	if out, err := run("replay", "--fingerprint", fp); err != nil || !strings.Contains(out, "2 of 2 matching dead letter(s) replayed") {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	d, err := store.Get(ctx, 1)
	if err != nil || d.Replays != 1 {
		t.Fatalf("dead letter 1 after the replay: %+v, %v", d, err)
	}
	if out, err := run("purge", "--id", "3"); err != nil || !strings.Contains(out, "1 dead letter(s) purged") {
		t.Fatalf("purge: %v\n%s", err, out)
	}
	for _, bad := range [][]string{{"replay"}, {"purge"}, {"show"}, {"show", "x"}, {"list", "--saga", "nope"}, {"purge", "--before", "yesterday"}, {"list", "--since", "-1h"}, {"explode"}} {
		if _, err := run(bad...); err == nil {
			t.Errorf("dlq %v succeeded", bad)
		}
	}
}
