package main

import (
	"context"
	"flag"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pginbox/inbox"
)

// backfillResult is the JSON of backfill.
type backfillResult struct {
	Action        string `json:"action"`
	DryRun        bool   `json:"dry_run"`
	EventType     string `json:"event_type"`
	HandlerKey    string `json:"handler_key"`
	Matched       int64  `json:"matched"`
	Created       int64  `json:"created"`
	Existing      int64  `json:"existing"`
	PayloadErased int64  `json:"payload_erased"`
	Resume        string `json:"resume"`
}

func backfillCommand() *command {
	return &command{
		name: "backfill", maxArgs: 0,
		summary: "create a new handler's rows for events stored before it",
		help: `
Backfill creates rows of a handler added to an event type for the events of
that type stored before it was registered (only those stored at or after
--since, when given), as if they had been stored with it: each row copies
the payload, event date, trace context and place in its ordering key's order
from one of the event's rows, and runs like a new row, with --max-attempts
attempts (default: inbox.DefaultRetryAttempts). An event that has a row of
the handler already is counted as existing, never given a second; an event
whose payload retention erased from every row cannot get one: it is counted
as payload_erased, and the command exits 1 after creating the others.

First register the handler on the workers, paused ('inboxctl pause
--event-type T --handler-key K') if the events carry ordering keys, so that
rows stored for it meanwhile do not run before the backfilled rows of their
keys; resume it once the backfill is done.

It first counts, reading the events once (with --dry-run it stops there),
then walks them again in batches of --batch-size events, each batch in its
own transaction, showing its progress and resume token on a terminal.
Ctrl-C stops it between batches; the rows created stay, and it prints the
resume token and the command that continues. Running it again from the
start is safe too: it only re-reads the events done.`,
		json: `{"action": "backfill", "dry_run": false, "event_type": "order_created",
 "handler_key": "send_invoice",
 "matched": 480,        (rows to create when counted, before acting)
 "created": 480,        (rows created; 0 in a dry run)
 "existing": 0,         (events that had a row of the handler already)
 "payload_erased": 20,  (events that got no row: their payload was erased)
 "resume": ""}          (when stopped part way: the token for --resume)`,
		examples: []string{
			"inboxctl backfill --event-type order_created --handler-key send_invoice --dry-run",
			"inboxctl backfill --event-type order_created --handler-key send_invoice --since 7d --max-attempts 10",
			"inboxctl backfill --event-type order_created --handler-key send_invoice --resume 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21 --yes",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var spec inbox.BackfillSpec
			var since timeFlag
			var g guard
			fs.StringVar(&spec.EventType, "event-type", "", "the event `type` whose events get rows (required)")
			fs.StringVar(&spec.HandlerKey, "handler-key", "", "the `key` of the handler added to it (required)")
			fs.Var(&since, "since", "only events stored at or after `TIME`: RFC 3339, or a duration ago such as 90m, 2h, 3d (default: every event kept)")
			fs.IntVar(&spec.MaxAttempts, "max-attempts", 0, fmt.Sprintf("`attempts` the rows get, as the handler's HandlerMaxAttempts (default %d)", inbox.DefaultRetryAttempts))
			batchSize := fs.Int("batch-size", inbox.DefaultActionBatch, "events read per batch and transaction")
			fs.StringVar(&spec.After, "resume", "", "continue an interrupted backfill after this `token`, as it printed")
			g.register(fs)
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				switch {
				case spec.EventType == "" || spec.HandlerKey == "":
					return usagef("backfill needs --event-type and --handler-key")
				case spec.MaxAttempts < 0:
					return usagef("--max-attempts must be at least 1 (or 0 for the default)")
				case *batchSize <= 0:
					return usagef("--batch-size must be at least 1")
				}
				spec.Since = since.t
				return c.backfill(ctx, spec, *batchSize, g)
			}
		},
	}
}

func (c *call) backfill(ctx context.Context, spec inbox.BackfillSpec, batchSize int, g guard) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	target := fmt.Sprintf("handler %q for events of type %q", spec.HandlerKey, spec.EventType)
	if !spec.Since.IsZero() {
		target += " stored since " + timestamp(spec.Since)
	}
	if spec.After != "" {
		target += " after " + spec.After
	}

	// Count with the backfill's own dry run: it checks the arguments as
	// the backfill will.
	line := c.progressLine()
	dry, err := admin.Backfill(ctx, spec, inbox.ActionOptions{DryRun: true, BatchSize: batchSize}, func(r inbox.BackfillResult) {
		line("counting: %d events read", r.Created+r.Existing+r.PayloadErased)
	})
	line("")
	if err != nil {
		return err
	}
	n := dry.Created
	res := backfillResult{Action: "backfill", DryRun: g.dryRun, EventType: spec.EventType, HandlerKey: spec.HandlerKey,
		Matched: n, Existing: dry.Existing, PayloadErased: dry.PayloadErased}
	others := backfillOthers(dry)
	switch {
	case n == 0:
		if err := c.report(res, fmt.Sprintf("nothing to backfill (%s)%s", target, others)); err != nil {
			return err
		}
		return erasedError(dry, spec)
	case g.dryRun:
		return c.report(res, fmt.Sprintf("dry run: would create %s of %s%s; nothing was changed", plural(n, "row"), target, others))
	}
	if err := c.confirm(ctx, g, fmt.Sprintf("create %s of %s; workers that have the handler run them", plural(n, "row"), target)); err != nil {
		return err
	}

	// last is the latest progress report: its counts are those of the
	// batches committed, up to its Resume token.
	last := inbox.BackfillResult{Resume: spec.After}
	r, err := admin.Backfill(ctx, spec, inbox.ActionOptions{BatchSize: batchSize}, func(p inbox.BackfillResult) {
		last = p
		line("backfill: %d of %d rows created, %d existing, %d erased; resume token %s",
			p.Created, n, p.Existing, p.PayloadErased, p.Resume)
	})
	line("")
	if err != nil {
		r = last
	}
	res.Created, res.Existing, res.PayloadErased = r.Created, r.Existing, r.PayloadErased
	if err != nil {
		res.Resume = r.Resume
	}
	msg := fmt.Sprintf("created %s of %s%s", plural(r.Created, "row"), target, backfillOthers(r))
	if rerr := c.report(res, msg); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("stopped after creating %s of %d: %w\nto continue: %s",
			plural(r.Created, "row"), n, err, c.backfillCommandLine(spec, batchSize, r.Resume))
	}
	return erasedError(r, spec)
}

// backfillOthers describes the events a backfill gave no row, for a
// message: "; 3 events have a row already; 2 events get none: ...".
func backfillOthers(r inbox.BackfillResult) string {
	var s string
	if r.Existing > 0 {
		s += fmt.Sprintf("; %s had one already", plural(r.Existing, "event"))
	}
	if r.PayloadErased > 0 {
		s += fmt.Sprintf("; %s cannot get one: retention erased their payload", plural(r.PayloadErased, "event"))
	}
	return s
}

// erasedError is the error of a backfill that left events without a row
// because their payload was erased, or nil.
func erasedError(r inbox.BackfillResult, spec inbox.BackfillSpec) error {
	if r.PayloadErased == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s of type %q got no row of handler %q", inbox.ErrPayloadErased,
		plural(r.PayloadErased, "event"), spec.EventType, spec.HandlerKey)
}

// backfillCommandLine is the command that continues a backfill after the
// token resume ("" starts again), with --since as an absolute time.
func (c *call) backfillCommandLine(spec inbox.BackfillSpec, batchSize int, resume string) string {
	args := []string{"inboxctl", "backfill", "--event-type", shellQuote(spec.EventType), "--handler-key", shellQuote(spec.HandlerKey)}
	if !spec.Since.IsZero() {
		args = append(args, "--since", spec.Since.UTC().Format(time.RFC3339Nano))
	}
	if spec.MaxAttempts != 0 {
		args = append(args, "--max-attempts", strconv.Itoa(spec.MaxAttempts))
	}
	if batchSize != inbox.DefaultActionBatch {
		args = append(args, "--batch-size", strconv.Itoa(batchSize))
	}
	if c.schema != "" {
		args = append(args, "--schema", shellQuote(c.schema))
	}
	if resume != "" {
		args = append(args, "--resume", resume)
	}
	return strings.Join(args, " ")
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./:@%+=,-]+$`)

// shellQuote quotes s for a POSIX shell, when it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
