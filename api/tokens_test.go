package api_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sagaflow/sagaflow/api"
)

func TestParseTokens(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-s3cret-s3cret"
	for _, tc := range []struct {
		name  string
		file  string
		names []string // the operators, sorted, when it parses
		err   string   // else a part of the error
	}{
		{name: "one", file: "alice:" + secret + "-a\n", names: []string{"alice"}},
		{name: "comments, blank lines, spaces, no final newline",
			file:  "# operators of the shop\n\n  alice:" + secret + "-a  \r\n\t# bob is on call\nbob : " + secret + "-b",
			names: []string{"alice", "bob"}},
		{name: "a colon in the token", file: "alice:" + secret + ":x\n", names: []string{"alice"}},
		{name: "one name, two tokens (rotation)", file: "alice:" + secret + "-old\nalice:" + secret + "-new\n", names: []string{"alice"}},
		{name: "nothing", file: "# no operators yet\n\n", names: nil},
		{name: "no colon", file: "# ops\nalice:" + secret + "-a\n" + secret + "\n", err: "line 3"},
		{name: "no name", file: ":" + secret + "\n", err: "line 1"},
		{name: "no token", file: "alice:" + secret + "-a\n\nbob:\n", err: "line 3"},
		{name: "short token", file: "alice:short\n", err: "line 1"},
		{name: "space in the token", file: "alice:" + secret + " x\n", err: "line 1"},
		{name: "control character in the token", file: "alice:" + secret + "\x00\n", err: "line 1"},
		{name: "space in the name", file: "alice smith:" + secret + "\n", err: "line 1"},
		{name: "same token twice", file: "alice:" + secret + "\nbob:" + secret + "\n", err: "line 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tokens, err := api.ParseTokens(strings.NewReader(tc.file))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				if strings.Contains(err.Error(), secret) {
					t.Errorf("the error shows the token: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tokens.Names(); !slices.Equal(got, tc.names) {
				t.Errorf("names %q, want %q", got, tc.names)
			}
		})
	}
}

// The environment's form: entries separated by commas or newlines.
func TestParseTokenList(t *testing.T) {
	t.Parallel()
	tokens, err := api.ParseTokenList("alice:aaaaaaaaaaaaaaaa1, bob:bbbbbbbbbbbbbbbb2\ncarol:cccccccccccccccc3,\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := tokens.Names(); !slices.Equal(got, []string{"alice", "bob", "carol"}) {
		t.Errorf("names %q", got)
	}
	if _, err := api.ParseTokenList("alice:aaaaaaaaaaaaaaaa1,bob"); err == nil || !strings.Contains(err.Error(), "entry 2") {
		t.Errorf("error %v, want one naming entry 2", err)
	}
}

// LoadTokens joins the file and the environment's list; a token in both
// under two names is refused, a missing file named.
func TestLoadTokens(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	if err := os.WriteFile(file, []byte("alice:aaaaaaaaaaaaaaaa1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := api.LoadTokens(file, "bob:bbbbbbbbbbbbbbbb2")
	if err != nil {
		t.Fatal(err)
	}
	if got := tokens.Names(); !slices.Equal(got, []string{"alice", "bob"}) {
		t.Errorf("names %q", got)
	}
	if tokens, err := api.LoadTokens("", ""); err != nil || tokens.Len() != 0 {
		t.Errorf("no sources: %v, %d tokens", err, tokens.Len())
	}
	if _, err := api.LoadTokens(file, "bob:aaaaaaaaaaaaaaaa1"); err == nil || !strings.Contains(err.Error(), "SAGAFLOW_OPERATOR_TOKENS") {
		t.Errorf("a token under two names: %v", err)
	}
	if _, err := api.LoadTokens(filepath.Join(dir, "missing"), ""); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("a missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("alice:aaaaaaaaaaaaaaaa1\n\nbob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := api.LoadTokens(bad, ""); err == nil || !strings.Contains(err.Error(), bad+": line 3") {
		t.Errorf("a bad line: %v, want it to name the file and line 3", err)
	}
}

// A session signed at sign-in names its operator until it expires or its
// token is withdrawn; a changed name, expiry or MAC is refused.
func TestSessions(t *testing.T) {
	t.Parallel()
	tokens, err := api.ParseTokenList("alice:alice-token-0123456789,bob:bob-token-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if _, _, ok := tokens.NewSession("no-such-token-0123456789", now.Add(time.Hour)); ok {
		t.Fatal("a session for an unknown token")
	}
	value, name, ok := tokens.NewSession("alice-token-0123456789", now.Add(time.Hour))
	if !ok || name != "alice" {
		t.Fatalf("NewSession: %q %v", name, ok)
	}
	if got, ok := tokens.CheckSession(value, now); !ok || got != "alice" {
		t.Errorf("CheckSession: %q %v", got, ok)
	}
	if _, ok := tokens.CheckSession(value, now.Add(2*time.Hour)); ok {
		t.Error("an expired session was accepted")
	}
	parts := strings.Split(value, ".")
	bobValue, _, _ := tokens.NewSession("bob-token-0123456789", now.Add(time.Hour))
	forged := map[string]string{
		"name changed":     strings.Join([]string{strings.Split(bobValue, ".")[0], parts[1], parts[2]}, "."),
		"expiry extended":  strings.Join([]string{parts[0], fmt.Sprint(now.Add(48 * time.Hour).Unix()), parts[2]}, "."),
		"MAC cut":          value[:len(value)-4],
		"not a session":    "alice",
		"empty":            "",
		"bad base64 name":  "!!!." + parts[1] + "." + parts[2],
		"expiry not digit": parts[0] + ".soon." + parts[2],
	}
	for what, v := range forged {
		if got, ok := tokens.CheckSession(v, now); ok {
			t.Errorf("%s: accepted as %q", what, got)
		}
	}
	withdrawn, err := api.ParseTokenList("bob:bob-token-0123456789")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := withdrawn.CheckSession(value, now); ok {
		t.Error("a session outlived its withdrawn token")
	}
	var none *api.Tokens
	if _, ok := none.CheckSession(value, now); ok {
		t.Error("nil tokens accepted a session")
	}
}
