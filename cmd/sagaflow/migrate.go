package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sagaflow/sagaflow/migrations"
)

func runMigrate(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("migrate")
	url := fs.String("database-url", env("DATABASE_URL", ""), "PostgreSQL connection string (default $DATABASE_URL)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *url == "" {
		return errors.New("no database: set DATABASE_URL or pass --database-url postgres://user@host:port/db")
	}
	v, err := migrations.Apply(ctx, *url)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "database at migration version %d\n", v)
	return nil
}
