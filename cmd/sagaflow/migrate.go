package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sagaflow/sagaflow/migrations"
)

func runMigrate(ctx context.Context, args []string, stdout io.Writer) error {
	fs := newFlags("migrate")
	url := fs.String("database-url", "", "PostgreSQL connection string (default $DATABASE_URL)") // no env default: the usage would print the password
	if err := parse(fs, args); err != nil {
		return err
	}
	if *url == "" {
		*url = os.Getenv("DATABASE_URL")
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
