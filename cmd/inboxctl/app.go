package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Exit codes; see the package documentation.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// app is one run of inboxctl: its streams, environment and terminal.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	env            func(string) string
	// interactive reports that stdin is a terminal: destructive commands
	// may ask for confirmation.
	interactive bool
	// showProgress reports that stderr is a terminal: long operations show
	// their progress there.
	showProgress bool
	hostname     func() (string, error)
}

// run runs inboxctl with args (without the program name) and returns its
// exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env func(string) string) int {
	a := &app{
		stdin: stdin, stdout: stdout, stderr: stderr, env: env,
		interactive:  isTerminal(stdin),
		showProgress: isTerminal(stderr),
		hostname:     os.Hostname,
	}
	return a.run(ctx, args)
}

// isTerminal reports whether v is a file open on a terminal: a character
// device other than the null device (a cron job's or a CI step's stdin is
// often /dev/null, a character device too).
func isTerminal(v any) bool {
	f, ok := v.(*os.File)
	if !ok || f == nil {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

func (a *app) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(a.stderr, mainHelp())
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help":
		fmt.Fprint(a.stdout, mainHelp())
		return exitOK
	}
	cmd := lookup(name)
	if cmd == nil {
		fmt.Fprintf(a.stderr, "inboxctl: unknown command %q\nRun 'inboxctl help' for the commands.\n", name)
		return exitUsage
	}
	c := &call{app: a, cmd: cmd}
	defer c.close()
	err := c.start(ctx, args[1:])
	return c.exit(err)
}

// call is one command's invocation: its flags, arguments and connection.
type call struct {
	*app
	cmd  *command
	args []string // positional arguments

	// Connection and output flags, registered by the commands that take
	// them.
	databaseURL string
	schema      string
	json        bool
	actor       string

	pool  *pgxpool.Pool
	admin *inbox.Admin
}

// start parses the command's flags and runs it.
func (c *call) start(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("inboxctl "+c.cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	runCmd := c.cmd.setup(fs, c)
	pos, err := parseInterspersed(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(c.stdout, commandHelp(c.cmd, fs))
		return nil
	}
	if err != nil {
		return usageError{err.Error()}
	}
	c.args = pos
	if c.cmd.maxArgs >= 0 && len(pos) > c.cmd.maxArgs {
		return usagef("unexpected argument %q", pos[c.cmd.maxArgs])
	}
	if len(pos) < c.cmd.minArgs {
		return usagef("missing %s", c.cmd.args)
	}
	return runCmd(ctx)
}

// parseInterspersed parses flags that may come after positional
// arguments (as in "show ID --json"); "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// exit reports err and returns the exit code it means.
func (c *call) exit(err error) int {
	var usage usageError
	prefix := "inboxctl " + c.cmd.name + ": "
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &usage) || errors.Is(err, inbox.ErrInvalidFilter):
		fmt.Fprintf(c.stderr, "%s%v\nRun 'inboxctl help %s' for usage.\n", prefix, err, c.cmd.name)
		return exitUsage
	case errors.Is(err, inbox.ErrSchema):
		fmt.Fprintf(c.stderr, "%s%v\n(with inboxctl: inboxctl migrate up%s)\n", prefix, err, c.schemaHint())
		return exitFailure
	case errors.Is(err, context.Canceled):
		fmt.Fprintf(c.stderr, "%sinterrupted: %v\n", prefix, err)
		return exitFailure
	default:
		fmt.Fprintf(c.stderr, "%s%v\n", prefix, err)
		return exitFailure
	}
}

func (c *call) schemaHint() string {
	if c.schema != "" {
		return " --schema " + c.schema
	}
	return ""
}

func (c *call) close() {
	if c.pool != nil {
		c.pool.Close()
	}
}

// usageError is a mistake in the command line: exit code 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// connFlags registers --database-url and --schema.
func (c *call) connFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.databaseURL, "database-url", "",
		"PostgreSQL connection `URL` (default: $DATABASE_URL)")
	fs.StringVar(&c.schema, "schema", "",
		"`search_path` to work in, such as myschema (default: the server's)")
}

// jsonFlag registers --json.
func (c *call) jsonFlag(fs *flag.FlagSet) {
	fs.BoolVar(&c.json, "json", false, "write JSON to stdout (see 'inboxctl help' for the shapes)")
}

// actorFlag registers --actor.
func (c *call) actorFlag(fs *flag.FlagSet) {
	fs.StringVar(&c.actor, "actor", "", "`who` acts, for the audit trail (default: $USER@hostname)")
}

// who returns the actor: --actor, else $USER@hostname.
func (c *call) who() string {
	if s := strings.TrimSpace(c.actor); s != "" {
		return s
	}
	user := c.env("USER")
	if user == "" {
		user = c.env("USERNAME")
	}
	if user == "" {
		user = "inboxctl"
	}
	host, err := c.hostname()
	if err != nil || host == "" {
		return user
	}
	return user + "@" + host
}
