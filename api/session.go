package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// A session lets an operator who signed in once with a token (the
// console's login) act without giving it again. Its value is the
// operator's name, an expiry and an HMAC of both keyed by the digest of
// the token they signed in with: no server-side state, accepted by every
// process that holds the same tokens, and ended when that token is
// withdrawn or the session expires.

// sessionMAC is the HMAC of a session's name and expiry under a token's
// digest.
func sessionMAC(digest [sha256.Size]byte, name string, expiry int64) []byte {
	m := hmac.New(sha256.New, digest[:])
	m.Write([]byte("sagaflow-session\x00" + name + "\x00" + strconv.FormatInt(expiry, 10)))
	return m.Sum(nil)
}

// NewSession signs a session for the operator whose token secret is,
// valid until expiry; ok is false for an unknown token.
func (t *Tokens) NewSession(secret string, expiry time.Time) (value, name string, ok bool) {
	name, ok = t.Lookup(secret)
	if !ok {
		return "", "", false
	}
	exp := expiry.Unix()
	mac := sessionMAC(sha256.Sum256([]byte(secret)), name, exp)
	return base64.RawURLEncoding.EncodeToString([]byte(name)) + "." + strconv.FormatInt(exp, 10) + "." +
		base64.RawURLEncoding.EncodeToString(mac), name, true
}

// CheckSession returns the operator a session value names, when it is
// signed by one of that operator's tokens and not expired at now.
func (t *Tokens) CheckSession(value string, now time.Time) (name string, ok bool) {
	if t == nil {
		return "", false
	}
	parts := strings.Split(value, ".")
	if len(parts) != 3 {
		return "", false
	}
	rawName, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return "", false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || now.Unix() >= exp {
		return "", false
	}
	mac, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return "", false
	}
	name = string(rawName)
	for _, tok := range t.list {
		if tok.name == name && hmac.Equal(mac, sessionMAC(tok.digest, name, exp)) {
			ok = true
		}
	}
	return name, ok
}
