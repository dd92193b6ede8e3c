// Command sagaflow is Sagaflow's one binary: the development stack, the
// services, migrations, operator queries, invariant checks and benchmarks.
//
//	sagaflow dev        everything on a private PostgreSQL and embedded Kafka
//	sagaflow serve      run roles (api, orchestrator, participants, relay)
//	sagaflow migrate    apply the database migrations
//	sagaflow status ID  a saga and its history
//	sagaflow verify     check the invariants
//
// Run `sagaflow help` for the full list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sagaflow/sagaflow/telemetry"
)

// command is one subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout io.Writer) error
}

func commands() []command {
	return []command{
		{"dev", "run PostgreSQL (under ./.sagaflow), embedded Kafka and every service in one process", runDev},
		{"serve", "run roles against DATABASE_URL and KAFKA_BROKERS: --role api|orchestrator|inventory|payment|shipping|relay|all", runServe},
		{"migrate", "apply the database migrations (--database-url, default $DATABASE_URL)", runMigrate},
		{"overview", "sagas per state, the last minutes, outbox backlogs, consumer lag and dead letters (the console's overview)", runOverview},
		{"status", "show a saga (or an order's saga) and its history: status [--json] ID", runStatus},
		{"sagas", "list sagas: --search ID --state S --type T --step S --older-than D --reason TEXT --newest --limit N --after ID", runSagas},
		{"verify", "check every invariant against the database; exit 1 when one is broken", runVerify},
		{"saga", "operator actions: saga retry|resolve|abort [ID] --note TEXT (or a filter for a batch)", runSaga},
		{"dlq", "list, group, show, replay or purge dead letters: dlq [list|groups|show|replay|purge]", runDLQ},
		{"replay", "move a consumer group's offsets back so it reads again: replay --group G --to-earliest|--to-time T|--to-offset P:O", runReplay},
		{"stock", "list the inventory's stock or set a SKU's units: stock [list | set SKU QTY]", runStock},
		{"parked", "list, retry or discard outbox rows Kafka would never accept: parked [list|retry|discard]", runParked},
		{"schemas", "the wire contract's JSON Schemas: schemas list | show NAME [V] | check (every version compatible with all earlier ones)", runSchemas},
		{"conformance", "play the participant protocol against a running participant: conformance --participant NAME [--effects-sql Q | --effects-url U]", runConformance},
		{"bench", "place orders (open or closed loop) and measure sagas/s and latency, then verify", runBench},
		{"chaos", "run failure scenarios (processes killed, brokers and PostgreSQL restarted …) and verify", runChaos},
	}
}

// errUsage marks an error whose message was already printed with the usage.
var errUsage = errors.New("usage")

func main() {
	// Lines logged with a context carry its trace_id, span_id and saga_id.
	slog.SetDefault(slog.New(telemetry.LogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:], stdout)
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			return 2
		default:
			fmt.Fprintf(stderr, "sagaflow %s: %s\n", c.name, oneLine(err))
			var ec interface{ ExitCode() int }
			if errors.As(err, &ec) {
				return ec.ExitCode()
			}
			return 1
		}
	}
	fmt.Fprintf(stderr, "sagaflow: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sagaflow COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `sagaflow COMMAND -h` for a command's flags.")
}

// newFlags returns a flag set whose parse errors are printed once, with the
// command's usage, and reported as errUsage.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("sagaflow "+name, flag.ContinueOnError)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	return nil
}

// env returns the environment variable or def.
func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// oneLine folds a multi-line error (pgx lists every address it tried) into
// the one line a command prints.
func oneLine(err error) string {
	lines := strings.Split(strings.TrimSpace(err.Error()), "\n")
	out := lines[:0]
	seen := map[string]bool{}
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" && !seen[l] {
			seen[l] = true
			out = append(out, l)
		}
	}
	return strings.Join(out, " ")
}
