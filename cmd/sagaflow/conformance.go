package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sagaflow/sagaflow/conformance"
)

// runConformance plays the participant protocol against a running
// participant and prints a verdict per rule; any failure exits 1.
func runConformance(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("conformance")
	var c commonFlags
	c.register(fs)
	participant := fs.String("participant", "", "whose commands to send: "+strings.Join(conformance.Participants, ", "))
	effectsSQL := fs.String("effects-sql", "", "SQL counting a saga's live effects at the participant, the saga id as $1 (needs --database-url); \"ours\": Sagaflow's own participant's")
	effectsURL := fs.String("effects-url", "", "HTTP endpoint counting a saga's live effects: GET URL?saga_id=ID answers N or {\"effects\": N}")
	timeout := fs.Duration("timeout", 30*time.Second, "how long each answer may take")
	sku := fs.String("sku", "sku-1", "the item the commands' orders ask for (the participant must stock it)")
	asJSON := fs.Bool("json", false, "print the verdicts as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := c.checkBrokers(fs); err != nil {
		return err
	}
	k := c.kafka("sagaflow-conformance")
	if len(k.Brokers) == 0 {
		return errors.New("the kit talks to the participant over Kafka: set KAFKA_BROKERS or pass --kafka-brokers")
	}
	cfg := conformance.Config{Kafka: k, Topics: c.topics(), Participant: *participant, Timeout: *timeout, SKU: *sku}
	switch {
	case *effectsSQL != "" && *effectsURL != "":
		return errors.New("give --effects-sql or --effects-url, not both")
	case *effectsSQL != "":
		query := *effectsSQL
		if query == "ours" {
			query = conformance.OurEffects[*participant]
		}
		pool, err := c.pool(ctx, 2)
		if err != nil {
			return err
		}
		defer pool.Close()
		cfg.Effects = conformance.SQLEffects(pool, query)
	case *effectsURL != "":
		cfg.Effects = conformance.HTTPEffects(*effectsURL)
	}
	fmt.Fprintf(os.Stderr, "conformance: playing %d rules against %s (each answer within %s)…\n", len(conformance.Rules), *participant, *timeout)
	results, err := conformance.Run(ctx, cfg)
	if err != nil {
		return err
	}
	failed := 0
	for _, r := range results {
		if !r.Pass {
			failed++
		}
	}
	if *asJSON {
		if err := printJSON(stdout, results); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RULE\tVERDICT\tDETAIL")
		for _, r := range results {
			verdict := "pass"
			if !r.Pass {
				verdict = "FAIL"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Rule, verdict, r.Detail)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d of %d rules passed\n", *participant, len(results)-failed, len(results))
	}
	if failed > 0 {
		return exitError{code: 1, err: fmt.Errorf("%s fails %d rule(s)", *participant, failed)}
	}
	return nil
}
