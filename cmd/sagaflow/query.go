package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/order"
	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/verify"
)

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) ExitCode() int { return e.code }

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("status")
	var c commonFlags
	c.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	var id string
	// Accept the id before or after the flags.
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		id, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 || id == "" {
		fmt.Fprintln(fs.Output(), "usage: sagaflow status [--json] SAGA_OR_ORDER_ID")
		return errUsage
	}
	uid, err := uuid.Parse(id)
	if err != nil {
		return fmt.Errorf("%q is not a saga or order id (a UUID)", id)
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	in, err := saga.Get(ctx, pool, uid)
	if errors.Is(err, saga.ErrNotFound) {
		o, oerr := order.Get(ctx, pool, uid)
		if oerr != nil {
			return fmt.Errorf("no saga or order has id %s", uid)
		}
		in, err = saga.Get(ctx, pool, o.SagaID)
	}
	if err != nil {
		return err
	}
	hist, err := saga.History(ctx, pool, in.ID)
	if err != nil {
		return err
	}
	var ord *order.Order
	if oid, err := order.OrderIDOfSaga(ctx, pool, in.ID); err == nil {
		ord, _ = order.Get(ctx, pool, oid)
	}
	traceID, err := saga.TraceID(ctx, pool, in.ID)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"saga": in, "history": hist, "order": ord, "trace_id": traceID})
	}
	fmt.Fprintf(stdout, "saga     %s (%s)\nstate    %s\n", in.ID, in.Type, in.State)
	if traceID != "" {
		fmt.Fprintf(stdout, "trace    %s\n", traceID)
	}
	if in.Reason != "" {
		fmt.Fprintf(stdout, "reason   %s\n", in.Reason)
	}
	if ord != nil {
		fmt.Fprintf(stdout, "order    %s: %s\n", ord.ID, ord.Status)
	}
	fmt.Fprintf(stdout, "started  %s", in.CreatedAt.Format(time.RFC3339Nano))
	if in.EndedAt != nil {
		fmt.Fprintf(stdout, ", ended after %s", in.EndedAt.Sub(in.CreatedAt).Round(time.Millisecond))
	}
	fmt.Fprintln(stdout)
	fmt.Fprintln(stdout)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTEP\tKIND\tATTEMPT\tEVENT\tBY\tDETAIL")
	for _, h := range hist {
		attempt := ""
		if h.Attempt > 0 {
			attempt = fmt.Sprint(h.Attempt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", h.At.Format("15:04:05.000"), h.Step, h.Kind, attempt, h.Event, h.Participant, h.Reason)
	}
	return tw.Flush()
}

func runSagas(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("sagas")
	var c commonFlags
	c.register(fs)
	var ff filterFlags
	ff.register(fs)
	limit := fs.Int("limit", 50, "most sagas to list")
	after := fs.String("after", "", "list sagas after this id (paging cursor)")
	newest := fs.Bool("newest", false, "list the newest first (default: oldest first, as GET /sagas)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *limit < 1 || *limit > 10000 {
		return fmt.Errorf("--limit must be between 1 and 10000")
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	engine, err := orderEngine(pool, c, order.SagaConfig{})
	if err != nil {
		return err
	}
	f, found, err := ff.filter(ctx, pool, engine)
	if err != nil {
		return err
	}
	f.Oldest = !*newest
	if *after != "" {
		u, err := uuid.Parse(*after)
		if err != nil {
			return fmt.Errorf("--after %q is not a saga id", *after)
		}
		f.Cursor = &u
	}
	list := []*saga.Instance{}
	if found {
		if list, err = saga.Search(ctx, pool, f, *limit); err != nil {
			return err
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	counts, err := saga.CountByState(ctx, pool)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SAGA\tTYPE\tSTATE\tSTEP\tATTEMPT\tCREATED\tREASON")
	for _, in := range list {
		step := fmt.Sprint(in.Step)
		if names := engine.Steps(in.Type); in.Step >= 0 && in.Step < len(names) {
			step = names[in.Step]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.ID, in.Type, in.State, step, in.Attempt, in.CreatedAt.Format(time.RFC3339), in.Reason)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if !found {
		fmt.Fprintf(stdout, "no saga matches --search %q\n", ff.search)
	}
	fmt.Fprintf(stdout, "\ntotals:")
	for _, s := range []saga.State{saga.Running, saga.Compensating, saga.Completed, saga.Compensated, saga.Failed, saga.Stuck} {
		fmt.Fprintf(stdout, " %s=%d", s, counts[s])
	}
	fmt.Fprintln(stdout)
	return nil
}

func runVerify(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("verify")
	var c commonFlags
	c.register(fs)
	allowed := fs.Int64("dead-letters-allowed", 0, "dead-lettered messages put there on purpose")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	opts := verify.Options{AllowedDeadLetters: *allowed}
	if c.brokers != "" {
		kcfg, topics := c.kafka("sagaflow-verify"), c.topics()
		opts.DeadLetters = func(ctx context.Context) (map[string]int64, error) {
			return kcfg.CountMessages(ctx, topics.DeadLetterTopics()...)
		}
	}
	rep, err := verify.Run(ctx, pool, opts)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		rep.Print(stdout)
	}
	if !rep.OK() {
		return exitError{1, errors.New("invariants broken")}
	}
	return nil
}
