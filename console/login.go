package console

import (
	"net/http"
	"net/url"
	"strings"
	"time"
)

// The console's sign-in: an operator gives their token once and gets a
// session cookie (api.Tokens.NewSession: their name, an expiry and an
// HMAC keyed by their token's digest, so no session store, and every API
// process with the same tokens accepts it). The cookie is HttpOnly and
// SameSite=Strict, which also keeps other sites from posting the
// console's forms with it; Secure when served over TLS.

// session returns the operator r's session cookie names, or "".
func (s *server) session(r *http.Request) string {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return ""
	}
	name, ok := s.cfg.Operators.CheckSession(c.Value, time.Now())
	if !ok {
		return ""
	}
	return name
}

// requireLogin sends a request without a session to the sign-in page
// when the console requires one; the sign-in itself and the static files
// stay open.
func (s *server) requireLogin(next http.Handler) http.Handler {
	if !s.cfg.RequireLogin {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" || strings.HasPrefix(r.URL.Path, "/static/") || s.session(r) != "" {
			next.ServeHTTP(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			s.page(func(http.ResponseWriter, *http.Request) (string, view, error) {
				return "", view{}, fail(http.StatusUnauthorized, "sign in first: the console needs an operator")
			})(w, r)
			return
		}
		http.Redirect(w, r, s.cfg.Base+"/login?next="+url.QueryEscape(s.cfg.Base+r.URL.RequestURI()), http.StatusSeeOther)
	})
}

type loginData struct {
	Next  string
	Error string
}

// safeNext keeps a sign-in's return address within the console.
func (s *server) safeNext(next string) string {
	if u, err := url.Parse(next); err != nil || u.IsAbs() || u.Host != "" || !strings.HasPrefix(u.Path, "/") || strings.HasPrefix(next, "//") {
		return s.cfg.Base + "/"
	}
	if !strings.HasPrefix(next, s.cfg.Base+"/") {
		next = s.cfg.Base + next
	}
	return next
}

func (s *server) loginPage(_ http.ResponseWriter, r *http.Request) (string, view, error) {
	if s.cfg.Operators.Len() == 0 {
		return "", view{}, fail(http.StatusNotFound, "no operator tokens are configured on this server: nobody can sign in")
	}
	return "login", view{Title: "Sign in", Data: loginData{Next: r.URL.Query().Get("next")}}, nil
}

func (s *server) login(w http.ResponseWriter, r *http.Request) (string, view, error) {
	if err := r.ParseForm(); err != nil {
		return "", view{}, fail(http.StatusBadRequest, "the form could not be read: %v", err)
	}
	next := r.PostForm.Get("next")
	value, name, ok := s.cfg.Operators.NewSession(r.PostForm.Get("token"), time.Now().Add(s.cfg.SessionTTL))
	if !ok {
		s.log.Warn("console sign-in refused: unknown token", "remote", r.RemoteAddr)
		return "login", view{Title: "Sign in", Data: loginData{Next: next, Error: "That operator token is not known."}}, nil
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: s.cookiePath(), MaxAge: int(s.cfg.SessionTTL.Seconds()),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	s.log.Info("console sign-in", "operator", name)
	http.Redirect(w, r, s.safeNext(next), http.StatusSeeOther)
	return "", view{}, nil
}

func (s *server) logout(w http.ResponseWriter, r *http.Request) (string, view, error) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: s.cookiePath(), MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
	dest := s.cfg.Base + "/"
	if s.cfg.RequireLogin {
		dest = s.cfg.Base + "/login"
	}
	http.Redirect(w, r, dest, http.StatusSeeOther)
	return "", view{}, nil
}

func (s *server) cookiePath() string {
	if s.cfg.Base == "" {
		return "/"
	}
	return s.cfg.Base + "/"
}
