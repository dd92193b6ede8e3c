package api

import (
	"context"
	"net/http"
	"strings"
)

// BearerChallenge is the WWW-Authenticate header of every 401 answer.
const BearerChallenge = `Bearer realm="sagaflow"`

// configureTokens says how to configure operator tokens.
const configureTokens = "give them to `sagaflow serve --operator-tokens FILE` (one name:token a line) or in " +
	EnvOperatorTokens + " (name:token, separated by commas)"

// operatorKey is the request context key of the name of the operator who
// called (operator routes, and reader routes under ProtectReads).
type operatorKey struct{}

// operatorName is the name of the operator whose token the request
// carries; empty on a route that needs none.
func operatorName(ctx context.Context) string {
	name, _ := ctx.Value(operatorKey{}).(string)
	return name
}

// authorize checks that the request may call a route of access a, and
// returns the name of the operator whose token it carries (empty when the
// route needs none). Refusals are problems: 401 with a Bearer challenge
// without a well-formed Authorization: Bearer header, 403 for a token the
// server does not know, or when it knows none at all.
func (s *server) authorize(r *http.Request, a access) (string, error) {
	if a == public || (a == reader && !s.cfg.ProtectReads) {
		return "", nil
	}
	if a == operator && s.cfg.ReadOnly {
		return "", &Problem{Type: TypeForbidden, Title: "Forbidden", Status: http.StatusForbidden,
			Detail: "this server is read-only (serve --console-read-only): operator actions are refused"}
	}
	if s.cfg.Operators.Len() == 0 {
		s.log.InfoContext(r.Context(), "request refused: no operator tokens configured", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		detail := "operator actions are off: this server has no operator tokens; " + configureTokens
		if a == reader {
			detail = "reads need an operator token here, and this server has none; " + configureTokens
		}
		return "", &Problem{Type: TypeForbidden, Title: "Forbidden", Status: http.StatusForbidden, Detail: detail}
	}
	secret, ok := bearerToken(r.Header.Values("Authorization"))
	if !ok {
		s.log.InfoContext(r.Context(), "request refused: no bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		detail := r.Pattern + " is an operator action"
		if a == reader {
			detail = "this server protects its reads"
		}
		return "", &Problem{Type: TypeUnauthorized, Title: "Unauthorized", Status: http.StatusUnauthorized,
			Detail: detail + ": send the header Authorization: Bearer <operator token> (once)"}
	}
	name, ok := s.cfg.Operators.Lookup(secret)
	if !ok {
		s.log.InfoContext(r.Context(), "request refused: unknown bearer token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
		return "", &Problem{Type: TypeForbidden, Title: "Forbidden", Status: http.StatusForbidden,
			Detail: "the bearer token is not an operator token of this server"}
	}
	return name, nil
}

// bearerToken returns the token of the one Authorization header, which must
// be "Bearer <token>" (the scheme in any case, RFC 9110), the token of
// visible ASCII.
func bearerToken(values []string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimLeft(token, " ")
	if token == "" {
		return "", false
	}
	for i := 0; i < len(token); i++ {
		if token[i] < 0x21 || token[i] > 0x7e {
			return "", false
		}
	}
	return token, true
}
