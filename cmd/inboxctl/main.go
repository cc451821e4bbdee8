// Command inboxctl operates an inbox table: it migrates the schema,
// reports statistics and workers, lists and shows rows, groups dead rows
// by failure, replays, discards and deletes rows, lists and skips parked
// ordering keys, backfills a handler added to an event type, runs
// retention, pauses and resumes handlers, and serves the web dashboard. It is a thin shell
// over [inbox.Admin] and needs only a connection to the database: no
// registry, no running workers.
//
// Install it with
//
//	go install github.com/pginbox/inbox/cmd/inboxctl@latest
//
// and run "inboxctl help" for the commands, "inboxctl help COMMAND" (or
// "inboxctl COMMAND -h") for one command's flags and examples.
//
// # Connection
//
// Every command that reads the database takes --database-url (default:
// the DATABASE_URL environment variable), a postgres:// URL or keyword/value
// string as pgx accepts it, and --schema: the search_path to work in
// (default: the server's, for the role). Commands other than migrate first
// check that the inbox's tables are there and migrated.
//
// # Exit codes
//
//	0  success (also: nothing matched, so nothing was done; a dry run)
//	1  failure: the database, an event, pause or parked key not found, a
//	   bulk action that stopped part way (interrupted, or rows whose
//	   payload was erased: replay, backfill), a confirmation answered no
//	2  usage: unknown command or flag, a bad flag value, a bad filter
//	   (inbox.ErrInvalidFilter), a missing database URL, a destructive
//	   command without a filter, or a destructive command run without a
//	   terminal and without --yes
//
// # Destructive commands
//
// replay, skip, discard, delete, purge and backfill first count the rows
// they would change. --dry-run prints that count and changes nothing. On
// a terminal they then ask for confirmation (y/N); when stdin is not a
// terminal they refuse (exit 2) unless --yes is given. While they run, a
// terminal's stderr shows their progress. Ctrl-C (SIGINT) or SIGTERM
// stops them between batches; rows already changed stay changed, and the
// command says how many (backfill also prints the command that continues
// where it stopped).
//
// # JSON output
//
// With --json a command writes one JSON document to stdout (indented) and
// nothing else; errors still go to stderr. Times are RFC 3339 strings,
// durations are integer nanoseconds (fields ending in _ns). Field names
// are stable; new fields may be added. The shapes:
//
//	migrate up|status
//	  {"schema": "public", "applied": 5, "latest": 5, "up_to_date": true,
//	   "problem": "..."}                      // problem: only when not usable
//	stats
//	  {"handlers": [HandlerStats], "pauses": [Pause]}
//	  HandlerStats: {"event_type", "handler_key", "pending", "in_progress",
//	   "failed", "done", "dead", "lag_ns", "paused",
//	   "per_minute": [{"minute", "done", "dead"}] (60 minutes, oldest first)}
//	  Pause: {"event_type", "handler_key", "paused_at", "actor", "reason"}
//	   (an empty event_type or handler_key, omitted, means any)
//	workers
//	  {"workers": [{"id", "hostname", "pid", "event_types", "started_at", "beat_at"}]}
//	list, dead
//	  {"rows": [Row], "next": "TOKEN"}        // next: "" after the last page
//	  Row: {"event_id", "event_type", "handler_key",
//	   "status": "null"|"progress"|"failed"|"done"|"dead" ("null" is pending),
//	   "attempts", "max_attempts", "last_error", "error_type",
//	   "payload_erased", "event_date", "created_at", "updated_at",
//	   "next_attempt_at" (null unless pending or failed, and while waiting),
//	   "ordering_key" ("" for none), "waiting" (pending behind earlier rows
//	   of its ordering key)}
//	show
//	  {"event_id", "event_type", "event_date", "stored_at",
//	   "payload" (base64, null when erased), "payload_erased",
//	   "rows": [Row], "history": [{"handler_key", "at",
//	   "kind": "failed"|"dead"|"replayed"|"skipped", "attempt", "actor",
//	   "text"}]}
//	dead groups
//	  {"groups": [{"fingerprint", "event_type", "handler_key", "error_type",
//	   "pattern", "count", "first_seen", "last_seen", "sample"}]}
//	replay, discard, delete
//	  {"action": "replay", "dry_run": false, "matched": 5, "changed": 5,
//	   "payload_erased": 0}
//	parked
//	  {"parked": [{"handler_key", "ordering_key", "event_id", "event_type",
//	   "dead_since", "waiting"}]}
//	skip
//	  {"action": "skip", "dry_run": false, "handler_key", "ordering_key",
//	   "matched": 1, "changed": 1}
//	backfill
//	  {"action": "backfill", "dry_run": false, "event_type", "handler_key",
//	   "matched": 480, "created": 480, "existing": 0, "payload_erased": 20,
//	   "resume": ""}                           // resume: a token when stopped part way
//	purge
//	  {"action": "purge", "dry_run": false, "matched_rows": 3,
//	   "matched_payloads": 10, "rows_deleted": 3, "payloads_erased": 10,
//	   "history_deleted": 0}
//	pause
//	  {"pause": Pause}
//	resume
//	  {"resumed": {"event_type", "handler_key"}}
//
// Lists ("handlers", "rows", "groups", "workers", "history", "pauses",
// "parked") are
// [] when empty, never null. A bulk action that fails part way still
// prints its result before exiting 1.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second Ctrl-C kills at once
	}()
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
