package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// newCommon registers the common flags on a fresh flag set and parses args.
func newCommon(t *testing.T, args ...string) (*commonFlags, *flag.FlagSet, *bytes.Buffer) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	var c commonFlags
	c.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return &c, fs, &out
}

// `serve -h` must not print the password of $DATABASE_URL (before: the
// flag's default showed the whole URL), and the variable still applies.
func TestUsageHidesDatabasePassword(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://app:s3cret@db.example:5432/sagaflow")
	c, fs, out := newCommon(t)
	fs.PrintDefaults()
	if strings.Contains(out.String(), "s3cret") {
		t.Fatalf("usage prints the password:\n%s", out)
	}
	if got := c.dbURL(); got != "postgres://app:s3cret@db.example:5432/sagaflow" {
		t.Fatalf("database URL %q, want $DATABASE_URL", got)
	}
	c, _, _ = newCommon(t, "--database-url", "postgres://other@h/db")
	if got := c.dbURL(); got != "postgres://other@h/db" {
		t.Fatalf("database URL %q, want the flag's", got)
	}
}

// An explicitly empty broker list (a failed broker start's empty output)
// is refused; before, bench fell back to embedded Kafka without a word.
func TestEmptyBrokersRefused(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   *string
		args  []string
		fails bool
	}{
		{name: "empty flag", args: []string{"--kafka-brokers", ""}, fails: true},
		{name: "blank flag", args: []string{"--kafka-brokers", " , "}, fails: true},
		{name: "empty variable", env: new(""), fails: true},
		{name: "neither", fails: false},
		{name: "a broker", args: []string{"--kafka-brokers", "127.0.0.1:9092"}, fails: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != nil {
				t.Setenv("KAFKA_BROKERS", *tc.env)
			} else {
				t.Setenv("KAFKA_BROKERS", "unset")
				unsetenv(t, "KAFKA_BROKERS")
			}
			c, fs, _ := newCommon(t, tc.args...)
			err := c.checkBrokers(fs)
			if (err != nil) != tc.fails {
				t.Fatalf("error %v, want failure %v", err, tc.fails)
			}
		})
	}
	// runBench refuses before it starts anything.
	t.Setenv("KAFKA_BROKERS", "unset")
	unsetenv(t, "KAFKA_BROKERS")
	if err := runBench(t.Context(), []string{"--kafka-brokers", "", "--quiet"}, io.Discard); err == nil || !strings.Contains(err.Error(), "kafka-brokers") {
		t.Fatalf("bench with --kafka-brokers \"\": %v, want a refusal", err)
	}
}

// unsetenv removes a variable for the rest of the test (t.Setenv first, so
// that the test restores it).
func unsetenv(t *testing.T, name string) {
	t.Helper()
	if err := os.Unsetenv(name); err != nil {
		t.Fatal(err)
	}
}

// serve refuses an operator setup it cannot honour before it opens
// anything: --protect-reads without tokens, a token file or variable with
// a bad entry (named by its line or entry, the token never shown), and
// API limits that would refuse everything.
func TestServeChecksOperatorTokensAndLimits(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "tokens")
	if err := os.WriteFile(bad, []byte("# operators\nalice:alice-secret-0123456789\nbob\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  string // $SAGAFLOW_OPERATOR_TOKENS
		args []string
		want string
	}{
		{name: "protect reads without tokens", args: []string{"--protect-reads"}, want: "--protect-reads needs operator tokens"},
		{name: "bad line in the file", args: []string{"--operator-tokens", bad}, want: bad + ": line 3"},
		{name: "missing file", args: []string{"--operator-tokens", filepath.Join(dir, "none")}, want: "operator tokens"},
		{name: "bad entry in the variable", env: "alice:alice-secret-0123456789,bob:short", want: "SAGAFLOW_OPERATOR_TOKENS: entry 2"},
		{name: "no API connections", args: []string{"--api-db-max-conns", "0"}, want: "--api-db-max-conns"},
		{name: "no request in flight", args: []string{"--max-inflight", "0"}, want: "--max-inflight"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("KAFKA_BROKERS", "unset")
			unsetenv(t, "KAFKA_BROKERS")
			t.Setenv("SAGAFLOW_OPERATOR_TOKENS", tc.env)
			// A database that is not there: the check must come first.
			args := append([]string{"--database-url", "postgres://nobody@127.0.0.1:1/none", "--role", "api"}, tc.args...)
			err := runServe(t.Context(), args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "alice-secret") {
				t.Errorf("the error shows a token: %v", err)
			}
		})
	}
}

// dev generates an operator token for its run, unless the environment
// gives tokens.
func TestDevOperators(t *testing.T) {
	t.Setenv("SAGAFLOW_OPERATOR_TOKENS", "")
	tokens, secret, err := devOperators()
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := tokens.Lookup(secret); !ok || name != "dev" || tokens.Len() != 1 || len(secret) < 16 {
		t.Fatalf("generated %d tokens; %q names %q (%v)", tokens.Len(), secret, name, ok)
	}
	if _, again, _ := devOperators(); again == secret {
		t.Error("two runs got the same token")
	}
	t.Setenv("SAGAFLOW_OPERATOR_TOKENS", "ann:ann-secret-0123456789")
	tokens, secret, err = devOperators()
	if err != nil || secret != "" || !slices.Equal(tokens.Names(), []string{"ann"}) {
		t.Fatalf("with the variable set: %v, generated %q, operators %q", err, secret, tokens.Names())
	}
}
