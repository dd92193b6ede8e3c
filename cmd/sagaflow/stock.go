package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/sagaflow/sagaflow/steps"
)

// runStock lists the inventory's stock or sets a SKU's available units.
func runStock(ctx context.Context, args []string, stdout io.Writer) error {
	action := "list"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		action, args = args[0], args[1:]
	}
	var positional []string // set SKU QTY: before or after the flags
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		positional, args = append(positional, args[0]), args[1:]
	}
	fs := newFlags("stock " + action)
	var c commonFlags
	c.register(fs)
	after := fs.String("after", "", "list: start after this SKU (the next page)")
	limit := fs.Int("limit", 100, "list: most SKUs")
	asJSON := fs.Bool("json", false, "list: print JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `usage: sagaflow stock [list | set SKU QTY] [flags]

list shows each SKU's available units and those held by reservations; set
makes QTY units of SKU available (adding the SKU if new). set is safe while
orders run: units held by sagas in flight stay held.

  sagaflow stock
  sagaflow stock set sku-1 500

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	positional = append(positional, fs.Args()...)
	pool, err := c.pool(ctx, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	switch action {
	case "set":
		if len(positional) != 2 {
			return errors.New("set takes a SKU and a quantity: stock set SKU QTY")
		}
		n, err := strconv.Atoi(positional[1])
		if err != nil {
			return fmt.Errorf("quantity %q is not a whole number", positional[1])
		}
		level, err := steps.SetStock(ctx, pool, positional[0], n)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: %d available, %d held\n", level.SKU, level.Available, level.Held)
		return nil
	case "list":
		if len(positional) > 0 {
			return fmt.Errorf("unexpected argument %q", positional[0])
		}
	default:
		return fmt.Errorf("unknown action %q: stock list|set", action)
	}
	levels, err := steps.ListStock(ctx, pool, *after, *limit+1)
	if err != nil {
		return err
	}
	next := ""
	if len(levels) > *limit {
		levels = levels[:*limit]
		next = levels[len(levels)-1].SKU
	}
	if *asJSON {
		return printJSON(stdout, levels)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SKU\tAVAILABLE\tHELD")
	for _, l := range levels {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", l.SKU, l.Available, l.Held)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d SKU(s)", len(levels))
	if next != "" {
		fmt.Fprintf(stdout, "; next page: --after %s", next)
	}
	fmt.Fprintln(stdout)
	return nil
}
