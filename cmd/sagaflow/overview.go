package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sagaflow/sagaflow/deadletter"
	"github.com/sagaflow/sagaflow/overview"
)

// runOverview prints the console's overview (overview.Take): sagas per
// state, the last minutes' completions and durations, outbox backlogs,
// consumer lag (with Kafka) and dead letters per consumer.
func runOverview(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("overview")
	var c commonFlags
	c.register(fs)
	minutes := fs.Int("minutes", 5, "print the last N minutes in which sagas ended (0: none)")
	asJSON := fs.Bool("json", false, "print JSON (every minute of the last hour)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := c.checkBrokers(fs); err != nil {
		return err
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	src := overview.Sources{Pool: pool, Topics: c.topics(), DeadLetters: deadletter.NewStore(pool)}
	if k := c.kafka("sagaflow-overview"); len(k.Brokers) > 0 {
		src.Kafka = &k
	}
	o, err := overview.Take(ctx, src, time.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, o)
	}
	var states []string
	for _, s := range o.States {
		states = append(states, fmt.Sprintf("%s=%d", s.State, s.Count))
	}
	fmt.Fprintf(stdout, "sagas: %s\n", strings.Join(states, " "))
	fmt.Fprintf(stdout, "ended in the last hour: %d\n\n", o.EndedLastHour)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if n := min(*minutes, len(o.Minutes)); n > 0 {
		fmt.Fprintln(tw, "MINUTE\tENDED\tCOMPLETED\tP50\tP99")
		for _, m := range o.Minutes[len(o.Minutes)-n:] {
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f ms\t%.0f ms\n", m.At.Local().Format("15:04"), m.Ended, m.Completed, m.P50ms, m.P99ms)
		}
		fmt.Fprintln(tw)
	}
	fmt.Fprintln(tw, "OUTBOX\tWAITING\tOLDEST\tPARKED")
	for _, b := range o.Outboxes {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", b.Schema, b.Rows, b.OldestAge.Round(time.Millisecond), b.Parked)
	}
	fmt.Fprintln(tw)
	switch {
	case src.Kafka == nil:
		fmt.Fprintln(tw, "consumer lag: not known without Kafka (--kafka-brokers)")
	case o.LagError != "":
		fmt.Fprintf(tw, "consumer lag: Kafka did not answer: %s\n", o.LagError)
	default:
		fmt.Fprintln(tw, "GROUP\tTOPIC\tTO READ")
		for _, l := range o.Lag {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", l.Group, l.Topic, l.Lag)
		}
	}
	fmt.Fprintln(tw)
	fmt.Fprintf(tw, "DEAD LETTERS\t%d\n", o.DeadLettersTotal)
	for _, d := range o.DeadLetters {
		fmt.Fprintf(tw, "%s\t%d\n", d.ConsumerGroup, d.Count)
	}
	return tw.Flush()
}
