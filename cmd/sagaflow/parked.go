package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sagaflow/sagaflow/outbox"
)

// runParked lists, retries or discards the outbox rows the relay parked
// because Kafka will never accept them as they are.
func runParked(ctx context.Context, args []string, stdout io.Writer) error {
	action := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	if !slices.Contains([]string{"list", "retry", "discard"}, action) {
		return fmt.Errorf("unknown action %q: parked list|retry|discard", action)
	}
	fs := newFlags("parked " + action)
	var c commonFlags
	c.register(fs)
	schema := fs.String("schema", "", "the outbox schema ("+strings.Join(outbox.ServiceSchemas, ", ")+"); list: every schema when empty")
	limit := fs.Int("limit", 100, "list: most rows per schema")
	asJSON := fs.Bool("json", false, "list: print JSON")
	seqs := fs.String("seq", "", "retry/discard: the parked rows' seq numbers, comma separated")
	all := fs.Bool("all", false, "retry/discard: every parked row of --schema")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow parked [list|retry|discard] [flags]

The relay parks an outbox row that Kafka will never accept as it is (larger
than the broker's limit, a deleted or unauthorised topic), so that the rest
of the outbox moves on. list shows them with their error; after fixing the
cause, retry moves rows back into their outbox for the relay to publish
again; discard deletes them.

  sagaflow parked
  sagaflow parked retry --schema saga --seq 12,13
  sagaflow parked discard --schema payment --all

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	schemas := outbox.ServiceSchemas
	if *schema != "" {
		if !slices.Contains(outbox.ServiceSchemas, *schema) {
			return fmt.Errorf("unknown outbox schema %q (schemas: %s)", *schema, strings.Join(outbox.ServiceSchemas, ", "))
		}
		schemas = []string{*schema}
	}
	var picked []int64
	if action != "list" {
		if *schema == "" {
			return errors.New("--schema is required to retry or discard")
		}
		if *all == (*seqs != "") {
			return errors.New("give either --seq N[,N…] or --all")
		}
		for _, f := range strings.Split(*seqs, ",") {
			if f = strings.TrimSpace(f); f == "" {
				continue
			}
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("--seq %q is not a row number", f)
			}
			picked = append(picked, n)
		}
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch action {
	case "retry", "discard":
		ob := outbox.New(*schema)
		op, verb := ob.RetryParked, "moved back into the outbox"
		if action == "discard" {
			op, verb = ob.DiscardParked, "discarded"
		}
		n, err := op(ctx, pool, picked)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%d parked row(s) of outbox %s %s\n", n, *schema, verb)
		if !*all && n != int64(len(picked)) {
			return fmt.Errorf("%d of the %d rows named were not parked in outbox %s", int64(len(picked))-n, len(picked), *schema)
		}
		return nil
	}
	type schemaRows struct {
		Schema string             `json:"schema"`
		Rows   []outbox.ParkedRow `json:"rows"`
	}
	var out []schemaRows
	for _, s := range schemas {
		rows, err := outbox.New(s).ListParked(ctx, pool, *limit)
		if err != nil {
			return err
		}
		out = append(out, schemaRows{s, rows})
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCHEMA\tSEQ\tTOPIC\tKEY\tTYPE\tBYTES\tPARKED\tERROR")
	total := 0
	for _, s := range out {
		for _, p := range s.Rows {
			total++
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Schema, p.Seq, p.Topic, p.Key, p.Headers[outbox.HeaderType], p.Size,
				p.ParkedAt.Format(time.RFC3339), p.Error)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d parked row(s)\n", total)
	return nil
}
