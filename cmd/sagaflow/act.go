package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/sagaflow/sagaflow/api"
	"github.com/sagaflow/sagaflow/saga"
)

// runSaga runs an operator action on one saga, or on every saga a filter
// matches: the console's and the API's actions, from the command line.
func runSaga(ctx context.Context, args []string, stdout io.Writer) error {
	actions := []string{"retry", "resolve", "abort"}
	if len(args) == 0 || !slices.Contains(actions, args[0]) {
		return fmt.Errorf("saga needs an action: saga %s [ID] --note TEXT --operator NAME", strings.Join(actions, "|"))
	}
	action, args := args[0], args[1:]
	var id string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	fs := newFlags("saga " + action)
	var c commonFlags
	c.register(fs)
	var sf sagaFlags
	sf.register(fs)
	note := fs.String("note", "", "why (kept, with --operator, in the saga's history)")
	operator := fs.String("operator", env("USER", ""), "who acts (kept in the saga's history)")
	var ff filterFlags
	ff.register(fs)
	dryRun := fs.Bool("dry-run", false, "batch: count the sagas the filter matches; change nothing")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow saga retry|resolve|abort [ID] --note TEXT [flags]

retry sends a stuck saga's compensation again with fresh attempts; resolve
ends a stuck saga as compensated (say in --note what was undone by hand);
abort compensates a running saga now, its current step included. Without
ID the action runs on every saga the filter flags match (at most 1000; try
--dry-run first). The note and --operator go into each saga's history. The
first deadline of a retried or aborted step follows --step-timeout.

  sagaflow saga retry 0193b5a2-… --note "inventory is back"
  sagaflow saga retry --state stuck --step payment --dry-run
  sagaflow saga abort 0193b5a2-… --note "customer cancelled by phone"

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if id == "" && fs.NArg() == 1 {
		id = fs.Arg(0)
	} else if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(fs.NArg()-1))
	}
	if strings.TrimSpace(*note) == "" && !*dryRun {
		return errors.New("--note is required: say why, it is kept in the saga's history")
	}
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	engine, err := orderEngine(pool, c, sf.config())
	if err != nil {
		return err
	}
	do := map[string]func(context.Context, uuid.UUID, string) (*saga.Instance, error){
		"retry": engine.Retry, "resolve": engine.Resolve, "abort": engine.Abort}[action]
	text := *note
	if *operator != "" {
		text = "operator " + *operator + ": " + *note
	}
	var ids []uuid.UUID
	if id != "" {
		uid, err := uuid.Parse(id)
		if err != nil {
			return fmt.Errorf("%q is not a saga id", id)
		}
		ids = []uuid.UUID{uid}
	} else {
		f, found, err := ff.filter(ctx, pool, engine)
		if err != nil {
			return err
		}
		if !api.Filtered(f) && ff.search == "" {
			return errors.New("give a saga id, or filter flags for a batch (--search, --state, --type, --step, --older-than, --created-before, --reason)")
		}
		if !found {
			fmt.Fprintf(stdout, "no saga matches --search %q; nothing done\n", ff.search)
			return nil
		}
		list, err := saga.Search(ctx, pool, f, api.MaxBatch)
		if err != nil {
			return err
		}
		for _, in := range list {
			ids = append(ids, in.ID)
		}
		if *dryRun {
			fmt.Fprintf(stdout, "%d saga(s) match; nothing done (--dry-run)\n", len(ids))
			return nil
		}
	}
	var done, conflicts int
	var errs []error
	for _, sid := range ids {
		in, err := do(ctx, sid, text)
		switch {
		case err == nil:
			done++
			fmt.Fprintf(stdout, "saga %s: %s done, now %s\n", sid, action, in.State)
		case errors.Is(err, saga.ErrConflict):
			conflicts++
			fmt.Fprintf(stdout, "saga %s: %v\n", sid, err)
		default:
			errs = append(errs, err)
		}
	}
	if id == "" { // a batch: its summary
		fmt.Fprintf(stdout, "%s done on %d of %d saga(s); %d had moved on (conflict), %d failed\n", action, done, len(ids), conflicts, len(errs))
	}
	if len(ids) == 1 && conflicts == 1 {
		return errors.New("the saga is not in a state that allows " + action)
	}
	return errors.Join(errs...)
}
