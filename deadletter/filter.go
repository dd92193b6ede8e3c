package deadletter

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// FilterParams are the dead-letter filters that GET /dead-letters, the
// console and `sagaflow dlq` share, as query parameters: id (numbers,
// comma separated), consumer_group, type, fingerprint, saga_id,
// message_id, since (dead-lettered at or after: RFC 3339, or a duration
// such as 1h meaning that long ago) and before (RFC 3339, or now).
var FilterParams = []string{"id", "consumer_group", "type", "fingerprint", "saga_id", "message_id", "since", "before"}

// FilterError is a dead-letter filter parameter that is not understood.
type FilterError struct {
	Param  string
	Reason string
}

func (e *FilterError) Error() string { return e.Param + " " + e.Reason }

// ParseFilter reads the filters (FilterParams) from q; durations count
// back from now.
func ParseFilter(q url.Values, now time.Time) (Filter, error) {
	f := Filter{ConsumerGroup: q.Get("consumer_group"), Type: q.Get("type"), Fingerprint: q.Get("fingerprint"),
		MessageID: strings.TrimSpace(q.Get("message_id"))}
	for _, s := range strings.Split(q.Get("id"), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 1 {
			return f, &FilterError{"id", fmt.Sprintf("%q is not a dead letter's number", s)}
		}
		f.IDs = append(f.IDs, n)
	}
	if v := strings.TrimSpace(q.Get("saga_id")); v != "" {
		id, err := uuid.Parse(v)
		if err != nil {
			return f, &FilterError{"saga_id", fmt.Sprintf("%q is not a saga id", v)}
		}
		f.SagaID = id
	}
	var err error
	if f.Since, err = parseTime(q.Get("since"), now, true); err != nil {
		return f, &FilterError{"since", err.Error()}
	}
	if f.Before, err = parseTime(q.Get("before"), now, false); err != nil {
		return f, &FilterError{"before", err.Error()}
	}
	return f, nil
}

// parseTime reads an RFC 3339 time, now, or (when ago) a duration back
// from now.
func parseTime(v string, now time.Time, ago bool) (time.Time, error) {
	v = strings.TrimSpace(v)
	switch {
	case v == "":
		return time.Time{}, nil
	case v == "now":
		return now, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if ago {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			return now.Add(-d), nil
		}
		return time.Time{}, fmt.Errorf("%q is not a time like 2026-12-01T00:00:00Z or a duration like 1h", v)
	}
	return time.Time{}, fmt.Errorf("%q is not a time like 2026-12-01T00:00:00Z (or now)", v)
}

// Values returns f's filters as query parameters (ParseFilter's inverse,
// times in RFC 3339; the cursor is not a filter and is left out).
func (f Filter) Values() url.Values {
	q := url.Values{}
	var ids []string
	for _, id := range f.IDs {
		ids = append(ids, strconv.FormatInt(id, 10))
	}
	for k, v := range map[string]string{"id": strings.Join(ids, ","), "consumer_group": f.ConsumerGroup, "type": f.Type,
		"fingerprint": f.Fingerprint, "message_id": f.MessageID} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.SagaID != uuid.Nil {
		q.Set("saga_id", f.SagaID.String())
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Before.IsZero() {
		q.Set("before", f.Before.UTC().Format(time.RFC3339Nano))
	}
	return q
}
