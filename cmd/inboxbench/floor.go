package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The floors: the least a hand-written program would do on the same table
// (schema bench_floor, same migration) to get the same effect.

var copyColumns = []string{"event_id", "handler_key", "event_type", "payload", "event_date"}

// floorCopy COPYs n events into the floor table, one row per handler key
// in keys, 1,000 events per CopyFrom (each its own transaction, like one
// Set call), and returns the time spent in CopyFrom.
func (b *bench) floorCopy(ctx context.Context, pool *pgxpool.Pool, n int, keys ...string) (time.Duration, error) {
	if len(keys) == 0 {
		keys = []string{handlerKey}
	}
	return copyEvents(ctx, pool, "inbox_records", copyColumns, n, len(keys), func(seq, k int, now time.Time) []any {
		return []any{uuid.New(), keys[k], eventType, payload(seq), now}
	})
}

// copyEvents COPYs n events of fanout rows each into table, 1,000 events
// per CopyFrom, building row k of event seq with row; it returns the time
// spent in CopyFrom (building the rows is not timed).
func copyEvents(ctx context.Context, pool *pgxpool.Pool, table string, columns []string, n, fanout int,
	row func(seq, k int, now time.Time) []any) (time.Duration, error) {
	var took time.Duration
	for start := 0; start < n; start += setBatch {
		now := time.Now()
		rows := make([][]any, 0, min(setBatch, n-start)*fanout)
		for seq := start; seq < min(start+setBatch, n); seq++ {
			for k := range fanout {
				rows = append(rows, row(seq, k, now))
			}
		}
		t := time.Now()
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{table}, columns, pgx.CopyFromRows(rows)); err != nil {
			return 0, fmt.Errorf("copy: %w", err)
		}
		took += time.Since(t)
	}
	return took, nil
}

const floorClaimSQL = `
WITH c AS MATERIALIZED (
    SELECT ctid FROM inbox_records
    WHERE status IN ('', 'failed', 'progress') AND due_at <= now()
    ORDER BY due_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
)
UPDATE inbox_records AS r
SET status = 'progress', attempts = r.attempts + 1, locked_by = $1,
    due_at = now() + interval '5 seconds', updated_at = now()
WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM c))
RETURNING r.ctid, r.payload`

const floorDoneSQL = `
UPDATE inbox_records
SET status = 'done', locked_by = NULL, updated_at = now()
WHERE ctid = ANY ($1::tid[])`

// floorNoop is called once per claimed row; a variable so the call is not
// optimised away.
var floorNoop = func([]byte) {}

// floorDrain drains the floor table of pool with [sqlDrain] and the
// same-shape statements.
func (b *bench) floorDrain(ctx context.Context, pool *pgxpool.Pool) (time.Duration, int, error) {
	return sqlDrain(ctx, pool, floorClaimSQL, floorDoneSQL, uuid.New())
}

// sqlDrain drains a table on one connection: claim (a statement returning
// ctid and payload of up to 500 rows it took), call a no-op per row, mark
// the batch done in one statement (done, taking the ctids as $1), until a
// claim returns nothing. It returns the time taken and the rows drained.
//
// Both statements reach rows by ctid = ANY(array), which the planner can
// only run as a TID scan: a join of the CTE back to the table (r.ctid =
// c.ctid) becomes a hash join over a sequential scan of the whole table
// whenever that looks cheaper than the TID lookups, as it does below about
// 100,000 rows. The claim's new ctid stays valid for the done UPDATE: only
// this connection updates a claimed row.
func sqlDrain(ctx context.Context, pool *pgxpool.Pool, claim, done string, claimArgs ...any) (time.Duration, int, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Release()
	tids := make([]pgtype.TID, 0, 500)
	total := 0
	t0 := time.Now()
	for {
		rows, err := conn.Query(ctx, claim, claimArgs...)
		if err != nil {
			return 0, 0, fmt.Errorf("claim: %w", err)
		}
		tids = tids[:0]
		var tid pgtype.TID
		var p []byte
		for rows.Next() {
			if err := rows.Scan(&tid, &p); err != nil {
				rows.Close()
				return 0, 0, err
			}
			floorNoop(p)
			tids = append(tids, tid)
		}
		if err := rows.Err(); err != nil {
			return 0, 0, fmt.Errorf("claim: %w", err)
		}
		if len(tids) == 0 {
			return time.Since(t0), total, nil
		}
		if _, err := conn.Exec(ctx, done, tids); err != nil {
			return 0, 0, fmt.Errorf("done: %w", err)
		}
		total += len(tids)
	}
}

const floorInsertSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT DO NOTHING`

// floorInsert stores one row in its own transaction.
func (b *bench) floorInsert(ctx context.Context, seq int) error {
	_, err := b.floor.Exec(ctx, floorInsertSQL, uuid.New(), handlerKey, eventType, payload(seq), time.Now())
	return err
}

// floorNotify measures raw LISTEN/NOTIFY: a listener connection blocked in
// WaitForNotification, and a writer that inserts a row and notifies in one
// transaction, n times every interval. It returns each latency from the
// writer's commit returning to the listener waking or, with claim, to the
// listener's claim (floorClaimSQL on a second connection, with
// synchronous_commit off as the library's claims) returning the row.
func (b *bench) floorNotify(ctx context.Context, n int, interval time.Duration, claim bool) ([]time.Duration, error) {
	cfg := b.floor.Config().ConnConfig.Copy()
	listener, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer listener.Close(context.Background())
	if _, err := listener.Exec(ctx, "LISTEN bench_floor"); err != nil {
		return nil, err
	}
	claimer, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer claimer.Close(context.Background())
	if _, err := claimer.Exec(ctx, "SET synchronous_commit = off"); err != nil {
		return nil, err
	}
	worker := uuid.New()
	base := time.Now()
	woke := make([]atomic.Int64, n)
	committed := make([]time.Duration, n)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		for got := 0; got < n; {
			note, err := listener.WaitForNotification(lctx)
			if err != nil {
				done <- err
				return
			}
			at := time.Since(base)
			seq, err := strconv.Atoi(note.Payload)
			if err != nil || seq < 0 || seq >= n {
				continue
			}
			if !claim {
				woke[seq].Store(int64(at))
				got++
				continue
			}
			if woke[seq].Load() != 0 {
				continue // claimed with an earlier row
			}
			// Under load two rows may be due by the time the claim runs:
			// each gets the claim's time.
			claimedAt, seqs, err := claimDue(lctx, claimer, worker)
			if err != nil {
				done <- fmt.Errorf("claim: %w", err)
				return
			}
			for _, s := range seqs {
				if s >= 0 && s < n && woke[s].Load() == 0 {
					woke[s].Store(int64(claimedAt.Sub(base)))
					got++
				}
			}
		}
		done <- nil
	}()

	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		tx, err := b.floor.Begin(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, floorInsertSQL, uuid.New(), handlerKey, eventType, payload(i), time.Now()); err != nil {
			_ = tx.Rollback(ctx)
			return nil, err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_notify('bench_floor', $1)", strconv.Itoa(i)); err != nil {
			_ = tx.Rollback(ctx)
			return nil, err
		}
		if err := tx.Commit(ctx); err != nil {
			return nil, err
		}
		committed[i] = time.Since(base)
	}
	select {
	case err := <-done:
		if err != nil {
			return nil, fmt.Errorf("listener: %w", err)
		}
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("listener: notifications missing after 30s")
	}
	lat := make([]time.Duration, n)
	for i := range lat {
		lat[i] = time.Duration(woke[i].Load()) - committed[i]
	}
	return lat, nil
}

// claimDue claims with floorClaimSQL on conn, expecting at least one row,
// and returns when the rows arrived and their sequence numbers; then it
// marks them done.
func claimDue(ctx context.Context, conn *pgx.Conn, worker uuid.UUID) (time.Time, []int, error) {
	rows, err := conn.Query(ctx, floorClaimSQL, worker)
	if err != nil {
		return time.Time{}, nil, err
	}
	var tids []pgtype.TID
	var seqs []int
	var tid pgtype.TID
	var p []byte
	for rows.Next() {
		if err := rows.Scan(&tid, &p); err != nil {
			rows.Close()
			return time.Time{}, nil, err
		}
		tids, seqs = append(tids, tid), append(seqs, int(binary.BigEndian.Uint64(p)))
	}
	at := time.Now()
	if err := rows.Err(); err != nil {
		return at, nil, err
	}
	if len(tids) == 0 {
		return at, nil, fmt.Errorf("claimed no row after a notification")
	}
	if _, err := conn.Exec(ctx, floorDoneSQL, tids); err != nil {
		return at, nil, fmt.Errorf("done: %w", err)
	}
	return at, seqs, nil
}
