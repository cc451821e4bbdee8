package inbox

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// DefaultListLimit is how many rows [Admin.List] returns per page when
// asked for none; MaxListLimit is the most it returns.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10000
)

// Page is one page of [Admin.List].
type Page struct {
	Rows []RecordState `json:"rows"`
	// Next is the token of the next page, "" after the last one.
	Next string `json:"next,omitempty"`
}

// List returns the rows matching f, the most recently changed first, a
// page at a time: limit rows (0: [DefaultListLimit]) after the page token
// after ("" for the first page; a page's Next for the following one).
// Rows that change while pages are read may move between pages.
//
// Dead rows and due rows are read through indexes; a filter that matches
// only done rows reads the table.
func (a *Admin) List(ctx context.Context, f Filter, after string, limit int) (Page, error) {
	if err := f.validate(); err != nil {
		return Page{}, err
	}
	if limit < 0 || limit > MaxListLimit {
		return Page{}, fmt.Errorf("%w: limit %d is outside 0 to %d", ErrInvalidFilter, limit, MaxListLimit)
	}
	if limit == 0 {
		limit = DefaultListLimit
	}
	var args []any
	where := f.where(&args)
	if after != "" {
		c, err := parseCursor(after)
		if err != nil {
			return Page{}, err
		}
		where += " AND " + c.cond(&args)
	}
	sql := fmt.Sprintf(listSQLFormat, where, param(&args, limit+1))
	rows, err := a.db.query(ctx, sql, args...)
	if err != nil {
		return Page{}, fmt.Errorf("inbox: list: %w", err)
	}
	states, err := pgx.CollectRows(rows, scanState)
	if err != nil {
		return Page{}, fmt.Errorf("inbox: list: %w", err)
	}
	p := Page{Rows: states}
	if len(states) > limit {
		p.Rows = states[:limit]
		last := p.Rows[limit-1]
		p.Next = cursor{last.UpdatedAt, last.EventID, last.HandlerKey}.String()
	}
	return p, nil
}

// Count returns how many rows match f, in any status unless f says.
// For what a bulk action would change (with its default statuses, without
// rows in progress), run it with [ActionOptions].DryRun.
func (a *Admin) Count(ctx context.Context, f Filter) (int64, error) {
	if err := f.validate(); err != nil {
		return 0, err
	}
	var args []any
	var n int64
	if err := a.db.queryRow(ctx, fmt.Sprintf(countSQLFormat, f.where(&args)), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("inbox: count: %w", err)
	}
	return n, nil
}

// Event is one stored event with every handler's row, as [Admin.Show]
// returns it.
type Event struct {
	ID        uuid.UUID `json:"event_id"`
	EventType string    `json:"event_type"`
	EventDate time.Time `json:"event_date"`
	StoredAt  time.Time `json:"stored_at"`
	// Payload is the stored body, nil once retention erased it from every
	// row of the event (PayloadErased).
	Payload       []byte `json:"payload"`
	PayloadErased bool   `json:"payload_erased"`
	// Rows are the event's rows, one per handler key, ordered by key.
	Rows []RecordState `json:"rows"`
	// History lists the failed attempts (those that counted: not a
	// RetryAfter, nor a row handed back at Stop), deaths and operators'
	// replays of the event's rows, oldest first: the first 1,024
	// characters of each failure's text, each entry kept for the dedup
	// window (WithRetention). An attempt whose lease expired shows in the
	// row's LastError until its next attempt.
	History []HistoryEntry `json:"history"`
}

// HistoryEntry is one failed attempt of a row, or an operator's action on
// it.
type HistoryEntry struct {
	HandlerKey string    `json:"handler_key"`
	At         time.Time `json:"at"`
	// Kind is "failed" or "dead" (an attempt failed, or the row died,
	// with Text the error; a row an operator discarded is "dead" with the
	// Actor set), "replayed" or "skipped" (an operator replayed the row,
	// or moved its ordering key past it: [Admin.SkipParked]; Text the
	// operator's reason).
	Kind    string `json:"kind"`
	Attempt int    `json:"attempt"`
	// Actor is who replayed or discarded the row, as given in
	// [ActionOptions].
	Actor string `json:"actor,omitempty"`
	Text  string `json:"text"`
}

// Show returns one event with its rows, payload and history. It fails
// with an error wrapping [ErrNotFound] when no row of the event is stored.
func (a *Admin) Show(ctx context.Context, id uuid.UUID) (*Event, error) {
	rows, err := a.db.query(ctx, lookupSQL, pgUUID(id))
	if err != nil {
		return nil, fmt.Errorf("inbox: show %s: %w", id, err)
	}
	states, err := pgx.CollectRows(rows, scanState)
	if err != nil {
		return nil, fmt.Errorf("inbox: show %s: %w", id, err)
	}
	if len(states) == 0 {
		return nil, fmt.Errorf("%w: no row of event %s is stored (never stored, or deleted by retention)", ErrNotFound, id)
	}
	ev := &Event{ID: id, EventType: states[0].EventType, EventDate: states[0].EventDate, StoredAt: states[0].CreatedAt, Rows: states}
	for _, s := range states {
		ev.StoredAt = minTime(ev.StoredAt, s.CreatedAt)
	}
	err = a.db.queryRow(ctx, showPayloadSQL, pgUUID(id)).Scan(&ev.Payload)
	switch {
	case isNoRows(err):
		ev.PayloadErased = true
	case err != nil:
		return nil, fmt.Errorf("inbox: show %s: payload: %w", id, err)
	case ev.Payload == nil:
		ev.Payload = []byte{}
	}
	rows, err = a.db.query(ctx, historySQL, pgUUID(id))
	if err != nil {
		return nil, fmt.Errorf("inbox: show %s: history: %w", id, err)
	}
	ev.History, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (HistoryEntry, error) {
		var h HistoryEntry
		err := row.Scan(&h.HandlerKey, &h.At, &h.Kind, &h.Attempt, &h.Actor, &h.Text)
		return h, err
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: show %s: history: %w", id, err)
	}
	return ev, nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// DeadGroup is the dead rows of one (event type, handler key) pair that
// failed the same way.
type DeadGroup struct {
	// Fingerprint identifies the group; pass it in a [Filter] to list,
	// replay or discard the group's rows.
	Fingerprint string `json:"fingerprint"`
	EventType   string `json:"event_type"`
	HandlerKey  string `json:"handler_key"`
	// ErrorType names the Go type of the failures' root cause, or the
	// inbox's own failure (such as "inbox.ErrHandlerTimeout").
	ErrorType string `json:"error_type"`
	// Pattern is the failures' text with ids and numbers replaced by
	// <uuid> and <n>.
	Pattern   string    `json:"pattern"`
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Sample is the error of one of the group's rows.
	Sample string `json:"sample"`
}

// DefaultDeadGroups is how many groups [Admin.DeadGroups] returns when
// asked for none.
const DefaultDeadGroups = 100

// DeadGroups groups the dead rows matching f by failure: rows of a pair
// whose errors have the same type and the same text once ids and numbers
// are taken out ("timeout after 10s on order 123" and "timeout after 5s
// on order 456" are one group). It returns up to limit groups (0:
// [DefaultDeadGroups]), the largest first. It reads every dead row that
// matches f, through the index of dead rows.
func (a *Admin) DeadGroups(ctx context.Context, f Filter, limit int) ([]DeadGroup, error) {
	if err := f.validate(); err != nil {
		return nil, err
	}
	if limit < 0 {
		return nil, fmt.Errorf("%w: limit %d is negative", ErrInvalidFilter, limit)
	}
	if limit == 0 {
		limit = DefaultDeadGroups
	}
	args := []any{limit}
	f.Statuses = []Status{Dead}
	rows, err := a.db.query(ctx, fmt.Sprintf(deadGroupsSQLFormat, f.where(&args)), args...)
	if err != nil {
		return nil, fmt.Errorf("inbox: dead groups: %w", err)
	}
	groups, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeadGroup, error) {
		var g DeadGroup
		err := row.Scan(&g.Fingerprint, &g.EventType, &g.HandlerKey, &g.ErrorType, &g.Pattern, &g.Count,
			&g.FirstSeen, &g.LastSeen, &g.Sample)
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: dead groups: %w", err)
	}
	return groups, nil
}
