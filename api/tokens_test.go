package api_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
