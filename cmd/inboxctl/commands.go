package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
)

// command is one inboxctl command.
type command struct {
	name    string
	args    string // synopsis of the positional arguments
	minArgs int
	maxArgs int // -1: any number
	summary string
	// help is the long description; json the shape of --json output.
	help     string
	json     string
	examples []string
	// setup registers the command's flags on fs and returns the function
	// that runs it once they are parsed.
	setup func(fs *flag.FlagSet, c *call) func(ctx context.Context) error
}

// commands returns every command, in the order help lists them.
func commands() []*command {
	return []*command{
		migrateCommand(),
		statsCommand(),
		workersCommand(),
		listCommand(),
		showCommand(),
		deadCommand(),
		parkedCommand(),
		replayCommand(),
		skipCommand(),
		discardCommand(),
		deleteCommand(),
		purgeCommand(),
		backfillCommand(),
		pauseCommand(),
		resumeCommand(),
		serveCommand(),
		helpCommand(),
	}
}

func lookup(name string) *command {
	for _, c := range commands() {
		if c.name == name {
			return c
		}
	}
	return nil
}

// mainHelp is the text of "inboxctl help".
func mainHelp() string {
	var b strings.Builder
	b.WriteString(`inboxctl operates a transactional inbox (github.com/pginbox/inbox) in PostgreSQL.

Usage: inboxctl COMMAND [ARGUMENTS] [FLAGS]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString(`
Connection (every command but help):
  --database-url URL   PostgreSQL connection URL (default: $DATABASE_URL)
  --schema PATH        search_path to work in (default: the server's)

Output:
  Human tables by default; --json writes one JSON document to stdout for
  scripts (each command's help gives its shape). Errors go to stderr.

Commands that change rows (replay, skip, discard, delete, purge, backfill)
count what they would change first. --dry-run prints the count and changes
nothing. On a terminal they ask for confirmation; without a terminal they
refuse unless --yes is given. Ctrl-C stops them between batches.

Exit codes:
  0  success, including "nothing matched" and dry runs
  1  failure: database error, event, pause or parked key not found, an
     action that stopped part way or was not confirmed, a replay or
     backfill that left rows aside because retention erased their payload
  2  usage: unknown command or flag, bad flag value or filter, missing
     database URL, a destructive command without a filter, or a changing
     command without --yes when stdin is not a terminal

Environment:
  DATABASE_URL   default for --database-url
  USER           with the host name, the default --actor recorded in audits

Run 'inboxctl help COMMAND' (or 'inboxctl COMMAND -h') for a command's flags
and examples.
`)
	return b.String()
}

// commandHelp is the text of "inboxctl help NAME".
func commandHelp(c *command, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: inboxctl %s", c.name)
	if c.args != "" {
		fmt.Fprintf(&b, " %s", c.args)
	}
	b.WriteString(" [FLAGS]\n\n")
	b.WriteString(strings.TrimSpace(c.help))
	b.WriteString("\n")
	flags := flagDefaults(fs)
	if flags != "" {
		b.WriteString("\nFlags:\n")
		b.WriteString(flags)
	}
	if c.json != "" {
		b.WriteString("\nJSON output (--json):\n")
		for _, line := range strings.Split(strings.TrimSpace(c.json), "\n") {
			b.WriteString("  " + strings.TrimRight(line, " ") + "\n")
		}
	}
	if len(c.examples) > 0 {
		b.WriteString("\nExamples:\n")
		for _, e := range c.examples {
			b.WriteString("  " + e + "\n")
		}
	}
	return b.String()
}

// flagDefaults lists fs's flags as --name TYPE, with their usage and
// non-zero defaults.
func flagDefaults(fs *flag.FlagSet) string {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		name, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(&b, " %s", name)
		}
		fmt.Fprintf(&b, "\n      %s", usage)
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "[]" {
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	return b.String()
}

func helpCommand() *command {
	return &command{
		name: "help", args: "[COMMAND]", maxArgs: 1,
		summary: "show help for inboxctl or one command",
		help:    "Help prints the list of commands, or one command's flags, JSON output and examples.",
		examples: []string{
			"inboxctl help",
			"inboxctl help replay",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			return func(context.Context) error {
				if len(c.args) == 0 {
					fmt.Fprint(c.stdout, mainHelp())
					return nil
				}
				target := lookup(c.args[0])
				if target == nil {
					return usagef("unknown command %q", c.args[0])
				}
				tfs := flag.NewFlagSet(target.name, flag.ContinueOnError)
				target.setup(tfs, &call{app: c.app, cmd: target})
				fmt.Fprint(c.stdout, commandHelp(target, tfs))
				return nil
			}
		},
	}
}
