// Package console is Sagaflow's operator console: server-rendered pages
// (html/template, no JavaScript) that show what happened on a bad day and
// fix it without psql. Overview: sagas per state, the last hour's
// completions and durations as SVG charts, outbox backlogs, parked rows,
// consumer lag and dead letters. Sagas: filters, search by any id, cursor
// paging. Saga: an SVG timeline of every command and reply, the paged
// history, the order and its dead letters. Actions (retry, resolve, abort,
// batches by filter, dead-letter replay and purge) each ask for a reason
// and an operator token on a confirmation page that states what will
// happen, and are recorded with the operator's name. Read-only mode hides
// them and refuses them.
//
// New returns an http.Handler, which the api role mounts at /ui/ and a Go
// program embedding Sagaflow can mount anywhere (Config.Base).
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/jaeger"
	"github.com/sagaflow/sagaflow/kafkax"
	"github.com/sagaflow/sagaflow/saga"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Config is what the console needs.
type Config struct {
	// Base is the path the handler is mounted at, without a trailing
	// slash ("/ui"); links are built on it.
	Base   string
	Pool   *pgxpool.Pool
	Engine *saga.Engine
	// DeadLetters and Replayer serve the dead-letter pages (nil: hidden).
	DeadLetters *deadletter.Store
	Replayer    *deadletter.Replayer
	// Kafka, when set, is asked for the consumer groups' lag.
	Kafka  *kafkax.Config
	Topics kafkax.Topics
	// Operators may act; an action asks for one of their tokens.
	Operators *api.Tokens
	// ReadOnly hides every action and refuses them.
	ReadOnly bool
	// RequireLogin shows nothing until an operator signs in with a token
	// (the console of an API whose reads are protected). Signed in or
	// not, an action needs an operator: the session's or a token's.
	RequireLogin bool
	// TraceURL, when set, links a saga's page to its trace: the URL with
	// {trace_id} replaced (Jaeger: http://HOST:16686/trace/{trace_id}).
	TraceURL string
	// Traces, when set, is the Jaeger whose query API the console reads a
	// saga's trace from, to draw it (GET /sagas/{id}/trace).
	Traces *jaeger.Client
	// SessionTTL is how long a sign-in lasts (default DefaultSessionTTL).
	SessionTTL time.Duration
	Logger     *slog.Logger
}

// DefaultSessionTTL is how long a console sign-in lasts by default.
const DefaultSessionTTL = 12 * time.Hour

// sessionCookie names the cookie that holds a console session.
const sessionCookie = "sagaflow_session"

type server struct {
	cfg   Config
	log   *slog.Logger
	pages map[string]*template.Template
}

// New returns the console's handler.
func New(cfg Config) (http.Handler, error) {
	cfg.Base = strings.TrimRight(cfg.Base, "/")
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = DefaultSessionTTL
	}
	if cfg.RequireLogin && cfg.Operators.Len() == 0 {
		return nil, errors.New("the console's login needs operator tokens")
	}
	s := &server{cfg: cfg, log: cfg.Logger.With("component", "console"), pages: map[string]*template.Template{}}
	funcs := template.FuncMap{
		"ago":   ago,
		"ms":    func(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) },
		"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000") },
		"short": func(s string) string { return shorten(s, 12) },
		// dur is a span's duration: to the 0.01 ms below a millisecond.
		"dur": func(d time.Duration) string {
			if d < time.Millisecond {
				return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
			}
			return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
		},
		"since": func(from, to time.Time) string { return to.Sub(from).Round(time.Millisecond).String() },
		"mod":   func(i, n int) int { return i % n },
		"depth": func(d int) int { return min(d, 8) },
	}
	names, err := fs.Glob(templateFiles, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		if name == "templates/layout.html" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", name)
		if err != nil {
			return nil, fmt.Errorf("parse console template %s: %w", name, err)
		}
		s.pages[strings.TrimSuffix(strings.TrimPrefix(name, "templates/"), ".html")] = t
	}
	static, err := fs.Sub(staticFiles, "static")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", s.page(s.overview))
	mux.HandleFunc("GET /sagas", s.page(s.sagas))
	mux.HandleFunc("GET /sagas/{id}", s.page(s.saga))
	mux.HandleFunc("GET /sagas/{id}/trace", s.page(s.trace))
	mux.HandleFunc("GET /sagas/{id}/{action}", s.page(s.confirmSaga))
	mux.HandleFunc("POST /sagas/{id}/{action}", s.page(s.actSaga))
	mux.HandleFunc("GET /batch/{action}", s.page(s.confirmBatch))
	mux.HandleFunc("POST /batch/{action}", s.page(s.actBatch))
	mux.HandleFunc("GET /dead-letters", s.page(s.deadLetters))
	mux.HandleFunc("GET /dead-letters/{id}", s.page(s.deadLetter))
	mux.HandleFunc("GET /dead-letter-actions/{action}", s.page(s.confirmDeadLetters))
	mux.HandleFunc("POST /dead-letter-actions/{action}", s.page(s.actDeadLetters))
	mux.HandleFunc("GET /login", s.page(s.loginPage))
	mux.HandleFunc("POST /login", s.page(s.login))
	mux.HandleFunc("POST /logout", s.page(s.logout))
	return s.requireLogin(mux), nil
}

// view is what every page template gets.
type view struct {
	Base     string
	Title    string
	ReadOnly bool
	// Nav names the section for the menu.
	Nav  string
	Data any
	// Flash is a message from the action that led here.
	Flash string
	// Operator is who signed in (empty: nobody); CanSignIn is set when
	// operators may.
	Operator  string
	CanSignIn bool
}

// problem is an error shown to the operator with its status.
type problem struct {
	status int
	msg    string
}

func (p *problem) Error() string { return p.msg }

func fail(status int, format string, args ...any) error {
	return &problem{status: status, msg: fmt.Sprintf(format, args...)}
}

// page adapts a handler that returns the page to render (template name,
// view) or an error.
func (s *server) page(h func(w http.ResponseWriter, r *http.Request) (string, view, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		r = r.WithContext(ctx)
		name, v, err := h(w, r)
		if name == "" && err == nil {
			return // redirected
		}
		status := http.StatusOK
		if err != nil {
			var p *problem
			if !errors.As(err, &p) {
				s.log.Error("console page failed", "path", r.URL.Path, "err", err)
				p = &problem{status: http.StatusInternalServerError, msg: "the page could not be built: " + err.Error()}
			}
			status, name, v = p.status, "error", view{Title: http.StatusText(p.status), Data: p.msg}
		}
		v.Base, v.ReadOnly = s.cfg.Base, s.cfg.ReadOnly
		v.Operator, v.CanSignIn = s.session(r), s.cfg.Operators.Len() > 0
		t := s.pages[name]
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(status)
		if err := t.Execute(w, v); err != nil {
			s.log.Error("render console page", "page", name, "err", err)
		}
	}
}

// operator checks an action's token and reason; it returns who acts.
func (s *server) operator(r *http.Request) (who, reason string, err error) {
	if s.cfg.ReadOnly {
		return "", "", fail(http.StatusForbidden, "the console is read-only: actions are refused")
	}
	if err := r.ParseForm(); err != nil {
		return "", "", fail(http.StatusBadRequest, "the form could not be read: %v", err)
	}
	reason = strings.TrimSpace(r.PostForm.Get("reason"))
	if reason == "" {
		return "", "", fail(http.StatusUnprocessableEntity, "a reason is required: say why, it is kept with the action")
	}
	if len(reason) > api.MaxNoteLength {
		return "", "", fail(http.StatusUnprocessableEntity, "the reason is longer than %d characters", api.MaxNoteLength)
	}
	if s.cfg.Operators.Len() == 0 {
		return "", "", fail(http.StatusForbidden, "no operator tokens are configured on this server: actions are refused")
	}
	token := r.PostForm.Get("token")
	if token == "" {
		if name := s.session(r); name != "" {
			return name, reason, nil
		}
		return "", "", fail(http.StatusForbidden, "sign in, or give an operator token: actions need an operator")
	}
	name, ok := s.cfg.Operators.Lookup(token)
	if !ok {
		return "", "", fail(http.StatusForbidden, "that operator token is not known")
	}
	return name, reason, nil
}

// ago says how long ago t was, roughly.
func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
