package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// lockWaiter waits until a statement like pattern waits for a lock.
func lockWaiter(t *testing.T, pool *pgxpool.Pool, pattern string) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, "a statement like "+pattern+" to wait for a lock", func() (bool, error) {
		var n int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`, pattern).Scan(&n)
		return n > 0, err
	})
}

// TestCountersSurviveHostileWrites: the counters stay exact when the
// table is written from a session whose search_path names another inbox
// (or none), when it is truncated while a fold runs, and when Stats runs
// on a read-only connection.
func TestCountersSurviveHostileWrites(t *testing.T) {
	ctx := context.Background()
	poolA, poolB := testenv.MigratedPool(t), testenv.MigratedPool(t)
	var schemaA string
	if err := poolA.QueryRow(ctx, `SELECT current_schema()`).Scan(&schemaA); err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("a", inbox.HandlerFunc("k", func(context.Context, []byte) error { return nil }))
	reg.On("b", inbox.HandlerFunc("k", func(context.Context, []byte) error { return nil }))
	ibA, _ := inbox.New(poolA, reg)
	ibB, _ := inbox.New(poolB, reg)
	for i := range 3 {
		if err := ibA.Client().Set(ctx, testenv.Record(t, uuid.New(), "a", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Writes to A's table through B's search_path, and through a session
	// whose search_path holds no inbox at all.
	table := pgx.Identifier{schemaA, "inbox_records"}.Sanitize()
	if _, err := poolB.Exec(ctx, `UPDATE `+table+` SET status = 'dead' WHERE ctid = (SELECT min(ctid) FROM `+table+`)`); err != nil {
		t.Fatalf("update through another search_path: %v", err)
	}
	if _, err := testenv.SchemaPool(t, "public", 2).Exec(ctx, `DELETE FROM `+table+` WHERE status = ''`); err != nil {
		t.Fatalf("delete through a search_path without an inbox: %v", err)
	}
	a, errA := ibA.Counts(ctx)
	b, errB := ibB.Counts(ctx)
	if errA != nil || errB != nil || a[inbox.Dead] != 1 || a[inbox.Null] != 0 || b[inbox.Dead] != 0 || b[inbox.Null] != 0 {
		t.Fatalf("counts after writes from other search_paths: A %v (%v), B %v (%v)", a, errA, b, errB)
	}

	// TRUNCATE while a fold is half-way: the fold waits on a counter row
	// another transaction holds.
	admin := ibA.Admin()
	if err := ibA.Client().Set(ctx, testenv.Record(t, uuid.New(), "b", "1")); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Stats(ctx); err != nil { // b has a counter row now
		t.Fatal(err)
	}
	if err := ibA.Client().Set(ctx, testenv.Record(t, uuid.New(), "a", "x"), testenv.Record(t, uuid.New(), "b", "2")); err != nil {
		t.Fatal(err)
	}
	holder, err := poolA.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `SELECT FROM inbox_counts WHERE event_type = 'b' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	stats, truncated := make(chan error, 1), make(chan error, 1)
	go func() { _, err := admin.Stats(ctx); stats <- err }()
	lockWaiter(t, poolA, "%DELETE FROM inbox_count_deltas RETURNING%")
	go func() { _, err := poolA.Exec(ctx, `TRUNCATE inbox_records`); truncated <- err }()
	lockWaiter(t, poolA, "TRUNCATE%")
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(<-stats, <-truncated); err != nil {
		t.Fatal(err)
	}
	if c, err := ibA.Counts(ctx); err != nil || c[inbox.Null] != 0 || c[inbox.Dead] != 0 {
		t.Fatalf("counts of the truncated table: %v, %v", c, err)
	}

	// Stats on a read-only connection reads the unfolded deltas.
	if err := ibA.Client().Set(ctx, testenv.Record(t, uuid.New(), "a", "ro")); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schemaA
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	ro, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	roAdmin, _ := inbox.NewAdmin(ro)
	st, err := roAdmin.Stats(ctx)
	if err != nil || len(st) != 1 || st[0].Pending != 1 {
		t.Fatalf("Stats on a read-only connection: %+v, %v", st, err)
	}
}

// TestHistoryRecordsCountedFailuresOnly: a handler that asks to retry
// later, again and again, writes no history; its one real failure does.
func TestHistoryRecordsCountedFailuresOnly(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var n atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("k", func(context.Context, []byte) error {
		switch n.Add(1) {
		case 1, 2, 3, 4, 5:
			return inbox.RetryAfter(time.Millisecond, errors.New("not yet"))
		case 6:
			return errors.New("real failure")
		}
		return nil
	}))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "x")); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1})
	ev, err := ib.Admin().Show(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(ev.History) != 1 || ev.History[0].Kind != "failed" || ev.History[0].Attempt != 1 || ev.History[0].Text != "real failure" {
		t.Fatalf("history %+v, want the one counted failure", ev.History)
	}
}

// TestSlowRunHookKeepsTheResult: an OnRun hook slower than the handler's
// timeout does not turn a successful run into a failure.
func TestSlowRunHookKeepsTheResult(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var runs atomic.Int32
	release := make(chan struct{})
	reg := inbox.NewRegistry()
	reg.Handle("e", inbox.HandlerFunc("k", func(context.Context, []byte) error { runs.Add(1); return nil }),
		inbox.HandlerTimeout(100*time.Millisecond), inbox.HandlerMaxAttempts(1))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithHooks(inbox.Hooks{
		OnRun: func(context.Context, inbox.RunEvent) { <-release },
	}))...)
	defer close(release)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "x")); err != nil {
		t.Fatal(err)
	}
	// The result is written while the hook still blocks.
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1})
	if runs.Load() != 1 {
		t.Fatalf("%d runs", runs.Load())
	}
}

// TestBulkActionsBesideRetention: Delete and Purge over the same dead rows
// at once do not deadlock (both lock rows in ctid order).
func TestBulkActionsBesideRetention(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	admin, _ := inbox.NewAdmin(pool)
	if _, err := pool.Exec(ctx, `INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date, status, updated_at)
		SELECT gen_random_uuid(), 'k', 'e', 'x', now(), 'dead', now() - interval '61 days' - i * interval '1 second'
		FROM generate_series(1, 3000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date, status)
		SELECT gen_random_uuid(), 'k', 'e', 'x', now(), 'done' FROM generate_series(1, 50000)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE inbox_records`); err != nil {
		t.Fatal(err)
	}
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `SELECT FROM inbox_records WHERE status = 'dead'
		AND updated_at = (SELECT min(updated_at) FROM inbox_records) + interval '200 seconds' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { _, err := admin.Purge(ctx, inbox.PurgeOptions{}, nil); errs <- err }()
	lockWaiter(t, pool, "%WITH deleted AS%")
	go func() {
		_, err := admin.Delete(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Dead}}, inbox.ActionOptions{BatchSize: 300})
		errs <- err
	}()
	lockWaiter(t, pool, "%picked AS MATERIALIZED%")
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n, err := admin.Count(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Dead}}); err != nil || n != 0 {
		t.Fatalf("%d dead rows left, %v", n, err)
	}
}
