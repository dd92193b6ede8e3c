// Package registry talks to a Confluent-compatible schema registry (the
// REST API Confluent Schema Registry, Apicurio Registry's /apis/ccompat/v7
// and others serve): it registers the wire contract's JSON Schemas under
// each topic's subject (TopicNameStrategy: "<topic>-value"), sets the
// subject's compatibility, and caches schema ids, so that the registry
// refuses an incompatible change before a process that would make it
// starts, and another team's consumers can fetch our schemas.
package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/kafkax"
)

// DefaultCompatibility is the compatibility a subject is set to: a new
// version must read what every earlier one wrote.
const DefaultCompatibility = "BACKWARD_TRANSITIVE"

// Compatibilities are the levels a subject may be set to.
var Compatibilities = []string{"BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"}

// Client is a schema registry client. It is safe for concurrent use.
type Client struct {
	base string
	http *http.Client
	mu   sync.Mutex
	ids  map[string]int // subject + "\x00" + schema text → id
}

// New returns a client of the registry whose Confluent-compatible API is
// at base (e.g. http://127.0.0.1:18081/apis/ccompat/v7).
func New(base string) *Client {
	return &Client{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 10 * time.Second}, ids: map[string]int{}}
}

// IncompatibleError is the registry's refusal of a schema: the change
// breaks the subject's compatibility. Reason is the registry's own words,
// which name the fields at fault.
type IncompatibleError struct {
	Subject string
	Reason  string
}

func (e *IncompatibleError) Error() string {
	return fmt.Sprintf("the schema registry refuses the schema for subject %s as incompatible: %s", e.Subject, e.Reason)
}

type apiError struct {
	Message   string `json:"message"`
	ErrorCode int    `json:"error_code"`
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/vnd.schemaregistry.v1+json")
	req.Header.Set("Accept", "application/vnd.schemaregistry.v1+json, application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("schema registry %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("schema registry %s %s: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		var ae apiError
		_ = json.Unmarshal(data, &ae)
		if ae.Message == "" {
			ae.Message = strings.TrimSpace(string(data))
		}
		return resp.StatusCode, &statusError{status: resp.StatusCode, msg: ae.Message}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("schema registry %s %s: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.status, e.msg) }

// SetCompatibility sets subject's compatibility level. Processes starting
// together set it at once: Apicurio answers the second 409 ("a rule named
// COMPATIBILITY already exists"); then the level in force is read, and set
// again only if it differs.
func (c *Client) SetCompatibility(ctx context.Context, subject, level string) error {
	for try := 0; ; try++ {
		_, err := c.do(ctx, http.MethodPut, "/config/"+url.PathEscape(subject), map[string]string{"compatibility": level}, nil)
		var se *statusError
		if err == nil || !errors.As(err, &se) || se.status != http.StatusConflict || try == 2 {
			if err != nil {
				return fmt.Errorf("set compatibility of subject %s to %s: %w", subject, level, err)
			}
			return nil
		}
		if now, rerr := c.Compatibility(ctx, subject); rerr == nil && now == level {
			return nil
		}
	}
}

// Register registers a JSON Schema under subject and returns its id (the
// same id when it is registered already). A schema the subject's
// compatibility refuses is an *IncompatibleError.
func (c *Client) Register(ctx context.Context, subject string, schema []byte) (int, error) {
	key := subject + "\x00" + string(schema)
	c.mu.Lock()
	id, ok := c.ids[key]
	c.mu.Unlock()
	if ok {
		return id, nil
	}
	var out struct {
		ID int `json:"id"`
	}
	_, err := c.do(ctx, http.MethodPost, "/subjects/"+url.PathEscape(subject)+"/versions",
		map[string]string{"schemaType": "JSON", "schema": string(schema)}, &out)
	var se *statusError
	if errors.As(err, &se) && se.status == http.StatusConflict {
		return 0, &IncompatibleError{Subject: subject, Reason: se.msg}
	}
	if err != nil {
		return 0, fmt.Errorf("register a schema under subject %s: %w", subject, err)
	}
	c.mu.Lock()
	c.ids[key] = out.ID
	c.mu.Unlock()
	return out.ID, nil
}

// Schema returns the schema text of id.
func (c *Client) Schema(ctx context.Context, id int) ([]byte, error) {
	var out struct {
		Schema string `json:"schema"`
	}
	if _, err := c.do(ctx, http.MethodGet, fmt.Sprintf("/schemas/ids/%d", id), nil, &out); err != nil {
		return nil, fmt.Errorf("read schema %d: %w", id, err)
	}
	return []byte(out.Schema), nil
}

// Versions lists the versions registered under subject.
func (c *Client) Versions(ctx context.Context, subject string) ([]int, error) {
	var out []int
	if _, err := c.do(ctx, http.MethodGet, "/subjects/"+url.PathEscape(subject)+"/versions", nil, &out); err != nil {
		return nil, fmt.Errorf("list versions of subject %s: %w", subject, err)
	}
	return out, nil
}

// Compatibility reads subject's compatibility level.
func (c *Client) Compatibility(ctx context.Context, subject string) (string, error) {
	var out struct {
		Level string `json:"compatibilityLevel"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/config/"+url.PathEscape(subject), nil, &out); err != nil {
		return "", fmt.Errorf("read compatibility of subject %s: %w", subject, err)
	}
	return out.Level, nil
}

// Subject is a topic's subject under TopicNameStrategy.
func Subject(topic string) string { return topic + "-value" }

// Registered is one schema version registered under a subject.
type Registered struct {
	Topic   string
	Subject string
	Schema  string
	Version int
	ID      int
}

// RegisterContract sets the compatibility of every topic's subject and
// registers each version of the topic's schema, oldest first, so that the
// registry checks each against those before it. The first refusal ends it
// with an *IncompatibleError naming the subject, schema and version.
func RegisterContract(ctx context.Context, c *Client, topics kafkax.Topics, compatibility string) ([]Registered, error) {
	var out []Registered
	for _, ts := range contract.TopicSchemas(topics) {
		subject := Subject(ts.Topic)
		if err := c.SetCompatibility(ctx, subject, compatibility); err != nil {
			return out, err
		}
		for _, v := range contract.Versions(ts.Schema) {
			src, err := contract.Source(ts.Schema, v)
			if err != nil {
				return out, err
			}
			id, err := c.Register(ctx, subject, src)
			var ie *IncompatibleError
			if errors.As(err, &ie) {
				ie.Reason = fmt.Sprintf("schema %s v%d: %s", ts.Schema, v, ie.Reason)
				return out, ie
			}
			if err != nil {
				return out, err
			}
			out = append(out, Registered{Topic: ts.Topic, Subject: subject, Schema: ts.Schema, Version: v, ID: id})
		}
	}
	return out, nil
}

// The SQL of ops.schema_ids, which this package owns.
const (
	sqlSaveID = `INSERT INTO ops.schema_ids (registry, topic, schema_name, version, id) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (registry, topic, schema_name, version) DO UPDATE SET id = excluded.id, registered_at = now()`
	sqlLoadID = `SELECT id FROM ops.schema_ids WHERE registry = $1 AND topic = $2 AND schema_name = $3 AND version = $4`
)

// DB is where registered ids are remembered (a pool or a transaction).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Remember keeps the ids of a successful registration with registry url.
func Remember(ctx context.Context, db DB, url string, regs []Registered) error {
	for _, r := range regs {
		if _, err := db.Exec(ctx, sqlSaveID, url, r.Topic, r.Schema, r.Version, r.ID); err != nil {
			return fmt.Errorf("remember schema id of %s v%d on %s: %w", r.Schema, r.Version, r.Topic, err)
		}
	}
	return nil
}

// Remembered returns the ids an earlier registration with registry url
// left for every schema version of the contract on topics; ok is false
// unless every one of them is known (a new schema must be registered).
func Remembered(ctx context.Context, db DB, url string, topics kafkax.Topics) (regs []Registered, ok bool, err error) {
	for _, ts := range contract.TopicSchemas(topics) {
		for _, v := range contract.Versions(ts.Schema) {
			var id int
			err := db.QueryRow(ctx, sqlLoadID, url, ts.Topic, ts.Schema, v).Scan(&id)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, false, nil
			}
			if err != nil {
				return nil, false, fmt.Errorf("read remembered schema ids: %w", err)
			}
			regs = append(regs, Registered{Topic: ts.Topic, Subject: Subject(ts.Topic), Schema: ts.Schema, Version: v, ID: id})
		}
	}
	return regs, true, nil
}

// Unreachable reports whether err is the registry not answering (rather
// than answering no).
func Unreachable(err error) bool {
	var se *statusError
	var ie *IncompatibleError
	return err != nil && !errors.As(err, &se) && !errors.As(err, &ie)
}
