package main

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The minimal floor: a queue table with nothing but what a drain needs, so
// that the cost of the inbox table's own shape (its composite key, its
// columns, its second partial index, its CHECK constraints) shows beside
// the same-shape floor. It lives in schema bench_min.

const minSchema = "bench_min"

// minTableSQL creates the minimal table; %s is its storage parameters.
const minTableSQL = `
CREATE TABLE queue (
    id      uuid        PRIMARY KEY,
    status  text        NOT NULL DEFAULT '',
    due_at  timestamptz NOT NULL DEFAULT now(),
    payload bytea       NOT NULL
)%s;
CREATE INDEX queue_due_idx ON queue (due_at) WHERE status IN ('', 'failed', 'progress')`

// The minimal floor's drain: the same shape as floorClaimSQL and
// floorDoneSQL, on the minimal table.
const (
	minClaimSQL = `
WITH c AS MATERIALIZED (
    SELECT ctid FROM queue
    WHERE status IN ('', 'failed', 'progress') AND due_at <= now()
    ORDER BY due_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE queue AS q
SET status = 'progress', due_at = now() + interval '5 seconds'
WHERE q.ctid = ANY (ARRAY(SELECT ctid FROM c))
RETURNING q.ctid, q.payload`

	minDoneSQL = `UPDATE queue SET status = 'done' WHERE ctid = ANY ($1::tid[])`
)

// relOption is one storage parameter as pg_class.reloptions spells it.
var relOption = regexp.MustCompile(`^[a-z_]+=[A-Za-z0-9_.]+$`)

// withClause returns the WITH clause that gives a table the storage
// parameters opts (pg_class.reloptions of another table), or "" for none.
// It refuses anything but name=value pairs, since it is spliced into DDL.
func withClause(opts []string) (string, error) {
	if len(opts) == 0 {
		return "", nil
	}
	for _, o := range opts {
		if !relOption.MatchString(o) {
			return "", fmt.Errorf("unexpected storage parameter %q", o)
		}
	}
	return " WITH (" + strings.Join(opts, ", ") + ")", nil
}

// newMinFloor creates schema bench_min afresh with the minimal table,
// giving it the storage parameters (fillfactor, per-table autovacuum
// settings) of the library's table, and returns a pool working in it and
// those parameters.
func (b *bench) newMinFloor(ctx context.Context) (*pgxpool.Pool, []string, error) {
	var opts []string
	if err := b.lib.QueryRow(ctx, `SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = 'inbox_records'::regclass`).
		Scan(&opts); err != nil {
		return nil, nil, fmt.Errorf("library table's storage parameters: %w", err)
	}
	with, err := withClause(opts)
	if err != nil {
		return nil, nil, err
	}
	pool, err := b.schemaPool(ctx, minSchema, false)
	if err != nil {
		return nil, nil, err
	}
	if _, err := pool.Exec(ctx, fmt.Sprintf(minTableSQL, with)); err != nil {
		pool.Close()
		return nil, nil, fmt.Errorf("create minimal table: %w", err)
	}
	return pool, opts, nil
}

// minCopy COPYs n events into the minimal table, 1,000 per CopyFrom.
func minCopy(ctx context.Context, pool *pgxpool.Pool, n int) (time.Duration, error) {
	return copyEvents(ctx, pool, "queue", []string{"id", "payload"}, n, 1, func(seq, _ int, _ time.Time) []any {
		return []any{uuid.New(), payload(seq)}
	})
}

// minDrain drains the minimal table with [sqlDrain].
func minDrain(ctx context.Context, pool *pgxpool.Pool) (time.Duration, int, error) {
	return sqlDrain(ctx, pool, minClaimSQL, minDoneSQL)
}
