package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

// actionResult is the JSON of replay, discard and delete.
type actionResult struct {
	Action        string `json:"action"`
	DryRun        bool   `json:"dry_run"`
	Matched       int64  `json:"matched"`
	Changed       int64  `json:"changed"`
	PayloadErased int64  `json:"payload_erased"`
}

const actionJSON = `{"action": "replay"|"discard"|"delete", "dry_run": false,
 "matched": 5,          (rows that matched when counted, before acting)
 "changed": 5,          (rows changed; 0 in a dry run)
 "payload_erased": 0}   (replay: rows left alone, their payload erased)`

// bulkAction describes one of replay, discard and delete.
type bulkAction struct {
	name, past string // "replay", "replayed"
	// defaults are the statuses the action takes when --status is not
	// given, as the Admin method has them (shown in its description).
	defaults []inbox.Status
	do       func(ctx context.Context, a *inbox.Admin, f inbox.Filter, opts inbox.ActionOptions) (inbox.ActionResult, error)
	// warning is added to the confirmation question.
	warning string
}

// actionFlags are the flags replay, discard and delete share.
type actionFlags struct {
	filter    filterFlags
	guard     guard
	reason    string
	batchSize int
}

func (af *actionFlags) register(fs *flag.FlagSet, c *call) {
	af.filter.register(fs, true)
	fs.StringVar(&af.reason, "reason", "", "why, for the audit trail")
	fs.IntVar(&af.batchSize, "batch-size", inbox.DefaultActionBatch, "rows changed per statement and transaction")
	af.guard.register(fs)
	c.actorFlag(fs)
	c.connFlags(fs)
	c.jsonFlag(fs)
}

func replayCommand() *command {
	action := bulkAction{
		name: "replay", past: "replayed",
		defaults: []inbox.Status{inbox.Dead, inbox.Failed},
		do: func(ctx context.Context, a *inbox.Admin, f inbox.Filter, opts inbox.ActionOptions) (inbox.ActionResult, error) {
			return a.Replay(ctx, f, opts)
		},
	}
	return &command{
		name: "replay", args: "[EVENT_ID]", maxArgs: 1,
		summary: "run dead or failed rows again (one row, a group or a filter)",
		help: `
Replay makes the matching rows due now with their attempts reset; workers run
them again. The history of each row records the actor and the reason.

  replay EVENT_ID --handler-key KEY   one row (dead, failed or done); exit 1
                                      when there is no such row
  replay --fingerprint FP             one group of 'inboxctl dead groups'
  replay [EVENT_ID] FILTER FLAGS      the rows matching (dead and failed ones
                                      unless --status says otherwise; done
                                      rows may be replayed too)

A filter is required: to replay every dead and failed row say
--status dead,failed. Rows in progress and pending rows are never replayed.
A row whose payload retention erased cannot run again: it is left alone and
counted as payload_erased, and the command exits 1 after replaying the rest.`,
		json: actionJSON,
		examples: []string{
			"inboxctl replay 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21 --handler-key send_email",
			"inboxctl dead groups && inboxctl replay --fingerprint 3f2a9c0b1d4e5f60 --reason 'smtp fixed'",
			"inboxctl replay --event-type order_created --status dead --since 1d --dry-run",
			"inboxctl replay --handler-key send_email --error 'connection refused' --yes --json",
		},
		setup: filterSetup(func(ctx context.Context, c *call, f inbox.Filter, af actionFlags) error {
			// EVENT_ID --handler-key K and nothing else: one row.
			rest := f
			rest.EventID, rest.HandlerKey = uuid.Nil, ""
			if f.EventID != uuid.Nil && f.HandlerKey != "" && rest.IsZero() {
				return c.replayRow(ctx, f.EventID, f.HandlerKey, af)
			}
			return c.bulk(ctx, action, f, af)
		}),
	}
}

func discardCommand() *command {
	action := bulkAction{
		name: "discard", past: "discarded",
		defaults: []inbox.Status{inbox.Null, inbox.Failed},
		do: func(ctx context.Context, a *inbox.Admin, f inbox.Filter, opts inbox.ActionOptions) (inbox.ActionResult, error) {
			return a.Discard(ctx, f, opts)
		},
		warning: "discarded rows are never run again and get no dead callback",
	}
	return &command{
		name: "discard", args: "[EVENT_ID]", maxArgs: 1,
		summary: "make pending or failed rows dead without running them",
		help: `
Discard makes the matching rows dead without running them again, with
"discarded by ACTOR: REASON" as their error; no dead callback runs. It takes
pending and failed rows unless --status says otherwise (or --fingerprint is
given: a group's rows are dead). Dead rows may be discarded to mark them
handled: they then form one group in 'inboxctl dead groups'. Rows in progress
are left alone. A filter is required.`,
		json: actionJSON,
		examples: []string{
			"inboxctl discard --event-type legacy_event --reason 'consumer retired' --dry-run",
			"inboxctl discard 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21 --handler-key export --yes",
			"inboxctl discard --fingerprint 3f2a9c0b1d4e5f60 --reason 'known bad payloads'",
		},
		setup: filterSetup(func(ctx context.Context, c *call, f inbox.Filter, af actionFlags) error {
			if f.Fingerprint != "" && len(f.Statuses) == 0 {
				// A group's rows are dead: discarding the group marks them
				// handled. (Discard's own default, pending and failed rows,
				// would match none of them.)
				f.Statuses = []inbox.Status{inbox.Dead}
			}
			return c.bulk(ctx, action, f, af)
		}),
	}
}

func deleteCommand() *command {
	action := bulkAction{
		name: "delete", past: "deleted",
		defaults: []inbox.Status{inbox.Null, inbox.Failed, inbox.Done, inbox.Dead},
		do: func(ctx context.Context, a *inbox.Admin, f inbox.Filter, opts inbox.ActionOptions) (inbox.ActionResult, error) {
			return a.Delete(ctx, f, opts)
		},
		warning: "deleted rows and their history are gone, and their events are no longer deduplicated: a redelivery is stored and run again",
	}
	return &command{
		name: "delete", args: "[EVENT_ID]", maxArgs: 1,
		summary: "delete rows matching an explicit filter",
		help: `
Delete deletes the matching rows with their history, whatever their status
(but rows in progress, which are leased to a worker and left alone). Deleted
rows no longer deduplicate: a redelivered event is stored and run again. A
filter is required; delete never deletes every row by default (to empty the
table say --status pending,failed,done,dead).`,
		json: actionJSON,
		examples: []string{
			"inboxctl delete --event-type test_event --dry-run",
			"inboxctl delete 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21 --yes",
			"inboxctl delete --status dead --until 30d --reason cleanup",
		},
		setup: filterSetup(func(ctx context.Context, c *call, f inbox.Filter, af actionFlags) error {
			// Rows in progress are never deleted: leave them out, so that
			// the count is what Delete will consider.
			if len(f.Statuses) > 0 {
				var keep []inbox.Status
				for _, s := range f.Statuses {
					if s != inbox.Progress {
						keep = append(keep, s)
					}
				}
				if len(keep) == 0 {
					return usagef("rows in progress are leased to a worker and never deleted")
				}
				f.Statuses = keep
			}
			return c.bulk(ctx, action, f, af)
		}),
	}
}

// filterSetup is the setup of a command acting on [EVENT_ID] and the
// filter flags: run gets the filter they give (with the EVENT_ID, when
// given) and the flags.
func filterSetup(run func(ctx context.Context, c *call, f inbox.Filter, af actionFlags) error) func(*flag.FlagSet, *call) func(context.Context) error {
	return func(fs *flag.FlagSet, c *call) func(context.Context) error {
		var af actionFlags
		af.register(fs, c)
		return func(ctx context.Context) error {
			f := af.filter.filter()
			if len(c.args) == 1 {
				id, err := eventIDArg(c.args[0])
				if err != nil {
					return err
				}
				f.EventID = id
			}
			return run(ctx, c, f, af)
		}
	}
}

// bulk runs a bulk action: count, dry run or confirmation, action.
func (c *call) bulk(ctx context.Context, action bulkAction, f inbox.Filter, af actionFlags) error {
	if f.IsZero() {
		return usagef("%s needs a filter (EVENT_ID, --status, --event-type, --handler-key, --since, --until, --error or --fingerprint); it never acts on every row by default",
			action.name)
	}
	if len(f.Statuses) == 0 {
		// The Admin method's defaults, made explicit for the description.
		f.Statuses = action.defaults
	}
	if af.batchSize <= 0 {
		return usagef("--batch-size must be at least 1")
	}
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	// The action's own dry run checks the filter as the action will, and
	// counts what it would change.
	dry, err := action.do(ctx, admin, f, inbox.ActionOptions{DryRun: true})
	if err != nil {
		return err
	}
	n := dry.Changed
	res := actionResult{Action: action.name, DryRun: af.guard.dryRun, Matched: n}
	what := describe(f)
	switch {
	case n == 0 && dry.PayloadErased > 0:
		res.PayloadErased = dry.PayloadErased
		if err := c.report(res, fmt.Sprintf("%s match (%s) but cannot be replayed: retention erased their payload",
			plural(dry.PayloadErased, "row"), what)); err != nil {
			return err
		}
		return fmt.Errorf("%w: %s not replayed", inbox.ErrPayloadErased, plural(dry.PayloadErased, "row"))
	case n == 0:
		return c.report(res, fmt.Sprintf("no rows match (%s); nothing to %s", what, action.name))
	case af.guard.dryRun:
		return c.report(res, fmt.Sprintf("dry run: would %s %s (%s); nothing was changed", action.name, plural(n, "row"), what))
	}
	plan := fmt.Sprintf("%s %s (%s)", action.name, plural(n, "row"), what)
	if action.warning != "" {
		plan += "; " + action.warning
	}
	if err := c.confirm(ctx, af.guard, plan); err != nil {
		return err
	}
	update, end := c.progress(action.past, n)
	r, err := action.do(ctx, admin, f, inbox.ActionOptions{
		Actor: c.who(), Reason: af.reason, BatchSize: af.batchSize, Progress: update,
	})
	end()
	res.Changed, res.PayloadErased = r.Changed, r.PayloadErased
	msg := fmt.Sprintf("%s %s", action.past, plural(r.Changed, "row"))
	if r.PayloadErased > 0 {
		msg += fmt.Sprintf("; %s not replayed: retention erased their payload", plural(r.PayloadErased, "row"))
	}
	if rerr := c.report(res, msg); rerr != nil && err == nil {
		err = rerr
	}
	if err != nil && !errors.Is(err, inbox.ErrPayloadErased) {
		return fmt.Errorf("stopped after %s %s of %d: %w", action.past, plural(r.Changed, "row"), n, err)
	}
	return err
}

// replayRow replays one row, by event id and handler key.
func (c *call) replayRow(ctx context.Context, id uuid.UUID, key string, af actionFlags) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	f := inbox.Filter{EventID: id, HandlerKey: key, Statuses: []inbox.Status{inbox.Dead, inbox.Failed, inbox.Done}}
	n, err := admin.Count(ctx, f)
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: no dead, failed or done row of event %s for handler %q", inbox.ErrNotFound, id, key)
	}
	res := actionResult{Action: "replay", DryRun: af.guard.dryRun, Matched: n}
	if af.guard.dryRun {
		return c.report(res, fmt.Sprintf("dry run: would replay the row of event %s for handler %q; nothing was changed", id, key))
	}
	if err := c.confirm(ctx, af.guard, fmt.Sprintf("replay the row of event %s for handler %q", id, key)); err != nil {
		return err
	}
	err = admin.ReplayRow(ctx, id, key, inbox.ActionOptions{Actor: c.who(), Reason: af.reason})
	switch {
	case errors.Is(err, inbox.ErrPayloadErased):
		res.PayloadErased = 1
	case err == nil:
		res.Changed = 1
	default:
		return err
	}
	if rerr := c.report(res, fmt.Sprintf("replayed %s", plural(res.Changed, "row"))); rerr != nil {
		return rerr
	}
	return err
}

// report prints an action's result: its JSON, or msg.
func (c *call) report(v any, msg string) error {
	if c.json {
		return writeJSON(c.stdout, v)
	}
	_, err := fmt.Fprintln(c.stdout, msg)
	return err
}

// purgeResult is the JSON of purge.
type purgeResult struct {
	Action          string `json:"action"`
	DryRun          bool   `json:"dry_run"`
	MatchedRows     int64  `json:"matched_rows"`
	MatchedPayloads int64  `json:"matched_payloads"`
	RowsDeleted     int64  `json:"rows_deleted"`
	PayloadsErased  int64  `json:"payloads_erased"`
	HistoryDeleted  int64  `json:"history_deleted"`
}

func purgeCommand() *command {
	return &command{
		name: "purge", maxArgs: 0,
		summary: "run retention now: delete old finished rows, erase old payloads",
		help: `
Purge runs retention now, as the workers do on their own schedule: it deletes
done and dead rows last changed more than --retention-days ago (their events
are then no longer deduplicated), erases the payloads of done rows last
changed more than --payload-retention-days ago (the rows stay, for
deduplication), and deletes history entries older than --retention-days. It
walks the table in chunks; Ctrl-C stops it between chunks.

It first counts the rows to delete and the done rows in the payload window
(matched_payloads counts those whose payload is already erased too).`,
		json: `{"action": "purge", "dry_run": false, "matched_rows": 3, "matched_payloads": 10,
 "rows_deleted": 3, "payloads_erased": 10, "history_deleted": 0}`,
		examples: []string{
			"inboxctl purge --dry-run",
			"inboxctl purge --retention-days 30 --payload-retention-days 3",
			"inboxctl purge --yes --json",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var g guard
			days := fs.Int("retention-days", inbox.DefaultRetentionDays, "delete done and dead rows last changed more than this many `days` ago")
			payloadDays := fs.Int("payload-retention-days", inbox.DefaultPayloadRetentionDays, "erase payloads of done rows last changed more than this many `days` ago")
			g.register(fs)
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				if *days < 1 || *payloadDays < 1 {
					return usagef("--retention-days and --payload-retention-days must be at least 1")
				}
				return c.purge(ctx, g, *days, *payloadDays)
			}
		},
	}
}

func (c *call) purge(ctx context.Context, g guard, days, payloadDays int) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	var now time.Time // the server's clock, which retention uses
	if err := c.pool.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		return fmt.Errorf("read the server's time: %w", err)
	}
	rowsBefore, payloadsBefore := now.AddDate(0, 0, -days), now.AddDate(0, 0, -payloadDays)
	res := purgeResult{Action: "purge", DryRun: g.dryRun}
	res.MatchedRows, err = admin.Count(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Done, inbox.Dead}, Until: rowsBefore})
	if err != nil {
		return err
	}
	if payloadsBefore.After(rowsBefore) {
		res.MatchedPayloads, err = admin.Count(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Done}, Since: rowsBefore, Until: payloadsBefore})
		if err != nil {
			return err
		}
	}
	plan := fmt.Sprintf("purge: delete %s last changed before %s (%d days ago), erase the payloads of up to %s last changed before %s (%d days ago)",
		plural(res.MatchedRows, "done or dead row"), timestamp(rowsBefore), days,
		plural(res.MatchedPayloads, "done row"), timestamp(payloadsBefore), payloadDays)
	switch {
	case g.dryRun:
		return c.report(res, "dry run: would "+plan[len("purge: "):]+"; nothing was changed")
	case res.MatchedRows == 0 && res.MatchedPayloads == 0:
		return c.report(res, "nothing to purge")
	}
	if err := c.confirm(ctx, g, plan); err != nil {
		return err
	}
	var progress func(inbox.PurgeResult)
	line := c.progressLine()
	if c.showProgress {
		progress = func(p inbox.PurgeResult) {
			line("purge: %d rows deleted, %d payloads erased", p.RowsDeleted, p.PayloadsErased)
		}
	}
	r, err := admin.Purge(ctx, inbox.PurgeOptions{RetentionDays: days, PayloadRetentionDays: payloadDays}, progress)
	line("")
	res.RowsDeleted, res.PayloadsErased, res.HistoryDeleted = r.RowsDeleted, r.PayloadsErased, r.HistoryDeleted
	if rerr := c.report(res, fmt.Sprintf("deleted %s, erased %s, deleted %s",
		plural(r.RowsDeleted, "row"), plural(r.PayloadsErased, "payload"), plural(r.HistoryDeleted, "history entry"))); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// pauseFlags are the flags of pause and resume.
type pauseFlags struct {
	eventType, handlerKey string
}

func (p *pauseFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&p.eventType, "event-type", "", "the event `type` (empty: every event type)")
	fs.StringVar(&p.handlerKey, "handler-key", "", "the handler `key` (empty: every handler of the event type)")
}

func (p *pauseFlags) target() string {
	switch {
	case p.eventType == "":
		return fmt.Sprintf("handler key %q of every event type", p.handlerKey)
	case p.handlerKey == "":
		return fmt.Sprintf("every handler of event type %q", p.eventType)
	default:
		return fmt.Sprintf("handler key %q of event type %q", p.handlerKey, p.eventType)
	}
}

func pauseCommand() *command {
	return &command{
		name: "pause", maxArgs: 0,
		summary: "stop workers from claiming a handler's or event type's rows",
		help: `
Pause stops workers in every process from claiming the rows of a handler key
(--handler-key, of every event type), of every handler of an event type
(--event-type), or of one pair (both). Rows already claimed run to the end;
Set keeps storing rows. Pausing again replaces the actor and reason.
'inboxctl stats' lists the pauses in force; 'inboxctl resume' with the same
flags lifts one.`,
		json: `{"pause": {"event_type", "handler_key", "paused_at", "actor", "reason"}}`,
		examples: []string{
			"inboxctl pause --handler-key send_email --reason 'smtp outage'",
			"inboxctl pause --event-type order_created",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var p pauseFlags
			p.register(fs)
			reason := fs.String("reason", "", "why, for the audit trail")
			c.actorFlag(fs)
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				if p.eventType == "" && p.handlerKey == "" {
					return usagef("pause needs --event-type, --handler-key or both")
				}
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				if err := admin.Pause(ctx, p.eventType, p.handlerKey, c.who(), *reason); err != nil {
					return err
				}
				pauses, err := admin.Pauses(ctx)
				if err != nil {
					return err
				}
				pause := inbox.Pause{EventType: p.eventType, HandlerKey: p.handlerKey, Actor: c.who(), Reason: *reason}
				for _, ps := range pauses {
					if ps.EventType == p.eventType && ps.HandlerKey == p.handlerKey {
						pause = ps
					}
				}
				return c.report(struct {
					Pause inbox.Pause `json:"pause"`
				}{pause}, "paused "+p.target())
			}
		},
	}
}

func resumeCommand() *command {
	return &command{
		name: "resume", maxArgs: 0,
		summary: "lift a pause",
		help: `
Resume lifts the pause with exactly this event type and handler key (as
'inboxctl stats' lists them) and wakes idle workers. It exits 1 when there is
no such pause.`,
		json: `{"resumed": {"event_type", "handler_key"}}`,
		examples: []string{
			"inboxctl resume --handler-key send_email",
			"inboxctl resume --event-type order_created",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var p pauseFlags
			p.register(fs)
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				if p.eventType == "" && p.handlerKey == "" {
					return usagef("resume needs --event-type, --handler-key or both, as the pause has them")
				}
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				if err := admin.Resume(ctx, p.eventType, p.handlerKey); err != nil {
					return err
				}
				type target struct {
					EventType  string `json:"event_type"`
					HandlerKey string `json:"handler_key"`
				}
				return c.report(struct {
					Resumed target `json:"resumed"`
				}{target{p.eventType, p.handlerKey}}, "resumed "+p.target())
			}
		},
	}
}
