package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/chaos"
)

func runChaos(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("chaos")
	scenario := fs.String("scenario", "all", "scenario to run, comma separated, or all")
	duration := fs.Duration("duration", 60*time.Second, "load duration per scenario (at least the scenario's minimum)")
	rate := fs.Int("rate", 40, "orders per second")
	seed := fs.Uint64("seed", 0, "seed of the fault schedule and order mix (0: from the clock; printed for replay)")
	dir := fs.String("dir", ".chaos", "where runs keep their data and logs (kept when a scenario fails)")
	script := fs.String("kafka-script", env("SAGAFLOW_KAFKA_SCRIPT", "scripts/kafka/kafka"), "script that runs real Kafka brokers; empty for embedded kfake (no three-broker scenario)")
	list := fs.Bool("list", false, "list the scenarios")
	asJSON := fs.Bool("json", false, "print the results as JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *list {
		for _, s := range chaos.Scenarios {
			fmt.Fprintf(stdout, "%-20s %s\n", s.Name, s.Doc)
		}
		return nil
	}
	var selected []chaos.Scenario
	if *scenario == "all" {
		selected = chaos.Scenarios
	} else {
		for _, name := range strings.Split(*scenario, ",") {
			s, ok := chaos.ScenarioByName(strings.TrimSpace(name))
			if !ok {
				return fmt.Errorf("unknown scenario %q (sagaflow chaos --list)", name)
			}
			selected = append(selected, s)
		}
	}
	bin, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the sagaflow binary: %w", err)
	}
	if *script != "" {
		if *script, err = filepath.Abs(*script); err != nil {
			return err
		}
		if _, err := os.Stat(*script); err != nil {
			return fmt.Errorf("kafka script %s: %w (pass --kafka-script '' for embedded kfake)", *script, err)
		}
	}
	var results []*chaos.Result
	failed := false
	for _, s := range selected {
		d := *duration
		if s.MinDuration > d {
			d = s.MinDuration
		}
		cfg := chaos.Config{Bin: bin, Dir: *dir, KafkaScript: *script, Duration: d, Rate: *rate, Seed: *seed, Progress: os.Stderr}
		if cfg.Seed == 0 {
			cfg.Seed = uint64(time.Now().UnixNano())
		}
		fmt.Fprintf(os.Stderr, "scenario %s (seed %d, %s of load at %d orders/s): %s\n", s.Name, cfg.Seed, d, *rate, s.Doc)
		res, err := chaos.Run(ctx, cfg, s)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		results = append(results, res)
		if !res.OK() {
			failed = true
			fmt.Fprintf(os.Stderr, "scenario %s FAILED; logs and verify report in %s\n%s", s.Name, res.Dir, res.Verify)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(results); err != nil {
			return err
		}
	} else {
		chaos.PrintTable(stdout, results)
	}
	if failed {
		return exitError{1, errors.New("a scenario failed")}
	}
	return nil
}
