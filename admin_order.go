package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// ParkedKey is an ordering key held back by a dead row
// ([Record.WithOrderingKey]): its later rows wait until the dead row is
// replayed ([Admin.Replay]) or skipped ([Admin.SkipParked]).
type ParkedKey struct {
	HandlerKey  string `json:"handler_key"`
	OrderingKey string `json:"ordering_key"`
	// EventID and EventType name the dead row that parks the key.
	EventID   uuid.UUID `json:"event_id"`
	EventType string    `json:"event_type"`
	// DeadSince is when that row died.
	DeadSince time.Time `json:"dead_since"`
	// Waiting counts the key's rows behind it.
	Waiting int64 `json:"waiting"`
}

// ParkedKeys lists up to limit (0: [DefaultListLimit]) parked keys, those
// with the most rows waiting first. It reads the dead rows that have an
// ordering key.
func (a *Admin) ParkedKeys(ctx context.Context, limit int) ([]ParkedKey, error) {
	if limit < 0 || limit > MaxListLimit {
		return nil, fmt.Errorf("%w: limit %d is outside 0 to %d", ErrInvalidFilter, limit, MaxListLimit)
	}
	if limit == 0 {
		limit = DefaultListLimit
	}
	var out []ParkedKey
	var k ParkedKey
	var id pgtype.UUID
	if err := a.each(ctx, []any{&k.HandlerKey, &k.OrderingKey, &id, &k.EventType, &k.DeadSince, &k.Waiting}, func() {
		k.EventID = uuid.UUID(id.Bytes)
		out = append(out, k)
	}, parkedSQL, limit); err != nil {
		return nil, fmt.Errorf("inbox: parked keys: %w", err)
	}
	return out, nil
}

// SkipParked moves the ordering key orderingKey of handler handlerKey past
// its dead rows: they stay dead (and can still be replayed, on their own,
// without waiting for the key), they leave the key's order, and the key's
// next row becomes due. The history of each skipped row records
// opts.Actor and opts.Reason. It fails with an error wrapping [ErrNotFound]
// when the key has no dead row.
func (a *Admin) SkipParked(ctx context.Context, handlerKey, orderingKey string, opts ActionOptions) (ActionResult, error) {
	if err := validateName("handler key", handlerKey); err != nil {
		return ActionResult{}, fmt.Errorf("%w: %w", ErrInvalidFilter, err)
	}
	if err := validateName("ordering key", orderingKey); err != nil {
		return ActionResult{}, fmt.Errorf("%w: %w", ErrInvalidFilter, err)
	}
	if opts.DryRun {
		var n int64
		if err := a.db.queryRow(ctx, keyDeadSQL, handlerKey, orderingKey).Scan(&n); err != nil {
			return ActionResult{}, fmt.Errorf("inbox: skip parked key: %w", err)
		}
		if n == 0 {
			return ActionResult{}, fmt.Errorf("%w: ordering key %q of handler %q has no dead row", ErrNotFound, orderingKey, handlerKey)
		}
		return ActionResult{Changed: n}, nil
	}
	var skip promotions
	skip.key(handlerKey, orderingKey, true, fromStart)
	lock, promote := skip.stmts(false)
	var skipped, promoted int64
	err := pgx.BeginFunc(ctx, a.db.pool, func(tx pgx.Tx) error {
		if err := execAll(ctx, tx, a.db, lock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, skipHistorySQL, a.db.args([]any{handlerKey, orderingKey, sanitize(opts.Actor), boundText(opts.Reason)})...); err != nil {
			return err
		}
		return tx.QueryRow(ctx, promote[0].sql, a.db.args(promote[0].args)...).Scan(&skipped, &promoted, nil)
	})
	if err != nil {
		return ActionResult{}, fmt.Errorf("inbox: skip parked key: %w", err)
	}
	if skipped == 0 {
		return ActionResult{}, fmt.Errorf("%w: ordering key %q of handler %q has no dead row", ErrNotFound, orderingKey, handlerKey)
	}
	if promoted > 0 {
		a.wake(ctx)
	}
	return ActionResult{Changed: skipped}, nil
}
