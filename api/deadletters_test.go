package api_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/internal/testenv"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/outbox"
)

// deadLetters gives the API a dead-letter store and a replayer publishing
// to the test's Kafka.
func deadLetters(t *testing.T, kafka kafkax.Config) func(*env, *api.Config) {
	return func(e *env, cfg *api.Config) {
		pub, err := kafka.NewPublisher(watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = pub.Close() })
		store := deadletter.NewStore(e.pool)
		cfg.DeadLetters, cfg.Replayer = store, deadletter.NewReplayer(store, pub)
	}
}

// recordDeadLetter records a dead letter of a payment.charge command of
// saga s, refused with reason, as the ingester would.
func (e *env) recordDeadLetter(topic string, offset int64, s uuid.UUID, reason string) {
	e.t.Helper()
	msg := message.NewMessage(uuid.NewString(), fmt.Appendf(nil, `{"saga_id":%q,"step":"payment","attempt":1}`, s))
	msg.Metadata.Set(kafkax.KeyMetadata, s.String())
	msg.Metadata.Set(outbox.HeaderType, "payment.charge")
	msg.Metadata.Set(middleware.PoisonedTopicKey, topic)
	msg.Metadata.Set(middleware.ReasonForPoisonedKey, reason)
	msg.Metadata.Set(outbox.HeaderDeadGroup, "sagaflow.payment")
	d := deadletter.FromMessage("sagaflow.payment.dlq", 0, offset, msg)
	if _, err := deadletter.NewStore(e.pool).Record(context.Background(), d); err != nil {
		e.t.Fatal(err)
	}
}

// GET /dead-letters lists, groups and shows dead letters; replay and purge
// are operator actions with a dry run, and a replay reaches the origin
// topic under a new message id naming the dead letter.
func TestDeadLetterRoutes(t *testing.T) {
	t.Parallel()
	kafka := testenv.Kafka(t)
	origin := testenv.Name(t, "payment.commands")
	if err := kafka.EnsureTopics(context.Background(), origin); err != nil {
		t.Fatal(err)
	}
	e := setup(t, operators(t), deadLetters(t, kafka))
	sagas := []uuid.UUID{uuid.New(), uuid.New(), uuid.New()}
	for i, s := range sagas[:2] {
		e.recordDeadLetter(origin, int64(i), s, fmt.Sprintf("charge for saga %s: amount %d is negative", s, -i-1))
	}
	e.recordDeadLetter(origin, 2, sagas[2], `unknown currency "XXX"`)

	var list api.DeadLetterList
	if res := e.do(http.MethodGet, "/dead-letters?limit=2", ""); res.status != http.StatusOK {
		t.Fatalf("list: %d %s", res.status, res.body)
	} else {
		res.decode(t, &list)
	}
	if len(list.DeadLetters) != 2 || list.Next == "" || list.DeadLetters[0].ID <= list.DeadLetters[1].ID {
		t.Fatalf("first page: %+v", list)
	}
	var page2 api.DeadLetterList
	e.do(http.MethodGet, "/dead-letters?limit=2&cursor="+list.Next, "").decode(t, &page2)
	if len(page2.DeadLetters) != 1 || page2.Next != "" {
		t.Fatalf("second page: %+v", page2)
	}
	var groups api.DeadLetterGroups
	e.do(http.MethodGet, "/dead-letters/groups", "").decode(t, &groups)
	if len(groups.Groups) != 2 {
		t.Fatalf("groups: %+v", groups)
	}
	var negative deadletter.Group
	for _, g := range groups.Groups {
		if g.Count == 2 {
			negative = g
		}
	}
	if negative.ErrorPattern != "charge for saga <id>: amount -<n> is negative" {
		t.Fatalf("groups %+v: no group of the two negative amounts", groups.Groups)
	}
	res := e.do(http.MethodGet, fmt.Sprintf("/dead-letters/%d", page2.DeadLetters[0].ID), "")
	var one map[string]any
	res.decode(t, &one)
	if res.status != http.StatusOK || one["origin_topic"] != origin || one["payload"].(map[string]any)["step"] != "payment" {
		t.Fatalf("show: %d %s", res.status, res.body)
	}
	// By the dead-lettered message's id, and by time.
	var byMessage api.DeadLetterList
	e.do(http.MethodGet, "/dead-letters?message_id="+url.QueryEscape(page2.DeadLetters[0].MessageID), "").decode(t, &byMessage)
	if len(byMessage.DeadLetters) != 1 || byMessage.DeadLetters[0].ID != page2.DeadLetters[0].ID {
		t.Errorf("by message id %s: %+v", page2.DeadLetters[0].MessageID, byMessage)
	}
	e.exec(`UPDATE ops.dead_letters SET dead_lettered_at = now() - interval '3 hours' WHERE id = $1`, page2.DeadLetters[0].ID)
	var recent, old api.DeadLetterList
	e.do(http.MethodGet, "/dead-letters?since=1h", "").decode(t, &recent)
	e.do(http.MethodGet, "/dead-letters?before="+url.QueryEscape(time.Now().Add(-2*time.Hour).UTC().Format(time.RFC3339)), "").decode(t, &old)
	if len(recent.DeadLetters) != 2 || len(old.DeadLetters) != 1 || old.DeadLetters[0].ID != page2.DeadLetters[0].ID {
		t.Errorf("since=1h: %d dead letters (want 2); before two hours ago: %+v", len(recent.DeadLetters), old.DeadLetters)
	}
	for path, want := range map[string]int{
		"/dead-letters?since=yesterday":  http.StatusBadRequest,
		"/dead-letters?before=1h":        http.StatusBadRequest,
		"/dead-letters?id=1,x":           http.StatusBadRequest,
		"/dead-letters/999999":           http.StatusNotFound,
		"/dead-letters/x":                http.StatusBadRequest,
		"/dead-letters?saga_id=nope":     http.StatusBadRequest,
		"/dead-letters?color=red":        http.StatusBadRequest,
		"/dead-letters?limit=0":          http.StatusBadRequest,
		"/dead-letters/groups?cursor=-1": http.StatusBadRequest,
	} {
		if res := e.do(http.MethodGet, path, ""); res.status != want {
			t.Errorf("GET %s: %d, want %d: %s", path, res.status, want, res.body)
		}
	}

	alice := []string{"Authorization", "Bearer " + aliceToken, "Content-Type", "application/json"}
	byPrint := fmt.Sprintf(`{"fingerprint":%q`, negative.Fingerprint)
	if res := e.do(http.MethodPost, "/dead-letters/actions/replay", byPrint+"}", "Content-Type", "application/json"); res.status != http.StatusUnauthorized {
		t.Fatalf("replay without a token: %d %s", res.status, res.body)
	}
	if res := e.do(http.MethodPost, "/dead-letters/actions/replay", `{}`, alice...); res.status != http.StatusUnprocessableEntity {
		t.Fatalf("replay without a filter: %d %s", res.status, res.body)
	}
	var result api.DeadLetterResult
	e.do(http.MethodPost, "/dead-letters/actions/replay", byPrint+`,"dry_run":true}`, alice...).decode(t, &result)
	if result.Matched != 2 || !result.DryRun || len(result.Replayed) != 0 {
		t.Fatalf("dry run: %+v", result)
	}

	// The replay reaches the origin topic.
	sub, err := kafka.NewSubscriber(testenv.Name(t, "watch"), watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msgs, err := sub.Subscribe(ctx, origin)
	if err != nil {
		t.Fatal(err)
	}
	res = e.do(http.MethodPost, "/dead-letters/actions/replay", byPrint+"}", alice...)
	res.decode(t, &result)
	if res.status != http.StatusOK || result.Matched != 2 || len(result.Replayed) != 2 {
		t.Fatalf("replay: %d %s", res.status, res.body)
	}
	want := map[string]string{}
	for _, r := range result.Replayed {
		want[r.MessageID.String()] = fmt.Sprint(r.DeadLetter)
	}
	for range 2 {
		select {
		case m := <-msgs:
			m.Ack()
			if from, ok := want[m.UUID]; !ok || m.Metadata.Get(outbox.HeaderReplayedFrom) != from ||
				m.Metadata.Get(outbox.HeaderType) != "payment.charge" || m.Metadata.Get(middleware.ReasonForPoisonedKey) != "" {
				t.Fatalf("replayed message %s with metadata %v; want one of %v, without the dead-letter headers", m.UUID, m.Metadata, want)
			}
			delete(want, m.UUID)
		case <-ctx.Done():
			t.Fatalf("replayed messages %v never reached %s", want, origin)
		}
	}
	if !strings.Contains(e.logs.String(), "replay dead letters") || !strings.Contains(e.logs.String(), "operator=alice") {
		t.Errorf("the replay was not logged with its operator:\n%s", e.logs.String())
	}

	// Purge: a dry run, then the purge.
	e.do(http.MethodPost, "/dead-letters/actions/purge", `{"type":"payment.charge","dry_run":true}`, alice...).decode(t, &result)
	if result.Matched != 3 || result.Purged != 0 {
		t.Fatalf("purge dry run: %+v", result)
	}
	e.do(http.MethodPost, "/dead-letters/actions/purge", byPrint+"}", alice...).decode(t, &result)
	if result.Purged != 2 {
		t.Fatalf("purge: %+v", result)
	}
	var rest api.DeadLetterList
	e.do(http.MethodGet, "/dead-letters", "").decode(t, &rest)
	if len(rest.DeadLetters) != 1 {
		t.Fatalf("after the purge: %+v", rest)
	}
}
