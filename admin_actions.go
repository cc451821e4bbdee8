package inbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultActionBatch is how many rows one statement of a bulk action
// changes when [ActionOptions].BatchSize is 0.
const DefaultActionBatch = 1000

// ActionOptions are the options of a bulk action ([Admin.Replay],
// [Admin.Discard], [Admin.Delete]).
type ActionOptions struct {
	// Actor and Reason say who acts and why; Replay records them in each
	// row's history, Discard in each row's error.
	Actor  string
	Reason string
	// BatchSize is how many rows each statement (and transaction) changes:
	// 0 means [DefaultActionBatch].
	BatchSize int
	// Progress, when set, is called after each batch with the rows changed
	// so far.
	Progress func(done int64)
	// DryRun changes nothing: the action checks its arguments and returns
	// in Changed how many rows it would change now.
	DryRun bool
}

// ActionResult is what a bulk action did.
type ActionResult struct {
	// Changed counts the rows replayed, discarded or deleted.
	Changed int64 `json:"changed"`
	// PayloadErased counts the rows Replay left alone because retention
	// erased their payload.
	PayloadErased int64 `json:"payload_erased,omitempty"`
}

// Replay re-drives the rows matching f: each becomes due now, with its
// attempts reset, and its history records opts.Actor and opts.Reason. f
// selects dead and failed rows unless its Statuses say otherwise (done
// rows may be replayed too; pending rows and rows in progress never are).
// Rows change in batches, each in its own transaction; rows that change
// after Replay started are left alone, so a row that fails again while
// Replay runs is not replayed twice.
//
// A row whose payload retention erased cannot run again: it is left as it
// is, counted in the result's PayloadErased, and the error wraps
// [ErrPayloadErased]. The other rows are replayed all the same.
func (a *Admin) Replay(ctx context.Context, f Filter, opts ActionOptions) (ActionResult, error) {
	if len(f.Statuses) == 0 {
		f.Statuses = []Status{Dead, Failed}
	}
	for _, s := range f.Statuses {
		if s != Dead && s != Failed && s != Done {
			return ActionResult{}, fmt.Errorf("%w: replay takes dead, failed or done rows, not %s ones", ErrInvalidFilter, statusWord(s))
		}
	}
	if err := checkAction(f, opts); err != nil {
		return ActionResult{}, err
	}
	var res ActionResult
	erased := f
	var args []any
	if err := a.db.queryRow(ctx, fmt.Sprintf(countSQLFormat, erased.where(&args)+" AND payload IS NULL"), args...).Scan(&res.PayloadErased); err != nil {
		return res, fmt.Errorf("inbox: replay: %w", err)
	}
	n, err := a.bulk(ctx, f, opts, replayBatchSQLFormat, " AND payload IS NOT NULL", opts.Actor, opts.Reason)
	res.Changed = n
	if err != nil {
		return res, fmt.Errorf("inbox: replay: %w", err)
	}
	if opts.DryRun {
		return res, nil
	}
	if n > 0 {
		a.wake(ctx)
	}
	if res.PayloadErased > 0 {
		return res, fmt.Errorf("%w: %d matching rows were not replayed (%d were); their events must be stored again to run again",
			ErrPayloadErased, res.PayloadErased, res.Changed)
	}
	return res, nil
}

// Discard makes the rows matching f dead without running them again, with
// "discarded by <actor>: <reason>" as their error. f selects pending and
// failed rows unless its Statuses say otherwise (dead rows may be
// discarded too, to mark them handled: they then form one group in
// [Admin.DeadGroups]; a filter with a Fingerprint and no Statuses selects
// the dead rows of that group). Rows in progress are leased to a worker
// and left alone. No dead callback runs for a row discarded here; a dead
// row whose callback is still owed keeps it.
func (a *Admin) Discard(ctx context.Context, f Filter, opts ActionOptions) (ActionResult, error) {
	if len(f.Statuses) == 0 {
		f.Statuses = []Status{Null, Failed}
		if f.Fingerprint != "" {
			f.Statuses = []Status{Dead} // a dead group
		}
	}
	for _, s := range f.Statuses {
		if s == Progress || s == Done {
			return ActionResult{}, fmt.Errorf("%w: discard takes pending, failed or dead rows, not %s ones", ErrInvalidFilter, statusWord(s))
		}
	}
	if err := checkAction(f, opts); err != nil {
		return ActionResult{}, err
	}
	text := boundText("discarded by " + cmpOr(opts.Actor, "an operator") + ": " + cmpOr(opts.Reason, "no reason given"))
	n, err := a.bulk(ctx, f, opts, discardBatchSQLFormat, "", text)
	if err != nil {
		return ActionResult{Changed: n}, fmt.Errorf("inbox: discard: %w", err)
	}
	return ActionResult{Changed: n}, nil
}

// Delete deletes the rows matching f, with their history. Deleted rows no
// longer deduplicate: a redelivered event is stored and run again. f must
// not be zero (to delete every row that is not in progress, say so:
// Statuses with every status). Rows in progress are leased to a worker and
// left alone.
func (a *Admin) Delete(ctx context.Context, f Filter, opts ActionOptions) (ActionResult, error) {
	if f.IsZero() {
		return ActionResult{}, fmt.Errorf("%w: delete needs a filter; it never deletes every row by default", ErrInvalidFilter)
	}
	if err := checkAction(f, opts); err != nil {
		return ActionResult{}, err
	}
	n, err := a.bulk(ctx, f, opts, deleteBatchSQLFormat, "")
	if err != nil {
		return ActionResult{Changed: n}, fmt.Errorf("inbox: delete: %w", err)
	}
	if n > 0 && !opts.DryRun {
		// Rows of ordering keys may have been the first of their key.
		if _, err := promoteStranded(ctx, a.db, true); err != nil {
			return ActionResult{Changed: n}, fmt.Errorf("inbox: delete: make the next rows of ordering keys due: %w", err)
		}
	}
	return ActionResult{Changed: n}, nil
}

// statusWord names a status in messages: [Null] is "pending".
func statusWord(s Status) string {
	if s == Null {
		return "pending"
	}
	return string(s)
}

func checkAction(f Filter, opts ActionOptions) error {
	if err := f.validate(); err != nil {
		return err
	}
	if opts.BatchSize < 0 || opts.BatchSize > MaxListLimit {
		return fmt.Errorf("%w: batch size %d is outside 0 to %d", ErrInvalidFilter, opts.BatchSize, MaxListLimit)
	}
	for _, s := range []string{opts.Actor, opts.Reason} {
		if len(s) > MaxErrorLength {
			return fmt.Errorf("%w: actor or reason is %d bytes, the limit is %d", ErrInvalidFilter, len(s), MaxErrorLength)
		}
	}
	return nil
}

// bulk runs a bulk action (format: its batch statement, taking the pick
// and then params) in batches until no row that matches f and last
// changed before the action started is left; extra adds conditions. It
// returns the rows changed.
func (a *Admin) bulk(ctx context.Context, f Filter, opts ActionOptions, format, extra string, params ...any) (int64, error) {
	var start time.Time
	if err := a.db.queryRow(ctx, nowSQL).Scan(&start); err != nil {
		return 0, err
	}
	batch := opts.BatchSize
	if batch == 0 {
		batch = DefaultActionBatch
	}
	for i := range params {
		if s, ok := params[i].(string); ok {
			params[i] = sanitize(s)
		}
	}
	if opts.DryRun {
		var args []any
		var n int64
		sql := fmt.Sprintf(countSQLFormat, f.where(&args)+extra+" AND status <> 'progress'")
		err := a.db.queryRow(ctx, sql, args...).Scan(&n)
		return n, err
	}
	args := slices.Clone(params)
	where := f.where(&args) + extra + " AND updated_at <= " + param(&args, start)
	sql := fmt.Sprintf(format, fmt.Sprintf(pickSQLFormat, where, param(&args, batch)))
	var total int64
	retries := 0
	for {
		var n int64
		err := pgx.BeginFunc(ctx, a.db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, actorSQL, a.db.args([]any{sanitize(opts.Actor)})...); err != nil {
				return err
			}
			return tx.QueryRow(ctx, sql, a.db.args(args)...).Scan(&n)
		})
		if isRetryable(err) && retries < maxBulkRetries {
			retries++ // the batch rolled back: take it again
			continue
		}
		if err != nil {
			return total, err
		}
		retries = 0
		total += n
		if opts.Progress != nil && n > 0 {
			opts.Progress(total)
		}
		if n < int64(batch) {
			return total, nil
		}
	}
}

// maxBulkRetries is how many times in a row a bulk action takes a batch
// again after a deadlock or serialization failure.
const maxBulkRetries = 5

// isRetryable reports a deadlock or serialization failure: the
// transaction rolled back and may simply run again.
func isRetryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// wake tells idle workers that rows may be due; a failure only delays
// them until they poll.
func (a *Admin) wake(ctx context.Context) {
	_, _ = a.db.exec(ctx, wakeSQL)
}

func cmpOr(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}

// ReplayRow replays one row, as [Admin.Replay] does: it fails with an
// error wrapping [ErrNotFound] when the row is not stored or not dead,
// failed or done, and [ErrPayloadErased] when its payload was erased.
func (a *Admin) ReplayRow(ctx context.Context, eventID uuid.UUID, handlerKey string, opts ActionOptions) error {
	if eventID == uuid.Nil || handlerKey == "" {
		return fmt.Errorf("%w: replay of one row needs its event id and handler key", ErrInvalidFilter)
	}
	res, err := a.Replay(ctx, Filter{EventID: eventID, HandlerKey: handlerKey, Statuses: []Status{Dead, Failed, Done}}, opts)
	if err != nil {
		return err
	}
	if res.Changed == 0 {
		return fmt.Errorf("%w: no dead, failed or done row of event %s for handler %q", ErrNotFound, eventID, handlerKey)
	}
	return nil
}

// PurgeOptions are the windows of [Admin.Purge]; a zero field takes the
// default ([DefaultRetentionDays], [DefaultPayloadRetentionDays]).
type PurgeOptions struct {
	// RetentionDays: done and dead rows last changed longer ago are
	// deleted (their events are no longer deduplicated).
	RetentionDays int
	// PayloadRetentionDays: payloads of done rows last changed longer ago
	// are erased.
	PayloadRetentionDays int
}

// PurgeResult is what [Admin.Purge] did.
type PurgeResult struct {
	RowsDeleted    int64 `json:"rows_deleted"`
	PayloadsErased int64 `json:"payloads_erased"`
	HistoryDeleted int64 `json:"history_deleted"`
}

// Purge runs retention now, as the workers do once per erase interval:
// it deletes done and dead rows older than the retention window, erases
// the payloads of done rows older than the payload window, and deletes
// history entries older than the retention window. It walks the table in
// chunks of blocks; progress, when set, gets the rows deleted and payloads
// erased so far after each chunk.
func (a *Admin) Purge(ctx context.Context, opts PurgeOptions, progress func(PurgeResult)) (PurgeResult, error) {
	if opts.RetentionDays < 0 || opts.PayloadRetentionDays < 0 {
		return PurgeResult{}, fmt.Errorf("%w: retention windows must not be negative", ErrInvalidFilter)
	}
	days := cmpOrInt(opts.RetentionDays, DefaultRetentionDays)
	payloadDays := cmpOrInt(opts.PayloadRetentionDays, DefaultPayloadRetentionDays)
	var now time.Time
	if err := a.db.queryRow(ctx, nowSQL).Scan(&now); err != nil {
		return PurgeResult{}, fmt.Errorf("inbox: purge: %w", err)
	}
	var res PurgeResult
	deleted, erased, err := eraseFinished(ctx, a.db, now.AddDate(0, 0, -days), now.AddDate(0, 0, -payloadDays), func(del, er int64) error {
		if progress != nil {
			progress(PurgeResult{RowsDeleted: del, PayloadsErased: er})
		}
		return ctx.Err()
	})
	res.RowsDeleted, res.PayloadsErased = deleted, erased
	if err != nil {
		return res, fmt.Errorf("inbox: purge: %w", err)
	}
	if progress != nil {
		progress(res)
	}
	res.HistoryDeleted, err = pruneHistory(ctx, a.db, now.AddDate(0, 0, -days))
	if err != nil {
		return res, fmt.Errorf("inbox: purge: history: %w", err)
	}
	if _, err := promoteStranded(ctx, a.db, true); err != nil {
		return res, fmt.Errorf("inbox: purge: make the next rows of ordering keys due: %w", err)
	}
	return res, nil
}

// historyBatch is how many history entries one statement of retention
// deletes.
const historyBatch = 10000

// pruneHistory deletes history entries older than before, in batches.
func pruneHistory(ctx context.Context, d db, before time.Time) (int64, error) {
	var total int64
	for {
		tag, err := d.exec(ctx, historyRetentionSQL, before, historyBatch)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < historyBatch {
			return total, nil
		}
	}
}

func cmpOrInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// Pause is a paused (event type, handler key) target: workers in every
// process claim none of its rows until it is resumed; Set keeps storing
// them. An empty EventType or HandlerKey matches any.
type Pause struct {
	EventType  string    `json:"event_type,omitempty"`
	HandlerKey string    `json:"handler_key,omitempty"`
	PausedAt   time.Time `json:"paused_at"`
	Actor      string    `json:"actor,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

func (p Pause) covers(eventType, key string) bool {
	return (p.EventType == "" || p.EventType == eventType) && (p.HandlerKey == "" || p.HandlerKey == key)
}

// Pause pauses a handler key (of every event type, when eventType is ""),
// or every handler of an event type (handlerKey ""). Workers check pauses
// in every claim: from the next claim on, in every process, they take no
// row of the target; rows already claimed run to the end. Pausing again
// replaces the actor and reason.
func (a *Admin) Pause(ctx context.Context, eventType, handlerKey, actor, reason string) error {
	if eventType == "" && handlerKey == "" {
		return fmt.Errorf("%w: pause needs an event type, a handler key or both", ErrInvalidFilter)
	}
	if err := (Filter{EventType: eventType, HandlerKey: handlerKey}).validate(); err != nil {
		return err
	}
	if _, err := a.db.exec(ctx, pauseSQL, eventType, handlerKey, boundText(actor), boundText(reason)); err != nil {
		return fmt.Errorf("inbox: pause: %w", err)
	}
	return nil
}

// Resume lifts the pause with exactly this event type and handler key and
// wakes idle workers. It fails with an error wrapping [ErrNotFound] when
// there is no such pause.
func (a *Admin) Resume(ctx context.Context, eventType, handlerKey string) error {
	if err := (Filter{EventType: eventType, HandlerKey: handlerKey}).validate(); err != nil {
		return err
	}
	tag, err := a.db.exec(ctx, resumeSQL, eventType, handlerKey)
	if err != nil {
		return fmt.Errorf("inbox: resume: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: no pause of event type %q, handler key %q", ErrNotFound, eventType, handlerKey)
	}
	a.wake(ctx)
	return nil
}

// Pauses lists the pauses in force.
func (a *Admin) Pauses(ctx context.Context) ([]Pause, error) {
	var out []Pause
	var p Pause
	if err := a.each(ctx, []any{&p.EventType, &p.HandlerKey, &p.PausedAt, &p.Actor, &p.Reason}, func() {
		out = append(out, p)
	}, pausesSQL); err != nil {
		return nil, fmt.Errorf("inbox: pauses: %w", err)
	}
	return out, nil
}
