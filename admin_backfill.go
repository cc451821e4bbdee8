package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// BackfillSpec says which events a handler added to an event type gets
// rows for ([Admin.Backfill]).
type BackfillSpec struct {
	// EventType and HandlerKey name the handler; its rows are created for
	// events of EventType stored (their first row created) at or after
	// Since. The zero Since takes every event kept.
	EventType  string
	HandlerKey string
	Since      time.Time
	// MaxAttempts is the attempt limit of the rows created: the handler's
	// [HandlerMaxAttempts], or 0 for [DefaultRetryAttempts].
	MaxAttempts int
	// After resumes an interrupted backfill: the Resume of its last
	// result or progress report. "" starts from the beginning.
	After string
}

// BackfillResult is what a backfill did, so far.
type BackfillResult struct {
	// Created counts the rows created (in a dry run: that would be).
	Created int64 `json:"created"`
	// Existing counts the events that had a row of the handler already.
	Existing int64 `json:"existing"`
	// PayloadErased counts the events whose payload retention erased from
	// every row ([WithPayloadRetention]): no row can be created for them.
	PayloadErased int64 `json:"payload_erased"`
	// Resume continues the backfill after the events counted here: pass it
	// as BackfillSpec.After. It is "" once the backfill finished.
	Resume string `json:"resume"`
}

// Backfill creates rows of a handler added to an event type for the events
// of that type stored before it was registered, as if they had been
// stored with it: each row is copied from one of the event's rows that
// still holds the payload (payload, event date, trace context and place in
// its ordering key's order), and runs like a new row. It walks the events
// in batches of opts.BatchSize (each its own transaction), calling
// progress (when not nil) after each; a row that exists is never
// duplicated, so running it again, or resuming it from a Resume token,
// is safe; on an error, the result counts the batches done before it, and
// its Resume continues after them. opts.DryRun counts without creating;
// opts.Actor and opts.Reason are not used (rows record no history until
// they fail). Events whose payload
// retention erased from every row get no row: they are counted in
// PayloadErased, and stay unprocessed by this handler.
//
// Register the handler on the workers first, paused ([Admin.Pause]) if its
// events carry ordering keys: rows stored for it meanwhile would otherwise
// run before the backfilled rows of the same key, which come earlier in
// the key's order. Resume it once the backfill is done.
func (a *Admin) Backfill(ctx context.Context, spec BackfillSpec, opts ActionOptions, progress func(BackfillResult)) (BackfillResult, error) {
	res := BackfillResult{Resume: spec.After}
	after, err := spec.check(&opts)
	if err != nil {
		return res, err
	}
	for {
		batch, err := a.backfillBatch(ctx, spec, after, opts)
		if err != nil { // the batch rolled back: res is what came before
			return res, fmt.Errorf("inbox: backfill: %w", err)
		}
		if batch.Resume == "" {
			res.Resume = ""
			return res, nil
		}
		res.Created += batch.Created
		res.Existing += batch.Existing
		res.PayloadErased += batch.PayloadErased
		res.Resume, after = batch.Resume, uuid.MustParse(batch.Resume)
		if opts.Progress != nil {
			opts.Progress(res.Created)
		}
		if progress != nil {
			progress(res)
		}
		if batch.Created > 0 && !opts.DryRun {
			a.wake(ctx)
		}
	}
}

// check validates spec and opts, defaulting their zero values, and
// returns the event id to start after.
func (spec *BackfillSpec) check(opts *ActionOptions) (uuid.UUID, error) {
	for _, n := range [][2]string{{"event type", spec.EventType}, {"handler key", spec.HandlerKey}} {
		if err := validateName(n[0], n[1]); err != nil {
			return uuid.Nil, fmt.Errorf("%w: %w", ErrInvalidFilter, err)
		}
	}
	if spec.MaxAttempts < 0 {
		return uuid.Nil, fmt.Errorf("%w: max attempts %d is negative", ErrInvalidFilter, spec.MaxAttempts)
	}
	if spec.MaxAttempts == 0 {
		spec.MaxAttempts = DefaultRetryAttempts
	}
	spec.MaxAttempts = min(spec.MaxAttempts, MaxAttempts)
	if opts.BatchSize < 0 || opts.BatchSize > MaxListLimit {
		return uuid.Nil, fmt.Errorf("%w: batch size %d is outside 0 to %d", ErrInvalidFilter, opts.BatchSize, MaxListLimit)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = DefaultActionBatch
	}
	if spec.After == "" {
		return uuid.Nil, nil
	}
	after, err := uuid.Parse(spec.After)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: resume token %q is not one a backfill returned: %w", ErrInvalidFilter, spec.After, err)
	}
	return after, nil
}

// backfillBatch takes the next batch of events after after: it counts
// them, and stores rows for those with a payload and no row of the
// handler, under the locks of their ordering keys, making the first row of
// each key due. Its Resume is the last event taken, "" when there was none.
func (a *Admin) backfillBatch(ctx context.Context, spec BackfillSpec, after uuid.UUID, opts ActionOptions) (BackfillResult, error) {
	var res BackfillResult
	var todo []pgtype.UUID
	var orders []string
	seen := map[string]bool{}
	rows, err := a.db.query(ctx, backfillPickSQL, spec.EventType, spec.Since, pgUUID(after), spec.HandlerKey, opts.BatchSize)
	if err != nil {
		return res, err
	}
	var id pgtype.UUID
	var kept, exists bool
	var order *string
	_, err = pgx.ForEachRow(rows, []any{&id, &kept, &exists, &order}, func() error {
		res.Resume = uuid.UUID(id.Bytes).String()
		switch {
		case exists:
			res.Existing++
		case !kept:
			res.PayloadErased++
		default:
			todo = append(todo, id)
			if order != nil && !seen[*order] {
				seen[*order] = true
				orders = append(orders, *order)
			}
		}
		return nil
	})
	if err != nil || len(todo) == 0 {
		return res, err
	}
	if opts.DryRun {
		res.Created = int64(len(todo))
		return res, nil
	}
	var first promotions // of the keys of the rows created
	for _, o := range orders {
		first.key(spec.HandlerKey, o, false, fromStart)
	}
	lock, promote := first.stmts(false) // Backfill wakes the workers once the batch committed
	err = pgx.BeginFunc(ctx, a.db.pool, func(tx pgx.Tx) error {
		if err := execAll(ctx, tx, a.db, lock); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, backfillSQL, a.db.args([]any{todo, spec.HandlerKey, spec.MaxAttempts, spec.EventType})...)
		if err != nil {
			return err
		}
		res.Created = tag.RowsAffected()
		return execAll(ctx, tx, a.db, promote)
	})
	return res, err
}
