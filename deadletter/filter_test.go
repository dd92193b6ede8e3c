package deadletter_test

import (
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/deadletter"
)

// ParseFilter reads the filters the API, the console and the CLI share,
// and Values writes them back.
func TestParseFilter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	saga := uuid.New()
	cases := []struct {
		query string
		want  deadletter.Filter
		err   string
	}{
		{"", deadletter.Filter{}, ""},
		{"id=3,%204,", deadletter.Filter{IDs: []int64{3, 4}}, ""},
		{"consumer_group=sagaflow.payment&type=payment.charge&fingerprint=ab12", deadletter.Filter{ConsumerGroup: "sagaflow.payment", Type: "payment.charge", Fingerprint: "ab12"}, ""},
		{"saga_id=" + saga.String(), deadletter.Filter{SagaID: saga}, ""},
		{"message_id=%20m-1%20", deadletter.Filter{MessageID: "m-1"}, ""},
		{"since=90m", deadletter.Filter{Since: now.Add(-90 * time.Minute)}, ""},
		{"since=2026-12-01T00:00:00Z&before=now", deadletter.Filter{Since: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC), Before: now}, ""},
		{"id=0", deadletter.Filter{}, "id \"0\" is not a dead letter's number"},
		{"id=two", deadletter.Filter{}, "id \"two\""},
		{"saga_id=42", deadletter.Filter{}, "saga_id \"42\" is not a saga id"},
		{"since=-1h", deadletter.Filter{}, "since \"-1h\""},
		{"since=yesterday", deadletter.Filter{}, "since \"yesterday\""},
		{"before=1h", deadletter.Filter{}, "before \"1h\" is not a time"},
	}
	for _, tc := range cases {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := deadletter.ParseFilter(q, now)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%q: %+v, %v; want %+v", tc.query, got, err, tc.want)
			continue
		}
		back, err := deadletter.ParseFilter(got.Values(), now)
		if err != nil || !reflect.DeepEqual(back, got) {
			t.Errorf("%q: Values() %v reads back as %+v, %v", tc.query, got.Values(), back, err)
		}
	}
}
