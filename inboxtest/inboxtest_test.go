package inboxtest_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/inboxtest"
	"github.com/pginbox/inbox/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaked := testenv.Leaked(5*time.Second, testenv.InboxCode, testenv.PgxPool); leaked != "" {
			fmt.Fprintf(os.Stderr, "inboxtest tests: goroutines still running after all tests:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

func newRecord(t testing.TB, eventType, payload string) *inbox.Record {
	t.Helper()
	rec, err := inbox.NewRecord(uuid.New(), eventType, []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func newRunner(t testing.TB, pool *pgxpool.Pool, reg *inbox.Registry, opts ...inbox.Option) *inboxtest.Runner {
	t.Helper()
	r, err := inboxtest.NewRunner(pool, reg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func set(t testing.TB, r *inboxtest.Runner, recs ...*inbox.Record) {
	t.Helper()
	if err := r.Client().Set(t.Context(), recs...); err != nil {
		t.Fatal(err)
	}
}

func drain(t testing.TB, r *inboxtest.Runner, opts ...inboxtest.DrainOption) inboxtest.Result {
	t.Helper()
	res, err := r.Drain(t.Context(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// fastRetries are options under which a failing row is dead within
// milliseconds.
var fastRetries = []inbox.Option{
	inbox.WithMaxRetryAttempt(3),
	inbox.WithRetryBackoff(time.Millisecond, 5*time.Millisecond),
}

func TestDrainRunsEveryHandler(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	var mu sync.Mutex
	ran := map[string]int{}
	record := func(key string) inbox.Handler {
		return inbox.HandlerFunc(key, func(_ context.Context, p []byte) error {
			mu.Lock()
			defer mu.Unlock()
			ran[key+" "+string(p)]++
			return nil
		})
	}
	reg := inbox.NewRegistry()
	reg.On("order_created", record("email"), record("stock"))
	r := newRunner(t, pool, reg)

	recs := []*inbox.Record{newRecord(t, "order_created", "1"), newRecord(t, "order_created", "2"), newRecord(t, "order_created", "3")}
	set(t, r, recs...)
	res := drain(t, r)

	for _, rec := range recs {
		for _, key := range []string{"email", "stock"} {
			row := inboxtest.RequireStatus(t, pool, rec.ID(), key, inbox.Done)
			if row.Attempts != 1 {
				t.Errorf("%s/%s: %d attempts, want 1", rec.ID(), key, row.Attempts)
			}
		}
	}
	inboxtest.RequireCounts(t, pool, map[inbox.Status]int{inbox.Done: 6})
	if res.Rounds != 1 || res.Counts[inbox.Done] != 6 || len(res.Unfinished) != 0 {
		t.Errorf("result: %d rounds, counts %v, unfinished %v; want 1 round, 6 done, none unfinished",
			res.Rounds, res.Counts, res.Unfinished)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(ran) != 6 {
		t.Errorf("handler runs: %v; want each of 6 once", ran)
	}
	for k, n := range ran {
		if n != 1 {
			t.Errorf("%s ran %d times", k, n)
		}
	}

	// Nothing stored: Drain returns at once.
	if res := drain(t, r); res.Rounds != 1 || res.Counts[inbox.Done] != 6 {
		t.Errorf("second drain: %+v", res)
	}
}

func TestDrainFailingHandlerToDead(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	var runs atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
		return fmt.Errorf("smtp: attempt %d refused", runs.Add(1))
	}))
	var dead atomic.Int32
	r := newRunner(t, pool, reg, append(fastRetries, inbox.OnDeadCallback(func(context.Context, inbox.DeadRecord) {
		dead.Add(1)
	}))...)
	rec := newRecord(t, "order_created", "{}")
	set(t, r, rec)

	start := time.Now()
	drain(t, r)
	t.Logf("drained to dead in %v", time.Since(start))

	row := inboxtest.RequireStatus(t, pool, rec.ID(), "email", inbox.Dead)
	if row.Attempts != 3 || row.LastError != "smtp: attempt 3 refused" {
		t.Errorf("dead row: %d attempts, last error %q; want 3, %q", row.Attempts, row.LastError, "smtp: attempt 3 refused")
	}
	if n := runs.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
	if n := dead.Load(); n != 1 {
		t.Errorf("dead callback ran %d times before Drain returned, want 1", n)
	}
	ev := inboxtest.Event(t, pool, rec.ID())
	var kinds []string
	for _, h := range ev.History {
		kinds = append(kinds, h.Kind)
	}
	if strings.Join(kinds, ",") != "failed,failed,dead" {
		t.Errorf("history kinds %v, want failed, failed, dead", kinds)
	}
	inboxtest.RequireCounts(t, pool, map[inbox.Status]int{inbox.Dead: 1})
}

func TestDrainRetryWindow(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	var runs atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
		runs.Add(1)
		return errors.New("refused")
	}))
	// Each retry is due 300 to 600 ms after the failure.
	r := newRunner(t, pool, reg, inbox.WithMaxRetryAttempt(3), inbox.WithRetryBackoff(600*time.Millisecond, 600*time.Millisecond))
	rec := newRecord(t, "order_created", "{}")
	set(t, r, rec)

	// Under the default window, the first retry is too far ahead.
	res := drain(t, r)
	row := inboxtest.RequireStatus(t, pool, rec.ID(), "email", inbox.Failed)
	if row.Attempts != 1 || runs.Load() != 1 {
		t.Errorf("after the first Drain: %d attempts, %d runs; want 1, 1", row.Attempts, runs.Load())
	}
	if len(res.Unfinished) != 1 || res.Unfinished[0].EventID != rec.ID() || res.Counts[inbox.Failed] != 1 {
		t.Errorf("result %+v; want the failed row unfinished", res)
	}

	// A Runner drains again, with a new Inbox each time; this time it
	// waits for the retries.
	res = drain(t, r, inboxtest.RetryWindow(time.Second))
	inboxtest.RequireStatus(t, pool, rec.ID(), "email", inbox.Dead)
	if n := runs.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3", n)
	}
	if len(res.Unfinished) != 0 || res.Counts[inbox.Dead] != 1 {
		t.Errorf("result %+v; want the row dead", res)
	}
}

func TestDrainLeavesLaterRetries(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
		return inbox.RetryAfter(time.Hour, errors.New("rate limited"))
	}))
	r := newRunner(t, pool, reg)
	rec := newRecord(t, "order_created", "{}")
	set(t, r, rec)

	res := drain(t, r)
	row := inboxtest.RequireStatus(t, pool, rec.ID(), "email", inbox.Failed)
	if row.NextAttemptAt == nil || time.Until(*row.NextAttemptAt) < 50*time.Minute {
		t.Errorf("next attempt at %v, want in an hour", row.NextAttemptAt)
	}
	if len(res.Unfinished) != 1 {
		t.Errorf("unfinished %v, want the row waiting for its retry", res.Unfinished)
	}
}

func TestDrainTxHandler(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	if _, err := pool.Exec(t.Context(), `CREATE TABLE reservations (event_id uuid PRIMARY KEY, sku text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.TxHandlerFunc("reserve", func(ctx context.Context, tx pgx.Tx, payload []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		_, err := tx.Exec(ctx, `INSERT INTO reservations (event_id, sku) VALUES ($1, $2)`, a.EventID, string(payload))
		return err
	}))
	r := newRunner(t, pool, reg)
	recs := []*inbox.Record{newRecord(t, "order_created", "A1"), newRecord(t, "order_created", "B2")}
	set(t, r, recs...)
	drain(t, r)

	for _, rec := range recs {
		inboxtest.RequireStatus(t, pool, rec.ID(), "reserve", inbox.Done)
		var sku string
		err := pool.QueryRow(t.Context(), `SELECT sku FROM reservations WHERE event_id = $1`, rec.ID()).Scan(&sku)
		if err != nil || sku != string(rec.Payload()) {
			t.Errorf("reservation of %s: %q, %v; want %q", rec.ID(), sku, err, rec.Payload())
		}
	}
}

func TestParallelTestsAreIsolated(t *testing.T) {
	t.Parallel()
	// The same event id in two tests at once: each has its own table.
	id := uuid.New()
	for _, tc := range []struct {
		name string
		fail bool
		want inbox.Status
	}{
		{"done", false, inbox.Done},
		{"dead", true, inbox.Dead},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pool := inboxtest.NewPool(t)
			reg := inbox.NewRegistry()
			reg.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
				if tc.fail {
					return inbox.Discard(errors.New("bad payload"))
				}
				return nil
			}))
			r := newRunner(t, pool, reg)
			rec, err := inbox.NewRecord(id, "order_created", []byte(tc.name))
			if err != nil {
				t.Fatal(err)
			}
			set(t, r, rec, newRecord(t, "order_created", tc.name))
			drain(t, r)
			inboxtest.RequireStatus(t, pool, id, "email", tc.want)
			inboxtest.RequireCounts(t, pool, map[inbox.Status]int{tc.want: 2})
			if ev := inboxtest.Event(t, pool, id); string(ev.Payload) != tc.name {
				t.Errorf("payload %q, want %q", ev.Payload, tc.name)
			}
			var schema string
			if err := pool.QueryRow(t.Context(), `SELECT current_schema()`).Scan(&schema); err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(schema, "t_testparalleltestsareisolated_"+tc.name) {
				t.Errorf("schema %q is not named after the test", schema)
			}
		})
	}
}

func TestDrainRunsRecordsStoredByHandlers(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	reg := inbox.NewRegistry()
	var r *inboxtest.Runner
	var shipped atomic.Int32
	reg.On("order_paid", inbox.HandlerFunc("ship", func(ctx context.Context, p []byte) error {
		rec, err := inbox.NewRecord(uuid.NewSHA1(uuid.NameSpaceOID, p), "order_shipped", p)
		if err != nil {
			return err
		}
		return r.Client().Set(ctx, rec)
	}))
	reg.On("order_shipped", inbox.HandlerFunc("notify", func(context.Context, []byte) error {
		shipped.Add(1)
		return nil
	}))
	r = newRunner(t, pool, reg)
	set(t, r, newRecord(t, "order_paid", "1"), newRecord(t, "order_paid", "2"))
	drain(t, r)
	if n := shipped.Load(); n != 2 {
		t.Errorf("notify ran %d times, want 2", n)
	}
	inboxtest.RequireCounts(t, pool, map[inbox.Status]int{inbox.Done: 4})
}

func TestDrainLeavesRowsItCannotRun(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	ok := func(key string) inbox.Handler {
		return inbox.HandlerFunc(key, func(context.Context, []byte) error { return nil })
	}
	// Another service stores rows for a handler this Runner does not have.
	other := inbox.NewRegistry()
	other.On("order_created", ok("email"), ok("audit"))
	set(t, newRunner(t, pool, other), newRecord(t, "order_created", "x"))

	reg := inbox.NewRegistry()
	reg.On("order_created", ok("email"))
	reg.On("order_paid", ok("invoice"))
	r := newRunner(t, pool, reg)
	if err := r.Admin().Pause(t.Context(), "order_paid", "", "test", "paused"); err != nil {
		t.Fatal(err)
	}
	paid := newRecord(t, "order_paid", "y")
	set(t, r, paid)

	res := drain(t, r)
	var left []string
	for _, row := range res.Unfinished {
		left = append(left, row.EventType+"/"+row.HandlerKey)
	}
	if got := strings.Join(left, " "); got != "order_created/audit order_paid/invoice" &&
		got != "order_paid/invoice order_created/audit" {
		t.Errorf("unfinished %v; want the paused and the unregistered row", left)
	}
	inboxtest.RequireCounts(t, pool, map[inbox.Status]int{inbox.Null: 2, inbox.Done: 1})

	if err := r.Admin().Resume(t.Context(), "order_paid", ""); err != nil {
		t.Fatal(err)
	}
	drain(t, r)
	inboxtest.RequireStatus(t, pool, paid.ID(), "invoice", inbox.Done)
}

// TestDrainContextEnds is not parallel: it checks that no worker
// goroutine is left once Drain has returned.
func TestDrainContextEnds(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler func(ctx context.Context, _ []byte) error
	}{
		{"handler blocks", func(ctx context.Context, _ []byte) error {
			<-ctx.Done()
			return context.Cause(ctx)
		}},
		{"handler retries for ever", func(context.Context, []byte) error {
			return inbox.RetryAfter(time.Millisecond, errors.New("busy"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := inboxtest.NewPool(t)
			reg := inbox.NewRegistry()
			reg.On("order_created", inbox.HandlerFunc("email", tc.handler))
			r := newRunner(t, pool, reg)
			set(t, r, newRecord(t, "order_created", "{}"))

			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := r.Drain(ctx)
			elapsed := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Drain: %v; want context.DeadlineExceeded", err)
			}
			if !strings.Contains(err.Error(), "order_created/email") {
				t.Errorf("Drain's error does not list the row it waited for: %v", err)
			}
			t.Logf("Drain returned after %v: %v", elapsed, err)
			if elapsed > 2*time.Second {
				t.Errorf("Drain returned %v after its context ended", elapsed-300*time.Millisecond)
			}
			if leaked := testenv.Leaked(2*time.Second, testenv.InboxCode); leaked != "" {
				t.Fatalf("worker goroutines still running after Drain returned:\n%s", leaked)
			}
		})
	}
}

func TestNewRunnerRejectsBadConfig(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	if _, err := inboxtest.NewRunner(pool, inbox.NewRegistry()); !errors.Is(err, inbox.ErrInvalidRegistry) {
		t.Errorf("empty registry: %v; want ErrInvalidRegistry", err)
	}
	reg := inbox.NewRegistry()
	reg.On("a", inbox.HandlerFunc("k", func(context.Context, []byte) error { return nil }))
	if _, err := inboxtest.NewRunner(pool, reg, inbox.WithMaxRetryAttempt(0)); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("bad option: %v; want ErrInvalidConfig", err)
	}
}

// failure runs fn with a testing.TB that records its failure instead of
// failing t, and returns the failure message ("" if fn passed).
func failure(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	rec := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(rec)
	}()
	<-done
	return rec.msg
}

type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatal(args ...any) {
	r.msg = fmt.Sprint(args...)
	runtime.Goexit()
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Errorf(format string, args ...any) { r.msg = fmt.Sprintf(format, args...) }

func TestAssertionMessages(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	reg := inbox.NewRegistry()
	reg.On("order_created",
		inbox.HandlerFunc("email", func(context.Context, []byte) error { return errors.New("smtp refused") }),
		inbox.HandlerFunc("stock", func(context.Context, []byte) error { return nil }))
	r := newRunner(t, pool, reg, fastRetries...)
	rec := newRecord(t, "order_created", "{}")
	set(t, r, rec)
	drain(t, r)

	for _, tc := range []struct {
		name string
		fn   func(tb testing.TB)
		want []string
	}{
		{"passes", func(tb testing.TB) {
			inboxtest.RequireStatus(tb, pool, rec.ID(), "stock", inbox.Done)
			inboxtest.RequireCounts(tb, pool, map[inbox.Status]int{inbox.Done: 1, inbox.Dead: 1})
		}, nil},
		{"wrong status", func(tb testing.TB) {
			inboxtest.RequireStatus(tb, pool, rec.ID(), "email", inbox.Done)
		}, []string{"status dead, want done", "attempt 3 of 3", "last error: smtp refused", "history:", "failed, attempt 1: smtp refused", "dead, attempt 3"}},
		{"no such handler", func(tb testing.TB) {
			inboxtest.RequireStatus(tb, pool, rec.ID(), "sms", inbox.Done)
		}, []string{`has no row for handler "sms"`, "order_created/email: dead", "order_created/stock: done"}},
		{"no such event", func(tb testing.TB) {
			inboxtest.RequireStatus(tb, pool, uuid.Nil, "email", inbox.Done)
		}, []string{"no row of event 00000000-0000-0000-0000-000000000000 is stored"}},
		{"wrong counts", func(tb testing.TB) {
			inboxtest.RequireCounts(tb, pool, map[inbox.Status]int{inbox.Done: 2})
		}, []string{"got null=0 progress=0 failed=0 done=1 dead=1, want null=0 progress=0 failed=0 done=2 dead=0",
			"rows not done:", "order_created/email: dead, attempt 3 of 3, last error: smtp refused"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := failure(t, tc.fn)
			if tc.want == nil && msg != "" {
				t.Fatalf("failed: %s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("message does not contain %q:\n%s", w, msg)
				}
			}
		})
	}
}

// A dead callback runs while the worker stops; a record it stores after
// Drain's check must still run: Drain checks again after Stop and starts
// another round.
func TestDrainChecksAgainAfterStop(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("charge", func(context.Context, []byte) error {
		return inbox.Discard(errors.New("card declined"))
	}))
	reg.On("charge_failed", inbox.HandlerFunc("notify", func(context.Context, []byte) error { return nil }))
	var r *inboxtest.Runner
	r = newRunner(t, pool, reg, inbox.OnDeadCallback(func(ctx context.Context, dead inbox.DeadRecord) {
		// Late enough that Drain has found nothing to wait for: Stop
		// delivers this callback.
		time.Sleep(300 * time.Millisecond)
		rec, err := inbox.NewRecord(uuid.NewSHA1(dead.EventID, nil), "charge_failed", nil)
		if err == nil {
			err = r.Client().Set(ctx, rec)
		}
		if err != nil {
			t.Errorf("dead callback: %v", err)
		}
	}))
	rec := newRecord(t, "order_created", "{}")
	set(t, r, rec)
	res := drain(t, r)

	inboxtest.RequireStatus(t, pool, rec.ID(), "charge", inbox.Dead)
	inboxtest.RequireStatus(t, pool, uuid.NewSHA1(rec.ID(), nil), "notify", inbox.Done)
	if res.Rounds != 2 {
		t.Errorf("%d rounds, want 2", res.Rounds)
	}
}

// A row in progress is waited for, even when another worker holds it.
func TestDrainWaitsForRowsInProgress(t *testing.T) {
	t.Parallel()
	pool := inboxtest.NewPool(t)
	started := make(chan struct{})
	release := make(chan struct{})
	slow := inbox.NewRegistry()
	slow.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
		close(started)
		<-release
		return nil
	}))
	other, err := inbox.New(pool, slow, inbox.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecord(t, "order_created", "{}")
	if err := other.Client().Set(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	if err := other.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := other.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	<-started

	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("email", func(context.Context, []byte) error {
		t.Error("the Runner's handler ran a row another worker holds")
		return nil
	}))
	r := newRunner(t, pool, reg)
	drained := make(chan error, 1)
	go func() {
		_, err := r.Drain(t.Context())
		drained <- err
	}()
	select {
	case err := <-drained:
		t.Fatalf("Drain returned while a row was in progress: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	inboxtest.RequireStatus(t, pool, rec.ID(), "email", inbox.Done)
}
