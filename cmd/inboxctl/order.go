package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/pginbox/inbox"
)

func parkedCommand() *command {
	return &command{
		name: "parked", maxArgs: 0,
		summary: "ordering keys held back by a dead row",
		help: `
Parked lists the ordering keys that a dead row holds back: for each (handler
key, ordering key), the dead row (its event id and type), when it died, and
how many of the key's rows wait behind it; the keys with the most rows
waiting first. A parked key's rows wait until its dead row is replayed
('inboxctl replay EVENT_ID --handler-key KEY', which keeps the order) or
skipped ('inboxctl skip HANDLER_KEY ORDERING_KEY'). A handler registered with
inbox.HandlerMovesOnPastDead never parks its keys.`,
		json: `{"parked": [{"handler_key", "ordering_key", "event_id", "event_type",
 "dead_since", "waiting"}]}`,
		examples: []string{
			"inboxctl parked",
			"inboxctl parked --limit 1000 --json | jq -r '.parked[] | select(.waiting > 10) | .ordering_key'",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			limit := fs.Int("limit", inbox.DefaultListLimit, fmt.Sprintf("keys to list, at most %d", inbox.MaxListLimit))
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				if *limit <= 0 {
					return usagef("--limit must be at least 1")
				}
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				keys, err := admin.ParkedKeys(ctx, *limit)
				if err != nil {
					return err
				}
				if c.json {
					return writeJSON(c.stdout, struct {
						Parked []inbox.ParkedKey `json:"parked"`
					}{orEmpty(keys)})
				}
				return printParked(c, keys, *limit)
			}
		},
	}
}

func printParked(c *call, keys []inbox.ParkedKey, limit int) error {
	if len(keys) == 0 {
		fmt.Fprintln(c.stdout, "no parked keys")
		return nil
	}
	now := time.Now()
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "HANDLER\tORDERING KEY\tWAITING\tDEAD SINCE\tDEAD EVENT ID\tEVENT TYPE")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", oneLine(k.HandlerKey, 40), oneLine(k.OrderingKey, 60), k.Waiting,
			ago(k.DeadSince, now), k.EventID, oneLine(k.EventType, 40))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(keys) == limit {
		fmt.Fprintf(c.stdout, "\nthe first %s; --limit lists more\n", plural(int64(limit), "parked key"))
	}
	fmt.Fprintln(c.stdout, "\nreplay the dead row: inboxctl replay DEAD_EVENT_ID --handler-key HANDLER\n"+
		"or move the key past it: inboxctl skip HANDLER ORDERING_KEY")
	return nil
}

// skipResult is the JSON of skip.
type skipResult struct {
	Action      string `json:"action"`
	DryRun      bool   `json:"dry_run"`
	HandlerKey  string `json:"handler_key"`
	OrderingKey string `json:"ordering_key"`
	Matched     int64  `json:"matched"`
	Changed     int64  `json:"changed"`
}

func skipCommand() *command {
	return &command{
		name: "skip", args: "HANDLER_KEY ORDERING_KEY", minArgs: 2, maxArgs: 2,
		summary: "move a parked ordering key past its dead rows",
		help: `
Skip moves the ordering key ORDERING_KEY of handler HANDLER_KEY past its dead
rows (see 'inboxctl parked'): they stay dead, they leave the key's order, and
the key's next row becomes due, so the key's later events run without the
skipped ones. The skipped rows can still be replayed, on their own, without
waiting for the key. The history of each skipped row records the actor and
the reason. It exits 1 when the key has no dead row.`,
		json: `{"action": "skip", "dry_run": false, "handler_key": "apply", "ordering_key": "acct-42",
 "matched": 1,   (dead rows of the key when counted)
 "changed": 1}   (dead rows skipped; 0 in a dry run)`,
		examples: []string{
			"inboxctl parked",
			"inboxctl skip apply_payment acct-42 --reason 'refund issued by hand' --dry-run",
			"inboxctl skip apply_payment acct-42 --reason 'refund issued by hand' --yes --json",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var g guard
			reason := fs.String("reason", "", "why, for the audit trail")
			g.register(fs)
			c.actorFlag(fs)
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				return c.skip(ctx, c.args[0], c.args[1], *reason, g)
			}
		},
	}
}

func (c *call) skip(ctx context.Context, handlerKey, orderingKey, reason string, g guard) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	what := fmt.Sprintf("ordering key %q of handler %q", orderingKey, handlerKey)
	dry, err := admin.SkipParked(ctx, handlerKey, orderingKey, inbox.ActionOptions{DryRun: true})
	if err != nil {
		return err
	}
	if dry.Changed == 0 {
		return fmt.Errorf("%w: %s has no dead row ('inboxctl parked' lists the parked keys)", inbox.ErrNotFound, what)
	}
	res := skipResult{Action: "skip", DryRun: g.dryRun, HandlerKey: handlerKey, OrderingKey: orderingKey, Matched: dry.Changed}
	rows := plural(dry.Changed, "dead row")
	if g.dryRun {
		return c.report(res, fmt.Sprintf("dry run: would skip %s of %s; nothing was changed", rows, what))
	}
	plan := fmt.Sprintf("skip %s of %s: they stay dead, and the key's later rows run without them", rows, what)
	if err := c.confirm(ctx, g, plan); err != nil {
		return err
	}
	r, err := admin.SkipParked(ctx, handlerKey, orderingKey, inbox.ActionOptions{Actor: c.who(), Reason: reason})
	if errors.Is(err, inbox.ErrNotFound) {
		return fmt.Errorf("%w: %s has no dead row any more (replayed or deleted meanwhile)", inbox.ErrNotFound, what)
	}
	if err != nil {
		return err
	}
	res.Changed = r.Changed
	return c.report(res, fmt.Sprintf("skipped %s of %s; the key's next row, if any, is due now", plural(r.Changed, "dead row"), what))
}
