package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/sagaflow/sagaflow/contract"
	"github.com/sagaflow/sagaflow/kafkax"
)

// runSchemas lists the wire contract's JSON Schemas, prints one, or checks
// that every version of each is compatible with all earlier ones.
func runSchemas(_ context.Context, args []string, stdout io.Writer) error {
	action := "list"
	if len(args) > 0 {
		action, args = args[0], args[1:]
	}
	switch action {
	case "list":
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SCHEMA\tVERSIONS\tMESSAGE TYPES")
		for _, name := range contract.Names() {
			var vs []string
			for _, v := range contract.Versions(name) {
				vs = append(vs, strconv.Itoa(v))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\n", name, strings.Join(vs, ","), strings.Join(contract.Types(name), ", "))
		}
		return tw.Flush()
	case "show":
		if len(args) < 1 || len(args) > 2 {
			return errors.New("usage: sagaflow schemas show NAME [VERSION] (sagaflow schemas list names them)")
		}
		vs := contract.Versions(args[0])
		if len(vs) == 0 {
			return fmt.Errorf("no schema %q (schemas: %s)", args[0], strings.Join(contract.Names(), ", "))
		}
		v := vs[len(vs)-1]
		if len(args) == 2 {
			n, err := strconv.Atoi(strings.TrimPrefix(args[1], "v"))
			if err != nil {
				return fmt.Errorf("%q is not a version number", args[1])
			}
			v = n
		}
		src, err := contract.Source(args[0], v)
		if err != nil {
			return err
		}
		_, err = stdout.Write(src)
		return err
	case "asyncapi":
		doc, err := contract.AsyncAPI(kafkax.DefaultTopics())
		if err != nil {
			return err
		}
		_, err = stdout.Write(doc)
		return err
	case "check":
		bad, err := contract.Check()
		if err != nil {
			return err
		}
		n := 0
		for _, name := range contract.Names() {
			n += len(contract.Versions(name))
		}
		if len(bad) == 0 {
			fmt.Fprintf(stdout, "%d schema version(s) of %d schema(s): each compatible with every earlier version (backward transitive)\n", n, len(contract.Names()))
			return nil
		}
		for _, b := range bad {
			fmt.Fprintln(stdout, "incompatible:", b)
		}
		return exitError{code: 1, err: fmt.Errorf("%d incompatible change(s)", len(bad))}
	}
	return fmt.Errorf("unknown action %q: schemas list|show NAME [V]|check|asyncapi", action)
}
