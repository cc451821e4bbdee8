package inbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Admin operates an inbox table from any process, with a pool alone: no
// registry, no running workers; its reads work on a read-only connection
// too. It reports statistics, lists and shows
// rows, groups dead rows by failure, replays, discards and deletes rows,
// runs retention, and pauses handlers. The inboxctl command and its web
// dashboard are thin shells over it.
//
// Like the rest of the package, Admin works on the inbox in the schema the
// pool's search_path resolves to. Its statements run in a mode that is
// safe behind a transaction pooler. An Admin is safe for concurrent use.
type Admin struct {
	db db
}

// NewAdmin returns an Admin over the inbox reached through pool. It fails
// with an error wrapping [ErrInvalidConfig] for a nil pool, and does not
// touch the database: call [Admin.CheckSchema] to check that the inbox
// exists.
func NewAdmin(pool *pgxpool.Pool) (*Admin, error) {
	if pool == nil {
		return nil, fmt.Errorf("%w: pool is nil; create one with pgxpool.New", ErrInvalidConfig)
	}
	return &Admin{db: newDB(pool, true)}, nil
}

// Admin returns an Admin over the Inbox's table, through its pool.
func (i *Inbox) Admin() *Admin {
	return &Admin{db: newDB(i.db.pool, true)}
}

// CheckSchema returns nil when the inbox's tables exist and are migrated
// to this release, else an error wrapping [ErrSchema] that says what to
// run.
func (a *Admin) CheckSchema(ctx context.Context) error {
	if err := checkSchema(ctx, a.db, ""); err != nil {
		return fmt.Errorf("inbox: admin: %w", err)
	}
	return nil
}

// HandlerStats are the figures of one (event type, handler key) pair.
type HandlerStats struct {
	EventType  string `json:"event_type"`
	HandlerKey string `json:"handler_key"`
	// Rows per status.
	Pending    int64 `json:"pending"`
	InProgress int64 `json:"in_progress"`
	Failed     int64 `json:"failed"`
	Done       int64 `json:"done"`
	Dead       int64 `json:"dead"`
	// Lag is how long the oldest due row that is not in progress has
	// waited: zero when none is due. A lag that keeps growing means the
	// handler falls behind, is paused, or no worker runs it.
	Lag time.Duration `json:"lag_ns"`
	// Paused reports that a pause ([Admin.Pause]) covers the pair.
	Paused bool `json:"paused"`
	// PerMinute are the rows that finished (done or dead) in each of the
	// last 60 minutes, the current minute last.
	PerMinute []MinuteCount `json:"per_minute"`
}

// Count returns the rows in status s.
func (h HandlerStats) Count(s Status) int64 {
	switch s {
	case Null:
		return h.Pending
	case Progress:
		return h.InProgress
	case Failed:
		return h.Failed
	case Done:
		return h.Done
	case Dead:
		return h.Dead
	}
	return 0
}

// FinishedLastHour returns the rows that finished in the last 60 minutes.
func (h HandlerStats) FinishedLastHour() (done, dead int64) {
	for _, m := range h.PerMinute {
		done, dead = done+m.Done, dead+m.Dead
	}
	return done, dead
}

// MinuteCount is the rows of a pair that finished in one minute.
type MinuteCount struct {
	Minute time.Time `json:"minute"`
	Done   int64     `json:"done"`
	Dead   int64     `json:"dead"`
}

// statsMinutes is how many minutes of throughput Stats reports.
const statsMinutes = 60

// Stats returns the figures of every (event type, handler key) pair that
// has rows, ordered by event type and key.
//
// Its cost does not grow with the finished rows kept: the table keeps its
// counts itself (a statement trigger appends per-statement deltas that
// Stats and the workers fold), and the lag is read from the index of due
// rows, so it grows with the backlog only.
func (a *Admin) Stats(ctx context.Context) ([]HandlerStats, error) {
	if err := a.fold(ctx); err != nil {
		return nil, fmt.Errorf("inbox: stats: %w", err)
	}
	var now time.Time
	if err := a.db.queryRow(ctx, nowSQL).Scan(&now); err != nil {
		return nil, fmt.Errorf("inbox: stats: %w", err)
	}
	type pair struct{ t, k string }
	byPair := map[pair]*HandlerStats{}
	get := func(t, k string) *HandlerStats {
		p := pair{t, k}
		if h := byPair[p]; h != nil {
			return h
		}
		h := &HandlerStats{EventType: t, HandlerKey: k}
		byPair[p] = h
		return h
	}
	var t, k, status string
	var n int64
	if err := a.each(ctx, []any{&t, &k, &status, &n}, func() {
		h := get(t, k)
		switch Status(status) {
		case Null:
			h.Pending = n
		case Progress:
			h.InProgress = n
		case Failed:
			h.Failed = n
		case Done:
			h.Done = n
		case Dead:
			h.Dead = n
		}
	}, statsCountsSQL); err != nil {
		return nil, fmt.Errorf("inbox: stats: counts: %w", err)
	}
	var secs float64
	if err := a.each(ctx, []any{&t, &k, &secs}, func() {
		get(t, k).Lag = time.Duration(secs * float64(time.Second))
	}, statsLagSQL); err != nil {
		return nil, fmt.Errorf("inbox: stats: lag: %w", err)
	}
	first := now.Truncate(time.Minute).Add(-(statsMinutes - 1) * time.Minute)
	var minute time.Time
	var done, dead int64
	type slot struct {
		p pair
		i int
	}
	minutes := map[slot]MinuteCount{}
	if err := a.each(ctx, []any{&t, &k, &minute, &done, &dead}, func() {
		i := int(minute.Sub(first) / time.Minute)
		if i >= 0 && i < statsMinutes {
			minutes[slot{pair{t, k}, i}] = MinuteCount{Done: done, Dead: dead}
		}
	}, statsThroughputSQL, first); err != nil {
		return nil, fmt.Errorf("inbox: stats: throughput: %w", err)
	}
	pauses, err := a.Pauses(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]HandlerStats, 0, len(byPair))
	for p, h := range byPair {
		if h.Pending+h.InProgress+h.Failed+h.Done+h.Dead == 0 {
			continue // its rows were deleted since the lag was read
		}
		h.PerMinute = make([]MinuteCount, statsMinutes)
		for i := range h.PerMinute {
			m := minutes[slot{p, i}]
			m.Minute = first.Add(time.Duration(i) * time.Minute)
			h.PerMinute[i] = m
		}
		for _, ps := range pauses {
			if ps.covers(p.t, p.k) {
				h.Paused = true
			}
		}
		out = append(out, *h)
	}
	slices.SortFunc(out, func(x, y HandlerStats) int {
		return cmp.Or(cmp.Compare(x.EventType, y.EventType), cmp.Compare(x.HandlerKey, y.HandlerKey))
	})
	return out, nil
}

// fold folds the counting trigger's deltas, unless another fold runs. On
// a read-only connection (a standby, a role that may only read) it folds
// nothing: the reads add the unfolded deltas anyway.
func (a *Admin) fold(ctx context.Context) error {
	err := foldCounts(ctx, a.db)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "25006" || pe.Code == "42501") {
		return nil
	}
	return err
}

// foldCounts folds the counting trigger's deltas into the counters,
// unless another fold of the same table runs (it then folds them).
func foldCounts(ctx context.Context, d db) error {
	return pgx.BeginFunc(ctx, d.pool, func(tx pgx.Tx) error {
		var mine bool
		if err := tx.QueryRow(ctx, foldLockSQL, d.args(nil)...).Scan(&mine); err != nil || !mine {
			return err
		}
		_, err := tx.Exec(ctx, foldSQL, d.args(nil)...)
		return err
	})
}

// each runs sql and calls fn after scanning each row into dest.
func (a *Admin) each(ctx context.Context, dest []any, fn func(), sql string, args ...any) error {
	rows, err := a.db.query(ctx, sql, args...)
	if err != nil {
		return err
	}
	_, err = pgx.ForEachRow(rows, dest, func() error { fn(); return nil })
	return err
}

// Workers lists the live workers on the inbox table, as [Inbox.Workers]
// does.
func (a *Admin) Workers(ctx context.Context) ([]Worker, error) {
	return workers(ctx, a.db)
}

// SchemaVersion returns the latest migration applied to the inbox's
// schema (0 when none is) and the latest this release has.
func (a *Admin) SchemaVersion(ctx context.Context) (applied, latest int64, err error) {
	latest = latestMigration()
	var exists bool
	if err := a.db.queryRow(ctx, versionTableSQL).Scan(&exists); err != nil {
		return 0, latest, fmt.Errorf("inbox: schema version: %w", err)
	}
	if !exists {
		return 0, latest, nil
	}
	if err := a.db.queryRow(ctx, schemaVersionSQL).Scan(&applied); err != nil {
		return 0, latest, fmt.Errorf("inbox: schema version: %w", err)
	}
	return applied, latest, nil
}

// scanState scans a row of rowColumns.
func scanState(row pgx.CollectableRow) (RecordState, error) {
	var s RecordState
	var status string
	var id pgtype.UUID
	err := row.Scan(&id, &s.EventType, &s.HandlerKey, &status, &s.Attempts, &s.MaxAttempts, &s.LastError,
		&s.PayloadErased, &s.EventDate, &s.CreatedAt, &s.UpdatedAt, &s.NextAttemptAt, &s.ErrorType,
		&s.OrderingKey, &s.Waiting)
	s.EventID, s.Status = id.Bytes, Status(status)
	return s, err
}
