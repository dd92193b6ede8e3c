package api

import (
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/deadletter"
)

// DeadLetterList is the answer to GET /dead-letters: newest first; Next is
// the cursor of the next page, absent on the last.
type DeadLetterList struct {
	DeadLetters []deadletter.DeadLetter `json:"dead_letters"`
	Next        string                  `json:"next,omitempty"`
}

// DeadLetterGroups is the answer to GET /dead-letters/groups.
type DeadLetterGroups struct {
	Groups []deadletter.Group `json:"groups"`
}

// DeadLetterAction is the body of POST /dead-letters/actions/replay and
// /dead-letters/actions/purge: which dead letters (every field given must match;
// at least one is required), and whether only to count them.
type DeadLetterAction struct {
	IDs           []int64    `json:"ids,omitempty"`
	ConsumerGroup string     `json:"consumer_group,omitempty"`
	Type          string     `json:"type,omitempty"`
	Fingerprint   string     `json:"fingerprint,omitempty"`
	SagaID        *uuid.UUID `json:"saga_id,omitempty"`
	MessageID     string     `json:"message_id,omitempty"`
	// Before and Since select dead letters dead-lettered before Before
	// and at or after Since (RFC 3339).
	Before *time.Time `json:"before,omitempty"`
	Since  *time.Time `json:"since,omitempty"`
	// DryRun counts the matching dead letters and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Limit bounds a replay (default and most MaxReplay).
	Limit int `json:"limit,omitempty"`
}

// MaxReplay bounds the dead letters one POST /dead-letters/actions/replay replays.
const MaxReplay = 1000

// DeadLetterResult is the answer to POST /dead-letters/actions/replay and
// /dead-letters/actions/purge.
type DeadLetterResult struct {
	// Matched counts the dead letters the filter matches.
	Matched int64 `json:"matched"`
	DryRun  bool  `json:"dry_run"`
	// Replayed lists what a replay published; Purged counts what a purge
	// deleted.
	Replayed []deadletter.Replayed `json:"replayed,omitempty"`
	Purged   int64                 `json:"purged,omitempty"`
}

func (a DeadLetterAction) filter() deadletter.Filter {
	f := deadletter.Filter{IDs: a.IDs, ConsumerGroup: a.ConsumerGroup, Type: a.Type, Fingerprint: a.Fingerprint, MessageID: a.MessageID}
	if a.SagaID != nil {
		f.SagaID = *a.SagaID
	}
	if a.Before != nil {
		f.Before = *a.Before
	}
	if a.Since != nil {
		f.Since = *a.Since
	}
	return f
}

// deadLetters is the store, or a 503 when the API has none.
func (s *server) deadLetters() (*deadletter.Store, error) {
	if s.cfg.DeadLetters == nil {
		return nil, &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
			Detail: "this API serves no dead letters (no dead-letter store configured)"}
	}
	return s.cfg.DeadLetters, nil
}

// deadLetterQuery reads the filter of GET /dead-letters and
// /dead-letters/groups from the query string.
func deadLetterQuery(r *http.Request) (f deadletter.Filter, limit int, err error) {
	q := r.URL.Query()
	known := append([]string{"limit", "cursor"}, deadletter.FilterParams...)
	for name, vs := range q {
		if !slices.Contains(known, name) {
			return f, 0, badRequest(name, "is not a known query parameter", fmt.Sprintf("unknown query parameter %q; this route takes %v", name, known))
		}
		if len(vs) > 1 {
			return f, 0, badRequest(name, "must be given once", fmt.Sprintf("query parameter %s is given %d times", name, len(vs)))
		}
	}
	f, err = deadletter.ParseFilter(q, time.Now())
	var fe *deadletter.FilterError
	if errors.As(err, &fe) {
		return f, 0, badRequest(fe.Param, fe.Reason, fe.Error())
	}
	if v := q.Get("cursor"); v != "" {
		if f.Cursor, err = strconv.ParseInt(v, 10, 64); err != nil || f.Cursor < 1 {
			return f, 0, badRequest("cursor", "must be the next cursor of the previous page", fmt.Sprintf("cursor %q is not a page cursor", v))
		}
	}
	limit, err = listLimit(q)
	return f, limit, err
}

// listDeadLetters is GET /dead-letters.
func (s *server) listDeadLetters(w http.ResponseWriter, r *http.Request) error {
	store, err := s.deadLetters()
	if err != nil {
		return err
	}
	f, limit, err := deadLetterQuery(r)
	if err != nil {
		return err
	}
	ds, err := store.List(r.Context(), f, limit+1) // one more tells whether a next page exists
	if err != nil {
		return storeError(err)
	}
	out := DeadLetterList{DeadLetters: ds}
	if len(ds) > limit {
		out.DeadLetters = ds[:limit]
		out.Next = strconv.FormatInt(ds[limit-1].ID, 10)
	}
	if out.DeadLetters == nil {
		out.DeadLetters = []deadletter.DeadLetter{}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// deadLetterGroups is GET /dead-letters/groups.
func (s *server) deadLetterGroups(w http.ResponseWriter, r *http.Request) error {
	store, err := s.deadLetters()
	if err != nil {
		return err
	}
	f, limit, err := deadLetterQuery(r)
	if err != nil {
		return err
	}
	groups, err := store.Groups(r.Context(), f, limit)
	if err != nil {
		return storeError(err)
	}
	if groups == nil {
		groups = []deadletter.Group{}
	}
	writeJSON(w, http.StatusOK, DeadLetterGroups{Groups: groups})
	return nil
}

// getDeadLetter is GET /dead-letters/{id}.
func (s *server) getDeadLetter(w http.ResponseWriter, r *http.Request) error {
	store, err := s.deadLetters()
	if err != nil {
		return err
	}
	v := r.PathValue("id")
	id, err := strconv.ParseInt(v, 10, 64)
	if err != nil || id < 1 {
		return badRequest("id", "must be a dead letter's number", fmt.Sprintf("%q is not a dead letter's number", v))
	}
	d, err := store.Get(r.Context(), id)
	if errors.Is(err, deadletter.ErrNotFound) {
		return notFound(fmt.Sprintf("no dead letter %d (purged, or never recorded)", id))
	}
	if err != nil {
		return storeError(err)
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

// decodeDeadLetterAction reads and checks the body of the dead-letter
// actions.
func (s *server) decodeDeadLetterAction(w http.ResponseWriter, r *http.Request) (DeadLetterAction, error) {
	var req DeadLetterAction
	if err := s.decodeJSON(w, r, &req, reflect.TypeFor[DeadLetterAction]()); err != nil {
		return req, err
	}
	if req.filter().IsZero() {
		return req, &Problem{Type: TypeValidation, Title: "Unprocessable Content", Status: http.StatusUnprocessableEntity,
			Detail: "say which dead letters: ids, consumer_group, type, fingerprint, saga_id or before (every dead letter: before = now)"}
	}
	if req.Limit < 0 || req.Limit > MaxReplay {
		return req, badRequest("limit", fmt.Sprintf("must be from 1 to %d", MaxReplay), fmt.Sprintf("limit %d is out of range", req.Limit))
	}
	if req.Limit == 0 {
		req.Limit = MaxReplay
	}
	return req, nil
}

// deadLetterAction reads a dead-letter action's body and counts what it
// matches (the dry run's answer).
func (s *server) deadLetterAction(w http.ResponseWriter, r *http.Request) (*deadletter.Store, DeadLetterAction, int64, error) {
	store, err := s.deadLetters()
	if err != nil {
		return nil, DeadLetterAction{}, 0, err
	}
	req, err := s.decodeDeadLetterAction(w, r)
	if err != nil {
		return nil, req, 0, err
	}
	matched, err := store.Count(r.Context(), req.filter())
	if err != nil {
		return nil, req, 0, storeError(err)
	}
	return store, req, matched, nil
}

// replayDeadLetters is POST /dead-letters/actions/replay.
func (s *server) replayDeadLetters(w http.ResponseWriter, r *http.Request) error {
	_, req, matched, err := s.deadLetterAction(w, r)
	if err != nil {
		return err
	}
	out := DeadLetterResult{Matched: matched, DryRun: req.DryRun}
	if !req.DryRun {
		if s.cfg.Replayer == nil {
			return &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
				Detail: "this API cannot replay (no Kafka publisher configured)"}
		}
		out.Replayed, err = s.cfg.Replayer.Replay(r.Context(), req.filter(), req.Limit)
		s.log.Info("operator action", "action", "replay dead letters", "operator", operatorName(r.Context()),
			"matched", matched, "replayed", len(out.Replayed), "err", err)
		if err != nil {
			return &Problem{Type: TypeUnavailable, Title: "Service Unavailable", Status: http.StatusServiceUnavailable,
				Detail: fmt.Sprintf("%d of %d dead letters replayed, then: %v; the rest can be replayed again", len(out.Replayed), matched, err), cause: err}
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// purgeDeadLetters is POST /dead-letters/actions/purge.
func (s *server) purgeDeadLetters(w http.ResponseWriter, r *http.Request) error {
	store, req, matched, err := s.deadLetterAction(w, r)
	if err != nil {
		return err
	}
	out := DeadLetterResult{Matched: matched, DryRun: req.DryRun}
	if !req.DryRun {
		out.Purged, err = store.Purge(r.Context(), req.filter())
		if err != nil {
			return storeError(err)
		}
		s.log.Info("operator action", "action", "purge dead letters", "operator", operatorName(r.Context()), "purged", out.Purged)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
