package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sagaflow/sagaflow/kafkax"
)

// runReplay moves a consumer group's committed offsets back (or forward),
// so that its consumers read those messages again when they start.
func runReplay(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("replay")
	var c commonFlags
	c.register(fs)
	group := fs.String("group", "", "the consumer group: a Sagaflow consumer ("+strings.Join(kafkax.Consumers, ", ")+") or a full group name")
	topic := fs.String("topic", "", "the topic to reset (default: the one the Sagaflow consumer reads; required for another group)")
	earliest := fs.Bool("to-earliest", false, "to the earliest offset Kafka keeps")
	at := fs.String("to-time", "", "to the first message at or after this time (RFC 3339)")
	offsets := fs.String("to-offset", "", "to these offsets: PARTITION:OFFSET[,PARTITION:OFFSET…]")
	dryRun := fs.Bool("dry-run", false, "print what would be read again; change nothing")
	asJSON := fs.Bool("json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow replay --group G (--to-earliest | --to-time T | --to-offset P:O[,P:O…]) [flags]

Moves a consumer group's committed offsets so that its consumers read those
messages again when they start. Safe: every Sagaflow consumer deduplicates
by message id through its inbox, and a participant answers a step it
already ran from its record, so a replay changes no effect. Kafka only
accepts offsets for a group without live members: stop the group's
consumers (their role) first; the command refuses otherwise.

  sagaflow replay --group payment --to-earliest --dry-run
  sagaflow replay --group orchestrator --to-time 2026-12-01T10:00:00Z

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *group == "" {
		return errors.New("--group is required")
	}
	var target kafkax.ResetTarget
	chosen := 0
	if *earliest {
		target.Earliest = true
		chosen++
	}
	if *at != "" {
		t, err := time.Parse(time.RFC3339, *at)
		if err != nil {
			return fmt.Errorf("--to-time %q is not a time like 2026-12-01T10:00:00Z", *at)
		}
		target.Time = t
		chosen++
	}
	if *offsets != "" {
		target.Offsets = map[int32]int64{}
		for _, f := range strings.Split(*offsets, ",") {
			p, o, ok := strings.Cut(strings.TrimSpace(f), ":")
			pn, err1 := strconv.ParseInt(p, 10, 32)
			on, err2 := strconv.ParseInt(o, 10, 64)
			if !ok || err1 != nil || err2 != nil || pn < 0 || on < 0 {
				return fmt.Errorf("--to-offset %q is not PARTITION:OFFSET", f)
			}
			target.Offsets[int32(pn)] = on
		}
		chosen++
	}
	if chosen != 1 {
		return errors.New("give exactly one of --to-earliest, --to-time or --to-offset")
	}
	if err := c.checkBrokers(fs); err != nil {
		return err
	}
	k := c.kafka("sagaflow-replay")
	if len(k.Brokers) == 0 {
		return errors.New("no Kafka: set KAFKA_BROKERS or pass --kafka-brokers")
	}
	topics := c.topics()
	name := *group
	if slices.Contains(kafkax.Consumers, name) {
		if *topic == "" {
			*topic = topics.ConsumedBy(name)
		}
		name = topics.Group(name)
	}
	if *topic == "" {
		return fmt.Errorf("--topic is required for group %s, which is not a Sagaflow consumer", name)
	}
	parts, err := k.ResetGroup(ctx, name, []string{*topic}, target, *dryRun)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, parts)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITION\tCOMMITTED\tNEW\tEND\tTO READ")
	var total int64
	for _, p := range parts {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", p.Topic, p.Partition, p.Committed, p.Target, p.End, p.Lag)
		total += p.Lag
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verb := "reset"
	if *dryRun {
		verb = "would be reset (--dry-run: nothing changed)"
	}
	fmt.Fprintf(stdout, "consumer group %s %s: %d message(s) to read again\n", name, verb, total)
	return nil
}
