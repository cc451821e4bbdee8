package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/pginbox/inbox"
)

// schemaReport is the JSON of migrate up and migrate status.
type schemaReport struct {
	Schema   string `json:"schema"`
	Applied  int64  `json:"applied"`
	Latest   int64  `json:"latest"`
	UpToDate bool   `json:"up_to_date"`
	Problem  string `json:"problem,omitempty"`
}

func migrateCommand() *command {
	return &command{
		name: "migrate", args: "up|status", minArgs: 1, maxArgs: 1,
		summary: "create or upgrade the inbox's tables, or report their version",
		help: `
migrate up creates the inbox's tables in the first schema of the search_path,
or upgrades them to this release of inboxctl, as inbox.Migrate does (safe to
run while workers run, and from many processes at once; migrations only go
up). migrate status reports the latest migration applied and the latest this
release has; it exits 0 whatever the state (read up_to_date in --json).`,
		json: `{"schema": "public", "applied": 5, "latest": 5, "up_to_date": true,
 "problem": "..."}   (problem only when the tables are not usable)`,
		examples: []string{
			"inboxctl migrate status",
			"inboxctl migrate up --schema orders",
			"DATABASE_URL=postgres://app@db/app inboxctl migrate up --json",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				switch c.args[0] {
				case "up", "status":
				default:
					return usagef("unknown migrate command %q: use up or status", c.args[0])
				}
				admin, err := c.connect(ctx)
				if err != nil {
					return err
				}
				before, _, err := admin.SchemaVersion(ctx)
				if err != nil {
					return err
				}
				if c.args[0] == "up" {
					if err := inbox.Migrate(ctx, c.pool); err != nil {
						return err
					}
				}
				rep, err := c.schemaReport(ctx, admin)
				if err != nil {
					return err
				}
				if c.json {
					return writeJSON(c.stdout, rep)
				}
				fmt.Fprintf(c.stdout, "schema:  %s\n", dash(rep.Schema))
				if c.args[0] == "up" {
					if before == rep.Applied {
						fmt.Fprintf(c.stdout, "migrate: nothing to do, at version %d\n", rep.Applied)
					} else {
						fmt.Fprintf(c.stdout, "migrate: from version %d to %d\n", before, rep.Applied)
					}
				}
				fmt.Fprintf(c.stdout, "applied: %d\nlatest:  %d\n", rep.Applied, rep.Latest)
				switch {
				case rep.UpToDate:
					fmt.Fprintln(c.stdout, "state:   up to date")
				case rep.Problem != "":
					fmt.Fprintf(c.stdout, "state:   %s\n", rep.Problem)
				}
				return nil
			}
		},
	}
}

// schemaReport reads the schema's version and whether the inbox is usable.
func (c *call) schemaReport(ctx context.Context, admin *inbox.Admin) (schemaReport, error) {
	var rep schemaReport
	var err error
	if rep.Schema, err = c.currentSchema(ctx); err != nil {
		return rep, err
	}
	if rep.Applied, rep.Latest, err = admin.SchemaVersion(ctx); err != nil {
		return rep, err
	}
	switch err := admin.CheckSchema(ctx); {
	case err == nil:
		rep.UpToDate = true
	case errors.Is(err, inbox.ErrSchema):
		rep.Problem = err.Error() + " (inboxctl migrate up" + c.schemaHint() + ")"
	default:
		return rep, err
	}
	if rep.Schema == "" {
		rep.UpToDate = false
		rep.Problem = "the search_path names no existing schema; create it (CREATE SCHEMA) or fix --schema"
	}
	return rep, nil
}
