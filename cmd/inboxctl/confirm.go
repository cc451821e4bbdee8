package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// guard holds the flags of a destructive command.
type guard struct {
	yes    bool
	dryRun bool
}

func (g *guard) register(fs *flag.FlagSet) {
	fs.BoolVar(&g.yes, "yes", false, "do it without asking (needed when stdin is not a terminal)")
	fs.BoolVar(&g.dryRun, "dry-run", false, "only count what would change; change nothing")
}

// errDeclined is a confirmation answered no: exit 1.
var errDeclined = errors.New("not confirmed; nothing was changed")

// confirm asks plan as a yes/no question on a terminal. It returns nil to
// go on: at once with --yes; a usage error when stdin is not a terminal;
// errDeclined unless the answer is y or yes.
func (c *call) confirm(ctx context.Context, g guard, plan string) error {
	if g.yes {
		return nil
	}
	if !c.interactive {
		return usagef("refusing without confirmation, as stdin is not a terminal: %s. "+
			"Pass --yes to go ahead, or --dry-run to only count", plan)
	}
	fmt.Fprintf(c.stderr, "%s.\nGo ahead? [y/N] ", upperFirst(plan))
	answer, err := readLine(ctx, c.stdin)
	if err != nil {
		return err
	}
	switch strings.ToLower(strings.TrimSpace(answer)) {
	case "y", "yes":
		return nil
	}
	return errDeclined
}

// readLine reads one line from r, or gives up when ctx ends (the read
// then finishes in the background: a terminal read cannot be cancelled).
func readLine(ctx context.Context, r io.Reader) (string, error) {
	type result struct {
		line string
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		if line != "" {
			err = nil
		}
		ch <- result{line, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			return "", fmt.Errorf("read answer: %w", res.err)
		}
		return res.line, nil
	case <-ctx.Done():
		return "", context.Cause(ctx)
	}
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// progress returns a callback showing "verb n of total rows" on a
// terminal's stderr, and a function to end the line; both do nothing
// when stderr is not a terminal.
func (c *call) progress(verb string, total int64) (update func(done int64), end func()) {
	if !c.showProgress {
		return nil, func() {}
	}
	line := c.progressLine()
	return func(done int64) { line("%s %d of %d rows", verb, done, total) }, func() { line("") }
}

// progressLine returns a function that shows a line of progress on a
// terminal's stderr, rewriting it in place; line("") ends it. It does
// nothing when stderr is not a terminal.
func (c *call) progressLine() func(format string, args ...any) {
	shown := false
	return func(format string, args ...any) {
		if !c.showProgress {
			return
		}
		if format == "" {
			if shown {
				fmt.Fprintln(c.stderr)
			}
			shown = false
			return
		}
		shown = true
		fmt.Fprintf(c.stderr, "\r"+format, args...)
	}
}
