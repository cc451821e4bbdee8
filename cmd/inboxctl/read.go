package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

func statsCommand() *command {
	return &command{
		name: "stats", maxArgs: 0,
		summary: "rows per status, lag and throughput of each handler; pauses",
		help: `
Stats prints, for each (event type, handler key) pair with rows, how many rows
are pending, in progress, failed (waiting to be retried), done and dead; the
lag (how long the oldest due row has waited); the rows that finished in the
last hour; and whether a pause covers the pair. Then the pauses in force.
Its cost does not grow with the finished rows kept.`,
		json: `{"handlers": [{"event_type", "handler_key", "pending", "in_progress",
 "failed", "done", "dead", "lag_ns", "paused",
 "per_minute": [{"minute", "done", "dead"}]}],   (last 60 minutes, oldest first)
 "pauses": [{"event_type", "handler_key", "paused_at", "actor", "reason"}]}`,
		examples: []string{
			"inboxctl stats",
			"inboxctl stats --json | jq '.handlers[] | select(.dead > 0)'",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				stats, err := admin.Stats(ctx)
				if err != nil {
					return err
				}
				pauses, err := admin.Pauses(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return writeJSON(c.stdout, struct {
						Handlers []inbox.HandlerStats `json:"handlers"`
						Pauses   []inbox.Pause        `json:"pauses"`
					}{orEmpty(stats), orEmpty(pauses)})
				}
				printStats(c, stats, pauses)
				return nil
			}
		},
	}
}

func printStats(c *call, stats []inbox.HandlerStats, pauses []inbox.Pause) {
	if len(stats) == 0 {
		fmt.Fprintln(c.stdout, "no rows stored")
	} else {
		tw := newTable(c.stdout)
		fmt.Fprintln(tw, "EVENT TYPE\tHANDLER\tPENDING\tIN PROGRESS\tFAILED\tDONE\tDEAD\tLAG\tDONE/1H\tDEAD/1H\tPAUSED")
		var total inbox.HandlerStats
		var totalDone, totalDead int64
		for _, h := range stats {
			done, dead := h.FinishedLastHour()
			paused := ""
			if h.Paused {
				paused = "paused"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t%s\n",
				oneLine(h.EventType, 40), oneLine(h.HandlerKey, 40), h.Pending, h.InProgress, h.Failed, h.Done, h.Dead,
				duration(h.Lag), done, dead, paused)
			total.Pending += h.Pending
			total.InProgress += h.InProgress
			total.Failed += h.Failed
			total.Done += h.Done
			total.Dead += h.Dead
			total.Lag = max(total.Lag, h.Lag)
			totalDone, totalDead = totalDone+done, totalDead+dead
		}
		fmt.Fprintf(tw, "TOTAL\t\t%d\t%d\t%d\t%d\t%d\t%s\t%d\t%d\t\n",
			total.Pending, total.InProgress, total.Failed, total.Done, total.Dead, duration(total.Lag), totalDone, totalDead)
		tw.Flush()
	}
	if len(pauses) > 0 {
		fmt.Fprintln(c.stdout, "\nPaused:")
		tw := newTable(c.stdout)
		fmt.Fprintln(tw, "EVENT TYPE\tHANDLER\tSINCE\tACTOR\tREASON")
		now := time.Now()
		for _, p := range pauses {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", anyIfEmpty(p.EventType), anyIfEmpty(p.HandlerKey),
				ago(p.PausedAt, now), oneLine(p.Actor, 40), oneLine(p.Reason, 60))
		}
		tw.Flush()
	}
}

func anyIfEmpty(s string) string {
	if s == "" {
		return "(any)"
	}
	return oneLine(s, 40)
}

func workersCommand() *command {
	return &command{
		name: "workers", maxArgs: 0,
		summary: "the live workers on the inbox table",
		help: `
Workers lists the workers whose heartbeat has not expired: their id, host,
process id, event types, how long they have run and when they last beat. No
worker means no process runs the inbox's handlers.`,
		json: `{"workers": [{"id", "hostname", "pid", "event_types", "started_at", "beat_at"}]}`,
		examples: []string{
			"inboxctl workers",
			"inboxctl workers --json | jq '.workers | length'",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				ws, err := admin.Workers(ctx)
				if err != nil {
					return err
				}
				if c.json {
					return writeJSON(c.stdout, struct {
						Workers []inbox.Worker `json:"workers"`
					}{orEmpty(ws)})
				}
				if len(ws) == 0 {
					fmt.Fprintln(c.stdout, "no live workers")
					return nil
				}
				now := time.Now()
				tw := newTable(c.stdout)
				fmt.Fprintln(tw, "ID\tHOST\tPID\tEVENT TYPES\tUP\tLAST BEAT")
				for _, w := range ws {
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", w.ID, oneLine(w.Hostname, 40), w.PID,
						oneLine(strings.Join(w.EventTypes, ","), 60), duration(now.Sub(w.StartedAt)), ago(w.BeatAt, now))
				}
				return tw.Flush()
			}
		},
	}
}

// page is the JSON of list and dead.
type page struct {
	Rows []row  `json:"rows"`
	Next string `json:"next"`
}

const listJSON = `{"rows": [{"event_id", "event_type", "handler_key",
 "status": "null"|"progress"|"failed"|"done"|"dead",   ("null" is pending)
 "attempts", "max_attempts", "last_error", "error_type", "payload_erased",
 "event_date", "created_at", "updated_at", "next_attempt_at",
 "ordering_key", "waiting"}],   (waiting: behind earlier rows of its key)
 "next": "TOKEN"}   ("" after the last page)`

func listCommand() *command {
	return &command{
		name: "list", maxArgs: 0,
		summary: "list rows matching a filter, a page at a time",
		help: `
List prints the rows matching the filter, the most recently changed first, a
page at a time. Every filter flag given must match. When more rows match, it
prints the token of the next page: pass it with --after. Rows that change
while pages are read may move between pages.`,
		json: listJSON,
		examples: []string{
			"inboxctl list --status failed,dead --event-type order_created",
			"inboxctl list --handler-key send_email --since 2h --error timeout",
			"inboxctl list --limit 500 --after TOKEN",
			"inboxctl list --status dead --json | jq -r '.rows[].event_id'",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var ff filterFlags
			ff.register(fs, true)
			limit := fs.Int("limit", inbox.DefaultListLimit, fmt.Sprintf("rows per page, at most %d", inbox.MaxListLimit))
			after := fs.String("after", "", "the page `token` printed after the previous page")
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				return c.listRows(ctx, ff.filter(), *after, *limit, "list")
			}
		},
	}
}

// listRows prints a page of the rows matching f.
func (c *call) listRows(ctx context.Context, f inbox.Filter, after string, limit int, cmd string) error {
	if limit <= 0 {
		return usagef("--limit must be at least 1")
	}
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	p, err := admin.List(ctx, f, after, limit)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, page{Rows: rowsOf(p.Rows), Next: p.Next})
	}
	if len(p.Rows) == 0 {
		if after != "" {
			fmt.Fprintln(c.stdout, "no more rows")
		} else {
			fmt.Fprintln(c.stdout, "no rows match")
		}
		return nil
	}
	now := time.Now()
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "EVENT ID\tEVENT TYPE\tHANDLER\tSTATUS\tATTEMPTS\tUPDATED\tERROR")
	for _, r := range p.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", r.EventID, oneLine(r.EventType, 40), oneLine(r.HandlerKey, 40),
			statusName(r.Status), r.Attempts, r.MaxAttempts, ago(r.UpdatedAt, now), oneLine(r.LastError, 80))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p.Next != "" {
		fmt.Fprintf(c.stdout, "\nnext page token: %s\n(inboxctl %s ... --after %s)\n", p.Next, cmd, p.Next)
	}
	return nil
}

// event is the JSON of show.
type event struct {
	ID            uuid.UUID            `json:"event_id"`
	EventType     string               `json:"event_type"`
	EventDate     time.Time            `json:"event_date"`
	StoredAt      time.Time            `json:"stored_at"`
	Payload       []byte               `json:"payload"`
	PayloadErased bool                 `json:"payload_erased"`
	Rows          []row                `json:"rows"`
	History       []inbox.HistoryEntry `json:"history"`
}

// maxShownPayload bounds the payload show prints for people.
const maxShownPayload = 4096

func showCommand() *command {
	return &command{
		name: "show", args: "EVENT_ID", minArgs: 1, maxArgs: 1,
		summary: "one event: its payload, every handler's row and its history",
		help: `
Show prints one event: its type and dates, its payload (text, up to 4 KiB;
--json has it all), the row of each handler key with its status, attempts
and last error, and the history of failed attempts, replays and skips. A
row that waits for the earlier rows of its ordering key shows "waiting" as
its next attempt. It exits 1 when no row of the event is stored.`,
		json: `{"event_id", "event_type", "event_date", "stored_at",
 "payload": "BASE64" (null once erased), "payload_erased",
 "rows": [Row, as in 'inboxctl help list'],
 "history": [{"handler_key", "at",
 "kind": "failed"|"dead"|"replayed"|"skipped", "attempt", "actor", "text"}]}`,
		examples: []string{
			"inboxctl show 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21",
			"inboxctl show 0b5e2c1a-6f43-4d5e-9a43-2f9f0d1c7b21 --json | jq -r .payload | base64 -d",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				id, err := eventIDArg(c.args[0])
				if err != nil {
					return err
				}
				admin, err := c.open(ctx)
				if err != nil {
					return err
				}
				ev, err := admin.Show(ctx, id)
				if err != nil {
					return err
				}
				if c.json {
					return writeJSON(c.stdout, event{
						ID: ev.ID, EventType: ev.EventType, EventDate: ev.EventDate, StoredAt: ev.StoredAt,
						Payload: ev.Payload, PayloadErased: ev.PayloadErased,
						Rows: orEmpty(rowsOf(ev.Rows)), History: orEmpty(ev.History),
					})
				}
				printEvent(c, ev)
				return nil
			}
		},
	}
}

func printEvent(c *call, ev *inbox.Event) {
	now := time.Now()
	w := c.stdout
	fmt.Fprintf(w, "Event:      %s\n", ev.ID)
	fmt.Fprintf(w, "Type:       %s\n", oneLine(ev.EventType, 0))
	fmt.Fprintf(w, "Event date: %s\n", timestamp(ev.EventDate))
	fmt.Fprintf(w, "Stored:     %s (%s)\n", timestamp(ev.StoredAt), ago(ev.StoredAt, now))
	switch {
	case ev.PayloadErased:
		fmt.Fprintln(w, "Payload:    erased by retention")
	case !utf8.Valid(ev.Payload):
		fmt.Fprintf(w, "Payload:    %d bytes, not UTF-8 text (see --json)\n", len(ev.Payload))
	default:
		text, more := ev.Payload, ""
		if len(text) > maxShownPayload {
			text = text[:maxShownPayload]
			for !utf8.Valid(text) { // do not cut a character in two
				text = text[:len(text)-1]
			}
			more = fmt.Sprintf("\n            … %d bytes in all (see --json)", len(ev.Payload))
		}
		fmt.Fprintf(w, "Payload:    %s%s\n", strings.ReplaceAll(safeText(string(text)), "\n", "\n            "), more)
	}
	fmt.Fprintln(w)
	tw := newTable(w)
	fmt.Fprintln(tw, "HANDLER\tSTATUS\tATTEMPTS\tUPDATED\tNEXT ATTEMPT\tERROR TYPE\tLAST ERROR")
	for _, r := range ev.Rows {
		next := "-"
		switch {
		case r.Waiting:
			next = "waiting (key " + oneLine(r.OrderingKey, 40) + ")"
		case r.NextAttemptAt != nil:
			next = ago(*r.NextAttemptAt, now)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\n", oneLine(r.HandlerKey, 40), statusName(r.Status),
			r.Attempts, r.MaxAttempts, ago(r.UpdatedAt, now), next, oneLine(r.ErrorType, 40), oneLine(r.LastError, 120))
	}
	tw.Flush()
	if len(ev.History) == 0 {
		return
	}
	fmt.Fprintln(w, "\nHistory:")
	tw = newTable(w)
	fmt.Fprintln(tw, "AT\tHANDLER\tKIND\tATTEMPT\tACTOR\tTEXT")
	for _, h := range ev.History {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", timestamp(h.At), oneLine(h.HandlerKey, 40), h.Kind, h.Attempt,
			oneLine(h.Actor, 40), oneLine(h.Text, 120))
	}
	tw.Flush()
}

func deadCommand() *command {
	return &command{
		name: "dead", args: "[groups]", maxArgs: 1,
		summary: "list dead rows, or group them by failure ('dead groups')",
		help: `
dead lists the dead rows matching the filter, as 'inboxctl list --status dead'
does. dead groups groups them by failure instead: rows of one (event type,
handler key) pair whose errors have the same type and the same text once ids
and numbers are taken out, the largest group first. Pass a group's
fingerprint to list, replay or discard its rows with --fingerprint.`,
		json: `dead:        as 'inboxctl help list'
dead groups: {"groups": [{"fingerprint", "event_type", "handler_key",
 "error_type", "pattern", "count", "first_seen", "last_seen", "sample"}]}`,
		examples: []string{
			"inboxctl dead --event-type order_created",
			"inboxctl dead groups",
			"inboxctl dead groups --handler-key send_email --since 1d --json",
			"inboxctl replay --fingerprint 3f2a9c0b1d4e5f60 --reason 'smtp fixed'",
		},
		setup: func(fs *flag.FlagSet, c *call) func(context.Context) error {
			var ff filterFlags
			ff.register(fs, false)
			limit := fs.Int("limit", inbox.DefaultListLimit, "rows per page (groups with 'dead groups')")
			after := fs.String("after", "", "the page `token` printed after the previous page (not with groups)")
			c.connFlags(fs)
			c.jsonFlag(fs)
			return func(ctx context.Context) error {
				f := ff.filter()
				f.Statuses = []inbox.Status{inbox.Dead}
				if len(c.args) == 0 {
					return c.listRows(ctx, f, *after, *limit, "dead")
				}
				if c.args[0] != "groups" {
					return usagef("unknown dead command %q: use 'dead' or 'dead groups'", c.args[0])
				}
				if *after != "" {
					return usagef("--after pages dead rows, not groups")
				}
				if *limit <= 0 {
					return usagef("--limit must be at least 1")
				}
				return c.deadGroups(ctx, f, *limit)
			}
		},
	}
}

func (c *call) deadGroups(ctx context.Context, f inbox.Filter, limit int) error {
	admin, err := c.open(ctx)
	if err != nil {
		return err
	}
	groups, err := admin.DeadGroups(ctx, f, limit)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.stdout, struct {
			Groups []inbox.DeadGroup `json:"groups"`
		}{orEmpty(groups)})
	}
	if len(groups) == 0 {
		fmt.Fprintln(c.stdout, "no dead rows match")
		return nil
	}
	now := time.Now()
	tw := newTable(c.stdout)
	fmt.Fprintln(tw, "FINGERPRINT\tCOUNT\tEVENT TYPE\tHANDLER\tERROR TYPE\tLAST SEEN\tPATTERN")
	for _, g := range groups {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", g.Fingerprint, g.Count, oneLine(g.EventType, 40),
			oneLine(g.HandlerKey, 40), oneLine(g.ErrorType, 40), ago(g.LastSeen, now), oneLine(g.Pattern, 100))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, "\nreplay a group with: inboxctl replay --fingerprint FINGERPRINT")
	return nil
}
