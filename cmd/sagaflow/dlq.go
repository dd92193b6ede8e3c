package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ThreeDotsLabs/watermill"

	"github.com/sagaflow/sagaflow/deadletter"
)

// runDLQ lists, shows, groups, replays or purges the recorded dead letters.
func runDLQ(ctx context.Context, args []string, stdout io.Writer) error {
	action := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	actions := []string{"list", "groups", "show", "replay", "purge"}
	if !slices.Contains(actions, action) {
		return fmt.Errorf("unknown action %q: dlq %s", action, strings.Join(actions, "|"))
	}
	var showArg string // show N: the number may come before the flags
	if action == "show" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		showArg, args = args[0], args[1:]
	}
	fs := newFlags("dlq " + action)
	var c commonFlags
	c.register(fs)
	var f dlqFilter
	f.register(fs)
	limit := fs.Int("limit", 50, "list, groups: most rows; replay: most dead letters replayed")
	cursor := fs.Int64("cursor", 0, "list: the next cursor printed by the previous page")
	asJSON := fs.Bool("json", false, "print JSON")
	dryRun := fs.Bool("dry-run", false, "replay, purge: only count what matches")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow dlq [list|groups|show|replay|purge] [flags]

A message a consumer gave up on (a permanent error, its retries spent, a
future schema version) goes to its consumer group's dead-letter topic; the
relay role records each in the database with where it came from and why.
groups shows them by cause, list one by one, show one whole (payload and
headers). After fixing the cause, replay publishes them again to their
origin topic (new message id, header replayed_from_dead_letter): safe,
every consumer is idempotent. purge deletes them. replay and purge need a
filter and take --dry-run.

  sagaflow dlq groups
  sagaflow dlq show 42
  sagaflow dlq replay --fingerprint 3f2a… --dry-run
  sagaflow dlq replay --id 42,43
  sagaflow dlq purge --before 2026-12-01T00:00:00Z

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	filter, err := f.filter()
	if err != nil {
		return err
	}
	if action == "show" {
		if showArg == "" && fs.NArg() == 1 {
			showArg = fs.Arg(0)
		} else if fs.NArg() > 0 || showArg == "" {
			return errors.New("show takes one dead letter number: dlq show N")
		}
		id, err := strconv.ParseInt(showArg, 10, 64)
		if err != nil || id < 1 {
			return fmt.Errorf("%q is not a dead letter's number", showArg)
		}
		filter.IDs = []int64{id}
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := deadletter.NewStore(pool)
	switch action {
	case "groups":
		groups, err := store.Groups(ctx, filter, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, groups)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "FINGERPRINT\tCONSUMER\tTYPE\tCOUNT\tREPLAYED\tFIRST\tLAST\tERROR")
		for _, g := range groups {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", g.Fingerprint, g.ConsumerGroup, g.Type, g.Count, g.Replayed,
				g.FirstSeen.Format(time.RFC3339), g.LastSeen.Format(time.RFC3339), g.ErrorPattern)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d group(s)\n", len(groups))
		return nil
	case "show":
		d, err := store.Get(ctx, filter.IDs[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, d)
	case "replay", "purge":
		if filter.IsZero() {
			return errors.New("say which dead letters: --id, --consumer-group, --type, --fingerprint, --saga or --before (every one: --before now)")
		}
		n, err := store.Count(ctx, filter)
		if err != nil {
			return err
		}
		if *dryRun {
			fmt.Fprintf(stdout, "%d dead letter(s) match; nothing done (--dry-run)\n", n)
			return nil
		}
		if action == "purge" {
			purged, err := store.Purge(ctx, filter)
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%d dead letter(s) purged\n", purged)
			return nil
		}
		if err := c.checkBrokers(fs); err != nil {
			return err
		}
		if len(c.kafka("").Brokers) == 0 {
			return errors.New("replay publishes to Kafka: set KAFKA_BROKERS or pass --kafka-brokers")
		}
		pub, err := c.kafka("sagaflow-dlq").NewPublisher(watermill.NopLogger{})
		if err != nil {
			return err
		}
		defer pub.Close() //nolint:errcheck // after the replay's acks
		replayed, err := deadletter.NewReplayer(store, pub).Replay(ctx, filter, *limit)
		for _, r := range replayed {
			fmt.Fprintf(stdout, "dead letter %d replayed to %s as message %s (replay %d)\n", r.DeadLetter, r.Topic, r.MessageID, r.Replay)
		}
		fmt.Fprintf(stdout, "%d of %d matching dead letter(s) replayed\n", len(replayed), n)
		return err
	}
	filter.Cursor = *cursor
	ds, err := store.List(ctx, filter, *limit+1)
	if err != nil {
		return err
	}
	next := ""
	if len(ds) > *limit {
		ds = ds[:*limit]
		next = strconv.FormatInt(ds[len(ds)-1].ID, 10)
	}
	if *asJSON {
		return printJSON(stdout, ds)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDEAD-LETTERED\tCONSUMER\tTYPE\tORIGIN\tKEY\tSAGA\tREPLAYS\tERROR")
	for _, d := range ds {
		origin := d.OriginTopic
		if d.OriginPartition != nil && d.OriginOffset != nil {
			origin = fmt.Sprintf("%s/%d@%d", d.OriginTopic, *d.OriginPartition, *d.OriginOffset)
		}
		sagaID := ""
		if d.SagaID != nil {
			sagaID = d.SagaID.String()
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.DeadLetteredAt.Format(time.RFC3339), d.ConsumerGroup, d.Type,
			origin, d.Key, sagaID, d.Replays, oneLine(errors.New(d.Error)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d dead letter(s)", len(ds))
	if next != "" {
		fmt.Fprintf(stdout, "; next page: --cursor %s", next)
	}
	fmt.Fprintln(stdout)
	return nil
}

// dlqFilter is the filter flags of `sagaflow dlq`: the console's and the
// API's (deadletter.ParseFilter), as flags.
type dlqFilter struct {
	ids, group, typ, fingerprint, saga, messageID, since, before string
}

func (f *dlqFilter) register(fs *flag.FlagSet) {
	fs.StringVar(&f.ids, "id", "", "dead letter numbers, comma separated")
	fs.StringVar(&f.group, "consumer-group", "", "only this consumer group's (e.g. sagaflow.payment)")
	fs.StringVar(&f.typ, "type", "", "only messages of this type (e.g. payment.charge)")
	fs.StringVar(&f.fingerprint, "fingerprint", "", "only this cause (see dlq groups)")
	fs.StringVar(&f.saga, "saga", "", "only this saga's")
	fs.StringVar(&f.messageID, "message-id", "", "only the dead letter of this message id")
	fs.StringVar(&f.since, "since", "", "only those dead-lettered since this time (RFC 3339, or a duration such as 1h)")
	fs.StringVar(&f.before, "before", "", "only those dead-lettered before this time (RFC 3339, or now)")
}

func (f *dlqFilter) filter() (deadletter.Filter, error) {
	q := url.Values{}
	for k, v := range map[string]string{"id": f.ids, "consumer_group": f.group, "type": f.typ, "fingerprint": f.fingerprint,
		"saga_id": f.saga, "message_id": f.messageID, "since": f.since, "before": f.before} {
		if v != "" {
			q.Set(k, v)
		}
	}
	out, err := deadletter.ParseFilter(q, time.Now())
	var fe *deadletter.FilterError
	if errors.As(err, &fe) {
		flagName := map[string]string{"consumer_group": "consumer-group", "saga_id": "saga", "message_id": "message-id"}[fe.Param]
		if flagName == "" {
			flagName = fe.Param
		}
		return out, errors.New("--" + flagName + " " + fe.Reason)
	}
	return out, err
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
