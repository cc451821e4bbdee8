package inbox_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// backlogRows counts the rows of eventType, finished or not (no worker
// runs while it is called, unless said).
func backlogRows(t testing.TB, pool *pgxpool.Pool, eventType string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FROM inbox_records WHERE event_type = $1`, eventType).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// backlogFull checks that err is a *BacklogFullError wrapping
// ErrBacklogFull with the given figures.
func backlogFull(t testing.TB, err error, eventType string, backlog, limit int64) {
	t.Helper()
	if !errors.Is(err, inbox.ErrBacklogFull) {
		t.Fatalf("error %v does not wrap ErrBacklogFull", err)
	}
	var be *inbox.BacklogFullError
	if !errors.As(err, &be) {
		t.Fatalf("error %v (%T) is not a *BacklogFullError", err, err)
	}
	want := inbox.BacklogFullError{EventType: eventType, Backlog: backlog, Limit: limit}
	if *be != want {
		t.Fatalf("BacklogFullError %+v, want %+v", *be, want)
	}
}

// setOne stores one record of eventType.
func setOne(c *inbox.Client, eventType string) error {
	r, err := inbox.NewRecord(uuid.New(), eventType, []byte("x"))
	if err != nil {
		return err
	}
	return c.Set(context.Background(), r)
}

// A limited event type fills up to its limit; then every form of Set
// refuses a call holding a record of it, writing nothing, while other
// types store as before. Once the workers drained the backlog, Set stores
// again.
func TestBacklogFullThenDrained(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("reserve", badNoop))
	reg.On("refund", inbox.HandlerFunc("pay", badNoop))
	var refused atomic.Int64
	ib, err := inbox.New(pool, reg, testenv.Fast(t, inbox.WithMaxBacklog(5, "order"),
		inbox.WithHooks(inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
			if errors.Is(e.Err, inbox.ErrBacklogFull) {
				refused.Add(1)
			}
		}}))...)
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	for i := range 5 {
		if err := setOne(c, "order"); err != nil {
			t.Fatalf("Set %d: %v", i, err)
		}
	}

	err = setOne(c, "order")
	backlogFull(t, err, "order", 5, 5)
	for _, want := range []string{`event type "order" has 5 rows not finished, the limit is 5`, "nothing was stored",
		"temporary", "unacknowledged", "WithMaxBacklog"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	res, err := c.SetWithResult(ctx, testenv.Record(t, uuid.New(), "order", "x"))
	backlogFull(t, err, "order", 5, 5)
	if res.Records != 0 || res.Rows != 0 {
		t.Errorf("SetWithResult refused with result %+v, want zero", res)
	}
	// A call mixing types is refused whole.
	err = c.Set(ctx, testenv.Record(t, uuid.New(), "refund", "x"), testenv.Record(t, uuid.New(), "order", "x"))
	backlogFull(t, err, "order", 5, 5)
	// SetTx writes nothing and leaves the transaction usable.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = c.SetTx(ctx, tx, testenv.Record(t, uuid.New(), "order", "x"))
	backlogFull(t, err, "order", 5, 5)
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatalf("the transaction is not usable after a refused SetTx: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := backlogRows(t, pool, "order"); n != 5 {
		t.Fatalf("%d order rows after the refused Sets, want 5", n)
	}
	if n := backlogRows(t, pool, "refund"); n != 0 {
		t.Fatalf("%d refund rows after the refused mixed Set, want 0", n)
	}
	if got := refused.Load(); got != 4 {
		t.Errorf("OnSet saw %d refused Sets, want 4", got)
	}
	// Other types are not limited.
	for i := range 10 {
		if err := setOne(c, "refund"); err != nil {
			t.Fatalf("refund Set %d while order is full: %v", i, err)
		}
	}

	// The workers drain the backlog: within a refresh, Set stores again.
	if err := ib.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ib.Stop(context.Background()); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 15})
	testenv.Eventually(t, 5*time.Second, "a Set of order to pass again", func() (bool, error) {
		err := setOne(c, "order")
		if errors.Is(err, inbox.ErrBacklogFull) {
			return false, nil
		}
		return err == nil, err
	})
	if n := backlogRows(t, pool, "order"); n != 6 {
		t.Fatalf("%d order rows, want 6", n)
	}
}

// The limit counts rows over all handler keys of a type; without listed
// types it covers every registered type, and a later option overrides an
// earlier one per type. One Set at a time, the figure is exact: a Set is
// refused when the backlog is at or over the limit, and the one before
// took it over by its own rows at most.
func TestBacklogRowsAndOverrides(t *testing.T) {
	t.Parallel()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("reserve", badNoop), inbox.HandlerFunc("notify", badNoop))
	reg.On("refund", inbox.HandlerFunc("pay", badNoop))
	reg.On("invoice", inbox.HandlerFunc("mail", badNoop))
	ib, err := inbox.New(pool, reg, testenv.Fast(t,
		inbox.WithMaxBacklog(100), inbox.WithMaxBacklog(5, "order", "refund"), inbox.WithMaxBacklog(2, "refund"))...)
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	// order: two rows per record, limit 5: 0, 2, 4 pass (the third takes
	// it to 6), then refused at 6.
	for i := range 3 {
		if err := setOne(c, "order"); err != nil {
			t.Fatalf("order Set %d: %v", i, err)
		}
	}
	backlogFull(t, setOne(c, "order"), "order", 6, 5)
	// refund: limit 2.
	for i := range 2 {
		if err := setOne(c, "refund"); err != nil {
			t.Fatalf("refund Set %d: %v", i, err)
		}
	}
	backlogFull(t, setOne(c, "refund"), "refund", 2, 2)
	// invoice: the limit for every type, 100; one Set of 100 passes.
	recs := make([]*inbox.Record, 100)
	for i := range recs {
		recs[i] = testenv.Record(t, uuid.New(), "invoice", "x")
	}
	if err := c.Set(context.Background(), recs...); err != nil {
		t.Fatal(err)
	}
	backlogFull(t, setOne(c, "invoice"), "invoice", 100, 100)
	// The first type of the call that is full is named.
	err = c.Set(context.Background(), testenv.Record(t, uuid.New(), "refund", ""), testenv.Record(t, uuid.New(), "order", ""))
	backlogFull(t, err, "refund", 2, 2)
}

// The figure starts from the rows stored before, by any process: the
// folded counters plus the deltas not folded yet.
func TestBacklogCountsRowsStoredBefore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("reserve", badNoop))
	free, err := inbox.New(pool, reg, testenv.Fast(t)...)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := setOne(free.Client(), "order"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := free.Admin().Stats(ctx); err != nil { // folds the deltas so far
		t.Fatal(err)
	}
	for range 2 { // left unfolded
		if err := setOne(free.Client(), "order"); err != nil {
			t.Fatal(err)
		}
	}
	limited, err := inbox.New(pool, reg, testenv.Fast(t, inbox.WithMaxBacklog(5))...)
	if err != nil {
		t.Fatal(err)
	}
	backlogFull(t, setOne(limited.Client(), "order"), "order", 5, 5)
	if n := backlogRows(t, pool, "order"); n != 5 {
		t.Fatalf("%d rows, want 5", n)
	}
}

// Many goroutines setting at once through one Client take the backlog
// over the limit by less than the rows of the Sets running at once, as
// WithMaxBacklog promises: here G goroutines, one row per Set, so at most
// limit + G - 1 rows. The limit is large enough for the figure to be read
// again several times while they fill it.
func TestBacklogConcurrentOvershoot(t *testing.T) {
	t.Parallel()
	const (
		goroutines = 16
		limit      = 1500
	)
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("reserve", badNoop))
	ib, err := inbox.New(pool, reg, testenv.Fast(t, inbox.WithMaxBacklog(limit, "order"))...)
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	started := time.Now()
	var wg sync.WaitGroup
	var stored atomic.Int64
	errs := make(chan error, goroutines)
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := setOne(c, "order")
				if errors.Is(err, inbox.ErrBacklogFull) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				stored.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := backlogRows(t, pool, "order")
	t.Logf("%d goroutines stored %d rows against a limit of %d in %v", goroutines, n, limit, time.Since(started))
	if n != stored.Load() {
		t.Fatalf("%d rows, but %d Sets succeeded", n, stored.Load())
	}
	if n > limit+goroutines-1 {
		t.Fatalf("%d rows: over the limit %d by %d, more than the promised %d", n, limit, n-limit, goroutines-1)
	}
	// The figure of a quiet table, read again, is exact: Sets pass until
	// the backlog is at the limit, and never take it further.
	testenv.Eventually(t, 10*time.Second, "a Set refused with the backlog at the limit", func() (bool, error) {
		err := setOne(c, "order")
		if errors.Is(err, inbox.ErrBacklogFull) {
			return backlogRows(t, pool, "order") >= limit, nil
		}
		return false, err
	})
	if n2 := backlogRows(t, pool, "order"); n2 != max(n, limit) {
		t.Fatalf("%d rows after the second round, %d after the first: Sets one at a time took the backlog past the limit %d", n2, n, limit)
	}
}

// The same bound holds at every moment while a slow worker drains the
// backlog and the figure is read again and again with Sets running:
// sampled all along, the rows not finished never exceed limit + G - 1.
func TestBacklogBoundWhileDraining(t *testing.T) {
	t.Parallel()
	const (
		goroutines = 16
		limit      = 30
		load       = 2 * time.Second
	)
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	// Work of 10 ms, one at a time: at most 100 rows a second drain, fewer
	// than the goroutines store even on a busy machine.
	reg.Handle("order", inbox.HandlerFunc("reserve", func(ctx context.Context, _ []byte) error {
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
		}
		return ctx.Err()
	}), inbox.HandlerConcurrency(1))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxBacklog(limit, "order"))...)
	c := ib.Client()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stored, refused atomic.Int64
	errs := make(chan error, goroutines)
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := setOne(c, "order")
				switch {
				case errors.Is(err, inbox.ErrBacklogFull):
					refused.Add(1)
					time.Sleep(time.Millisecond) // a consumer's pause before it tries again, not a wait for anything
				case err != nil:
					errs <- err
					return
				default:
					stored.Add(1)
				}
			}
		}()
	}
	var most, samples int64
	for started := time.Now(); time.Since(started) < load; samples++ {
		var n int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE status IN ('', 'failed', 'progress')`).
			Scan(&n); err != nil {
			t.Fatal(err)
		}
		most = max(most, n)
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d Sets stored, %d refused; the largest of %d samples of the backlog: %d (limit %d)",
		stored.Load(), refused.Load(), samples, most, limit)
	if refused.Load() == 0 || stored.Load() <= limit {
		t.Fatalf("%d Sets stored and %d refused: the limit was not exercised", stored.Load(), refused.Load())
	}
	if most > limit+goroutines-1 {
		t.Fatalf("a backlog of %d rows: over the limit %d by %d, more than the promised %d", most, limit, most-limit, goroutines-1)
	}
}

// When the counters cannot be read, Sets go ahead unchecked and a warning
// is logged once; when they can again, Sets are checked again.
func TestBacklogFailsOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("reserve", badNoop))
	logs := &testenv.LogLines{}
	ib, err := inbox.New(pool, reg, inbox.WithMaxBacklog(2), inbox.WithLogger(logs.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	for range 2 {
		if err := setOne(c, "order"); err != nil {
			t.Fatal(err)
		}
	}
	backlogFull(t, setOne(c, "order"), "order", 2, 2)
	// The counters become unreadable (the trigger writes only the deltas,
	// so Sets still work).
	if _, err := pool.Exec(ctx, `ALTER TABLE inbox_counts RENAME TO inbox_counts_away`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "a Set to pass unchecked", func() (bool, error) {
		err := setOne(c, "order")
		if errors.Is(err, inbox.ErrBacklogFull) {
			return false, nil
		}
		return err == nil, err
	})
	for range 3 {
		if err := setOne(c, "order"); err != nil {
			t.Fatalf("Set while the counters cannot be read: %v", err)
		}
	}
	if n := logs.Count("cannot read the backlog", "inbox_counts"); n != 1 {
		t.Errorf("%d warnings about the backlog, want 1:\n%s", n, logs)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE inbox_counts_away RENAME TO inbox_counts`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 5*time.Second, "Sets to be checked again", func() (bool, error) {
		err := setOne(c, "order")
		if err == nil {
			return false, nil
		}
		var be *inbox.BacklogFullError
		return errors.As(err, &be) && be.Backlog >= 6, nil
	})
}
