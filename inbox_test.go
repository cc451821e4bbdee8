package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// Each (event, handler) pair runs exactly once, however the same events
// arrive: twice in a row, twice in one batch, or from 8 racing consumers.
func TestDedup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("order", r.handler("reserve"), r.handler("notify"))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	c := ib.Client()

	ids := make([]uuid.UUID, 200)
	for i := range ids {
		ids[i] = uuid.New()
	}
	rec := func(i int) *inbox.Record { return testenv.Record(t, ids[i], "order", fmt.Sprint(i)) }

	// Same id twice, in separate calls.
	for range 2 {
		if err := c.Set(ctx, rec(0)); err != nil {
			t.Fatal(err)
		}
	}
	// Same id twice in one batch.
	if err := c.Set(ctx, rec(1), rec(1), rec(2)); err != nil {
		t.Fatal(err)
	}
	// 8 goroutines racing over the same ids, in different orders.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range len(ids) {
				j := (i*7 + g*13) % len(ids)
				if err := c.Set(ctx, rec(j), rec((j+1)%len(ids))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	waitCounts(t, ib, 20*time.Second, map[inbox.Status]int{inbox.Done: 2 * len(ids)})
	got := r.snapshot()
	if len(got) != 2*len(ids) {
		t.Fatalf("%d (event, handler) pairs ran, want %d", len(got), 2*len(ids))
	}
	for k, n := range got {
		if n != 1 {
			t.Errorf("%s ran %d times, want once", k, n)
		}
	}
	states, err := ib.Lookup(ctx, ids[1])
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].HandlerKey != "notify" || states[1].HandlerKey != "reserve" ||
		states[0].Attempts != 1 || states[0].Status != inbox.Done || states[0].EventType != "order" {
		t.Fatalf("Lookup = %+v, want notify and reserve rows, done after 1 attempt", states)
	}
}

// Three handlers of one event type keep independent rows: one succeeds,
// one succeeds on its third attempt, one fails until it is dead.
func TestFanOutAndRetriesToDead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var mu sync.Mutex
	flakyRuns := 0
	dead := make(chan inbox.DeadRecord, 10)
	reg := inbox.NewRegistry()
	reg.On("payment",
		inbox.HandlerFunc("ledger", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("flaky", func(context.Context, []byte) error {
			mu.Lock()
			defer mu.Unlock()
			flakyRuns++
			if flakyRuns < 3 {
				return fmt.Errorf("flaky failure %d", flakyRuns)
			}
			return nil
		}),
		inbox.HandlerFunc("broken", func(context.Context, []byte) error {
			return fmt.Errorf("broken: %w", errSentinel)
		}),
	)
	ib := start(t, pool, reg, testenv.Fast(t,
		inbox.WithMaxRetryAttempt(4),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec }))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "payment", "{}")); err != nil {
		t.Fatal(err)
	}

	var rec inbox.DeadRecord
	select {
	case rec = <-dead:
	case <-time.After(20 * time.Second):
		t.Fatal("no dead callback")
	}
	if rec.EventID != id || rec.EventType != "payment" || rec.HandlerKey != "broken" || rec.Attempts != 4 {
		t.Fatalf("dead record = %+v, want event %s, payment/broken, 4 attempts", rec, id)
	}
	if !errors.Is(rec.Err, errSentinel) {
		t.Fatalf("dead record error %v does not wrap the handler's error", rec.Err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 2, inbox.Dead: 1})
	states, err := ib.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		status   inbox.Status
		attempts int
		lastErr  string
	}{
		"broken": {inbox.Dead, 4, "broken: sentinel"},
		"flaky":  {inbox.Done, 3, "flaky failure 2"},
		"ledger": {inbox.Done, 1, ""},
	}
	for _, s := range states {
		w := want[s.HandlerKey]
		if s.Status != w.status || s.Attempts != w.attempts || s.LastError != w.lastErr || s.NextAttemptAt != nil {
			t.Errorf("%s: got %s after %d attempts, error %q, next %v; want %s after %d, error %q",
				s.HandlerKey, s.Status, s.Attempts, s.LastError, s.NextAttemptAt, w.status, w.attempts, w.lastErr)
		}
	}
	select {
	case extra := <-dead:
		t.Fatalf("second dead callback: %+v", extra)
	default:
	}
}

var errSentinel = errors.New("sentinel")

type slowHandler struct {
	key     string
	timeout time.Duration
	ignore  bool // ignore the context
	release chan struct{}
}

func (h slowHandler) Key() string            { return h.key }
func (h slowHandler) Timeout() time.Duration { return h.timeout }
func (h slowHandler) Process(ctx context.Context, _ []byte) error {
	if h.ignore {
		<-h.release
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// A handler that runs past its own timeout fails with ErrHandlerTimeout;
// one that ignores its context is abandoned after a grace period; a panic
// is recovered and recorded.
func TestTimeoutAndPanic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	dead := make(chan inbox.DeadRecord, 10)
	reg := inbox.NewRegistry()
	reg.On("job",
		slowHandler{key: "slow", timeout: 50 * time.Millisecond},
		slowHandler{key: "deaf", timeout: 50 * time.Millisecond, ignore: true, release: release},
		inbox.HandlerFunc("panics", func(context.Context, []byte) error { panic("kaboom") }),
	)
	ib, err := inbox.New(pool, reg, testenv.Fast(t,
		inbox.WithMaxRetryAttempt(1),
		inbox.WithHandlerTimeout(time.Hour), // overridden by the handlers' Timeout
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec }))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "job", "")); err != nil {
		t.Fatal(err)
	}
	got := map[string]inbox.DeadRecord{}
	for len(got) < 3 {
		select {
		case rec := <-dead:
			got[rec.HandlerKey] = rec
		case <-time.After(20 * time.Second):
			t.Fatalf("dead callbacks so far: %v", got)
		}
	}
	if err := got["slow"].Err; !errors.Is(err, inbox.ErrHandlerTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow handler: %v, want ErrHandlerTimeout wrapping the context's error", err)
	}
	if err := got["deaf"].Err; !errors.Is(err, inbox.ErrHandlerTimeout) || !strings.Contains(err.Error(), "did not return") {
		t.Errorf("deaf handler: %v, want ErrHandlerTimeout saying it did not return", err)
	}
	var pe *inbox.PanicError
	if err := got["panics"].Err; !errors.As(err, &pe) || pe.Value != "kaboom" || len(pe.Stack) == 0 {
		t.Errorf("panicking handler: %v, want *PanicError with value kaboom and a stack", err)
	}
	states, err := ib.Lookup(ctx, id)
	if err != nil || len(states) != 3 {
		t.Fatalf("Lookup = %+v, %v; want the 3 rows of the event", states, err)
	}
	for _, s := range states {
		if s.Status != inbox.Dead || s.LastError == "" {
			t.Errorf("%s: %s with error %q, want dead with the error recorded", s.HandlerKey, s.Status, s.LastError)
		}
	}
	// The deaf handler still runs: Stop must not report success before it returns.
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := ib.Stop(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop with a handler still running = %v, want context.DeadlineExceeded", err)
	}
}

// SetTx stores rows with the caller's transaction: a rollback leaves
// nothing, a commit stores them and wakes the worker.
func TestSetTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("user", r.handler("welcome"))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithIterationRate(time.Hour))...)

	rolledBack := uuid.New()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Client().SetTx(ctx, tx, testenv.Record(t, rolledBack, "user", "rolled back")); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	committed := uuid.New()
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return ib.Client().SetTx(ctx, tx, testenv.Record(t, committed, "user", "committed"))
	})
	if err != nil {
		t.Fatal(err)
	}
	// The poll interval is an hour: only the notification can wake the worker.
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1})
	if states, err := ib.Lookup(ctx, rolledBack); err != nil || len(states) != 0 {
		t.Fatalf("rolled back event: Lookup = %+v, %v; want no rows", states, err)
	}
	if states, err := ib.Lookup(ctx, committed); err != nil || len(states) != 1 || states[0].Status != inbox.Done {
		t.Fatalf("committed event: Lookup = %+v, %v; want its row done", states, err)
	}
	if got := r.snapshot(); len(got) != 1 || got["welcome/committed"] != 1 {
		t.Fatalf("runs = %v, want only the committed event", got)
	}
}

// A TxHandler's writes commit with the row's completion, exactly once; a
// failed attempt rolls its writes back.
func TestTxHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE ledger (event text PRIMARY KEY, n int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	reg := inbox.NewRegistry()
	reg.On("credit", inbox.TxHandlerFunc("ledger", func(ctx context.Context, tx pgx.Tx, p []byte) error {
		if _, err := tx.Exec(ctx, `INSERT INTO ledger VALUES ($1, 1)`, string(p)); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		calls[string(p)]++
		if calls[string(p)] == 1 {
			return errors.New("fail after writing") // the insert must roll back
		}
		return nil
	}))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	var recs []*inbox.Record
	for i := range 20 {
		recs = append(recs, testenv.Record(t, uuid.New(), "credit", fmt.Sprint("e", i)))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 20*time.Second, map[inbox.Status]int{inbox.Done: 20})
	var rows, total int
	if err := pool.QueryRow(ctx, `SELECT count(*), coalesce(sum(n), 0) FROM ledger`).Scan(&rows, &total); err != nil {
		t.Fatal(err)
	}
	if rows != 20 || total != 20 {
		t.Fatalf("ledger has %d rows summing to %d, want exactly one per event (20, 20)", rows, total)
	}
	for e, n := range calls {
		if n != 2 {
			t.Errorf("event %s: %d calls, want 2 (the first failed after writing)", e, n)
		}
	}
}

// Retention deletes exactly the done and dead rows older than the window,
// never unfinished rows, whatever their age.
func TestRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("gone", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	// Rows of every status, old and new, for a handler key this inbox does
	// not run, so only retention touches them.
	_, err := pool.Exec(ctx, `
		INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date, status, attempts, locked_by, updated_at)
		SELECT gen_random_uuid(), 'other', 'gone', '', now(), s.status, 1,
		       CASE WHEN s.status = 'progress' THEN gen_random_uuid() END,
		       now() - age.d * interval '1 day'
		FROM unnest(ARRAY['', 'progress', 'failed', 'done', 'dead']) AS s(status),
		     unnest(ARRAY[0, 2, 400]) AS age(d),
		     generate_series(1, 7)`)
	if err != nil {
		t.Fatal(err)
	}
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithRetention(20*time.Millisecond, 1))...)
	waitCounts(t, ib, 20*time.Second, map[inbox.Status]int{inbox.Done: 7, inbox.Dead: 7})
	rows, err := pool.Query(ctx, `SELECT status, (now() - updated_at) > interval '1 day', count(*) FROM inbox_records GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var status string
	var old bool
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&status, &old, &n}, func() error {
		got = append(got, fmt.Sprintf("%s/old=%v:%d", inbox.Status(status), old, n))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := "null/old=false:7 null/old=true:14 dead/old=false:7 done/old=false:7 failed/old=false:7 failed/old=true:14 progress/old=false:7 progress/old=true:14"
	if strings.Join(got, " ") != want {
		t.Fatalf("rows after retention:\n got  %s\n want %s", strings.Join(got, " "), want)
	}
}

// Stop hands back claimed rows whose handlers have not started, without
// counting an attempt, and writes the result of the running handler.
func TestStopHandsBackUnstarted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	reg := inbox.NewRegistry()
	reg.On("task", inbox.HandlerFunc("one-at-a-time", func(context.Context, []byte) error {
		started <- struct{}{}
		<-release
		return nil
	}))
	ib, err := inbox.New(pool, reg, testenv.Fast(t, inbox.WithConcurrency(1), inbox.WithBatchSize(10))...)
	if err != nil {
		t.Fatal(err)
	}
	var recs []*inbox.Record
	for range 10 {
		recs = append(recs, testenv.Record(t, uuid.New(), "task", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatal(err)
	}
	<-started
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Progress: 10})
	stopped := make(chan error, 1)
	go func() { stopped <- ib.Stop(ctx) }()
	// Stop hands the unstarted rows back before it waits for the running
	// handler; once they are back, it must still be waiting.
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Null: 9, inbox.Progress: 1})
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned %v while a handler was running", err)
	default:
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	c, err := ib.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c[inbox.Done] != 1 || c[inbox.Null] != 9 {
		t.Fatalf("after Stop: %v, want 1 done and 9 handed back as null", c)
	}
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT sum(attempts) FROM inbox_records`).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 {
		t.Fatalf("attempts after Stop = %d, want 1 (handed-back rows are not counted)", attempts)
	}
	if ws, err := ib.Workers(ctx); err != nil || len(ws) != 0 {
		t.Fatalf("Workers after Stop = %v, %v; want none", ws, err)
	}
	if err := ib.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := ib.Start(ctx); !errors.Is(err, inbox.ErrAlreadyStarted) {
		t.Fatalf("Start after Stop = %v, want ErrAlreadyStarted", err)
	}
}

// Rows whose handler is no longer registered wait, visible, without
// hot-looping, and run when the handler comes back. Workers serve only the
// pairs their registry has.
func TestRemovedHandlerWaits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	both := inbox.NewRegistry()
	both.On("a", r.handler("kept"), r.handler("removed"))
	writer, err := inbox.New(pool, both)
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := writer.Client().Set(ctx, testenv.Record(t, id, "a", "x")); err != nil {
		t.Fatal(err)
	}
	one := inbox.NewRegistry()
	one.On("a", r.handler("kept"))
	ib := start(t, pool, one, testenv.Fast(t)...)
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1, inbox.Null: 1})
	ws, err := ib.Workers(ctx)
	if err != nil || len(ws) != 1 || ws[0].ID != ib.ID() || len(ws[0].EventTypes) != 1 {
		t.Fatalf("Workers = %+v, %v; want this inbox only", ws, err)
	}
	// A later event proves the worker claimed again; the orphan row stays untouched.
	if err := writer.Client().Set(ctx, testenv.Record(t, uuid.New(), "a", "y")); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 2, inbox.Null: 2})
	states, err := ib.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].HandlerKey != "kept" || states[1].Status != inbox.Null || states[1].Attempts != 0 {
		t.Fatalf("states = %+v, want the removed handler's row untouched", states)
	}
	if age, err := ib.OldestDue(ctx); err != nil || age <= 0 {
		t.Fatalf("OldestDue = %v, %v; want the waiting row's age", age, err)
	}
	start(t, pool, both, testenv.Fast(t)...)
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 4})
	if got := r.snapshot(); got["kept/x"] != 1 || got["removed/x"] != 1 || got["kept/y"] != 1 || got["removed/y"] != 1 {
		t.Fatalf("runs = %v, want each handler once", got)
	}
	if age, err := ib.OldestDue(ctx); err != nil || age != 0 {
		t.Fatalf("OldestDue = %v, %v; want 0 with nothing due", age, err)
	}
}

// Three inboxes share one table: 5,000 events, each run exactly once.
func TestManyInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	var ibs []*inbox.Inbox
	for range 3 {
		reg := inbox.NewRegistry()
		reg.On("e", r.handler("h"))
		ibs = append(ibs, start(t, pool, reg, testenv.Fast(t, inbox.WithBatchSize(50), inbox.WithConcurrency(8))...))
	}
	const n = 5000
	for b := 0; b < n; b += 500 {
		var recs []*inbox.Record
		for i := b; i < b+500; i++ {
			recs = append(recs, testenv.Record(t, uuid.New(), "e", fmt.Sprint(i)))
		}
		if err := ibs[b/500%3].Client().Set(ctx, recs...); err != nil {
			t.Fatal(err)
		}
	}
	waitCounts(t, ibs[0], 60*time.Second, map[inbox.Status]int{inbox.Done: n})
	got := r.snapshot()
	if len(got) != n {
		t.Fatalf("%d events ran, want %d", len(got), n)
	}
	for k, c := range got {
		if c != 1 {
			t.Errorf("%s ran %d times", k, c)
		}
	}
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT sum(attempts) FROM inbox_records`).Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts != n {
		t.Fatalf("%d attempts recorded, want %d", attempts, n)
	}
	if ws, err := ibs[0].Workers(ctx); err != nil || len(ws) != 3 {
		t.Fatalf("Workers = %d, %v; want 3", len(ws), err)
	}
}

// Migrate is idempotent, safe to run concurrently, keeps its own version
// table, and Start without migrations says what to do on a bare schema.
func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.SchemaPool(t, testenv.Schema(t), 10)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib, err := inbox.New(pool, reg, inbox.WithoutMigrations())
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Start(ctx); err == nil || !strings.Contains(err.Error(), "inbox.Migrate") {
		t.Fatalf("Start on a bare schema without migrations = %v, want an error naming inbox.Migrate", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = inbox.Migrate(ctx, pool) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var goose, own bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('goose_db_version') IS NOT NULL, to_regclass($1) IS NOT NULL`,
		inbox.VersionTable).Scan(&goose, &own); err != nil {
		t.Fatal(err)
	}
	if goose || !own {
		t.Fatalf("goose_db_version exists: %v, %s exists: %v; want only the inbox's own", goose, inbox.VersionTable, own)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatalf("Start after Migrate: %v", err)
	}
	if err := ib.Start(ctx); !errors.Is(err, inbox.ErrAlreadyStarted) {
		t.Fatalf("second Start = %v, want ErrAlreadyStarted", err)
	}
	if err := ib.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}
