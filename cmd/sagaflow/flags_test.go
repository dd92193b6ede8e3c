package main

import (
	"bytes"
	"flag"
	"io"
	"os"
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
