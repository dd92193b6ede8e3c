package console

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/kafkax"
)

type deadLettersData struct {
	Query  url.Values
	Groups []deadletter.Group
	Rows   []deadletter.DeadLetter
	Next   string
	// Filtered says a filter is set (replay and purge are offered).
	Filtered bool
	// Consumers are the consumer groups that dead-letter.
	Consumers []string
}

// deadLetterFilter reads the dead-letter pages' filters: the API's,
// deadletter.ParseFilter.
func deadLetterFilter(q url.Values) (deadletter.Filter, error) {
	f, err := deadletter.ParseFilter(q, time.Now())
	if err != nil {
		return f, fail(http.StatusBadRequest, "%v", err)
	}
	return f, nil
}

func (s *server) deadLetterStore() (*deadletter.Store, error) {
	if s.cfg.DeadLetters == nil {
		return nil, fail(http.StatusNotFound, "this console has no dead-letter store")
	}
	return s.cfg.DeadLetters, nil
}

func (s *server) deadLetters(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	store, err := s.deadLetterStore()
	if err != nil {
		return "", view{}, err
	}
	q := r.URL.Query()
	f, err := deadLetterFilter(q)
	if err != nil {
		return "", view{}, err
	}
	d := deadLettersData{Query: q, Filtered: !f.IsZero()}
	for _, c := range kafkax.Consumers {
		d.Consumers = append(d.Consumers, s.cfg.Topics.Group(c))
	}
	if d.Groups, err = store.Groups(r.Context(), f, 200); err != nil {
		return "", view{}, err
	}
	list := f
	if c := q.Get("cursor"); c != "" {
		if list.Cursor, err = strconv.ParseInt(c, 10, 64); err != nil {
			return "", view{}, fail(http.StatusBadRequest, "cursor %q is not a page cursor", c)
		}
	}
	if d.Rows, err = store.List(r.Context(), list, sagaPage+1); err != nil {
		return "", view{}, err
	}
	if len(d.Rows) > sagaPage {
		d.Rows = d.Rows[:sagaPage]
		next := cloneValues(q)
		next.Set("cursor", strconv.FormatInt(d.Rows[len(d.Rows)-1].ID, 10))
		d.Next = next.Encode()
	}
	return "deadletters", view{Title: "Dead letters", Nav: "dead-letters", Data: d, Flash: q.Get("done")}, nil
}

type deadLetterData struct {
	deadletter.DeadLetter
	// Payload is pretty-printed when it is JSON.
	Pretty string
}

func (s *server) deadLetter(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	store, err := s.deadLetterStore()
	if err != nil {
		return "", view{}, err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return "", view{}, fail(http.StatusBadRequest, "%q is not a dead letter's number", r.PathValue("id"))
	}
	dl, err := store.Get(r.Context(), id)
	if errors.Is(err, deadletter.ErrNotFound) {
		return "", view{}, fail(http.StatusNotFound, "no dead letter %d (purged, or never recorded)", id)
	}
	if err != nil {
		return "", view{}, err
	}
	d := deadLetterData{DeadLetter: dl, Pretty: string(dl.Payload)}
	var buf bytes.Buffer
	if json.Indent(&buf, dl.Payload, "", "  ") == nil {
		d.Pretty = buf.String()
	}
	return "deadletter", view{Title: fmt.Sprintf("Dead letter %d", id), Nav: "dead-letters", Data: d, Flash: r.URL.Query().Get("done")}, nil
}

// deadLetterAction is the store and the action (replay or purge) a
// dead-letter action page acts with.
func (s *server) deadLetterAction(r *http.Request) (*deadletter.Store, string, error) {
	store, err := s.deadLetterStore()
	if err != nil {
		return nil, "", err
	}
	action := r.PathValue("action")
	if action != "replay" && action != "purge" {
		return nil, "", fail(http.StatusNotFound, "no action %q", action)
	}
	return store, action, nil
}

// confirmDeadLetters shows how many dead letters a replay or purge would
// touch (the dry run) and asks for confirmation.
func (s *server) confirmDeadLetters(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	store, action, err := s.deadLetterAction(r)
	if err != nil {
		return "", view{}, err
	}
	if s.cfg.ReadOnly {
		return "", view{}, fail(http.StatusForbidden, "the console is read-only: actions are refused")
	}
	q := r.URL.Query()
	f, err := deadLetterFilter(q)
	if err != nil {
		return "", view{}, err
	}
	if f.IsZero() {
		return "", view{}, fail(http.StatusBadRequest, "choose the dead letters first (a group, a consumer, a type, a saga or one dead letter)")
	}
	n, err := store.Count(r.Context(), f)
	if err != nil {
		return "", view{}, err
	}
	what := map[string]string{
		"replay": "publish them again to their origin topics, with new message ids naming the dead letters (safe: consumers are idempotent)",
		"purge":  "delete them from the console (the Kafka dead-letter topics keep their copies until their retention)",
	}[action]
	d := confirmData{Action: action, Count: n, Post: s.cfg.Base + "/dead-letter-actions/" + action, Hidden: pick(q, deadletter.FilterParams),
		What: fmt.Sprintf("%s %d dead letter(s): %s.", action, n, what)}
	return "confirm", view{Title: "Confirm " + action, Nav: "dead-letters", Data: d}, nil
}

func (s *server) actDeadLetters(w http.ResponseWriter, r *http.Request) (string, view, error) {
	store, action, err := s.deadLetterAction(r)
	if err != nil {
		return "", view{}, err
	}
	who, reason, err := s.operator(r)
	if err != nil {
		return "", view{}, err
	}
	f, err := deadLetterFilter(r.PostForm)
	if err != nil {
		return "", view{}, err
	}
	if f.IsZero() {
		return "", view{}, fail(http.StatusBadRequest, "choose the dead letters first")
	}
	var done string
	switch action {
	case "replay":
		if s.cfg.Replayer == nil {
			return "", view{}, fail(http.StatusServiceUnavailable, "this console cannot publish to Kafka")
		}
		replayed, err := s.cfg.Replayer.Replay(r.Context(), f, 1000)
		s.log.Info("operator action", "action", "replay dead letters", "operator", who, "reason", reason, "replayed", len(replayed), "err", err)
		if err != nil {
			return "", view{}, fail(http.StatusServiceUnavailable, "%d replayed, then: %v", len(replayed), err)
		}
		done = fmt.Sprintf("%d dead letter(s) replayed by %s", len(replayed), who)
	case "purge":
		n, err := store.Purge(r.Context(), f)
		s.log.Info("operator action", "action", "purge dead letters", "operator", who, "reason", reason, "purged", n, "err", err)
		if err != nil {
			return "", view{}, err
		}
		done = fmt.Sprintf("%d dead letter(s) purged by %s", n, who)
	}
	back := pick(r.PostForm, deadletter.FilterParams)
	back.Del("id")
	back.Set("done", done)
	http.Redirect(w, r, s.cfg.Base+"/dead-letters?"+back.Encode(), http.StatusSeeOther)
	return "", view{}, nil
}
