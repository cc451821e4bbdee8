package inbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// The failures of a hostile or careless user (issue "Engine v2", §1). Each
// test here failed before the fix it names.

// Two consumers store overlapping batches of the same ids in opposite
// orders, as a broker redelivering a batch to another consumer does.
// Before: "deadlock detected (40P01)" from Set within a few rounds.
func TestOverlappingSetsDoNotDeadlock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("a", badNoop), inbox.HandlerFunc("b", badNoop))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	const rounds, size = 40, 200
	for round := range rounds {
		recs := make([]*inbox.Record, size)
		for i := range recs {
			recs[i] = testenv.Record(t, uuid.New(), "e", fmt.Sprint(round, "/", i))
		}
		rev := make([]*inbox.Record, size)
		for i := range recs {
			rev[i] = recs[size-1-i]
		}
		var wg sync.WaitGroup
		errs := make([]error, 3)
		for i, batch := range [][]*inbox.Record{recs, rev, append(rev[size/2:], recs[:size/2]...)} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = ib.Client().Set(ctx, batch...)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != rounds*size*2 {
		t.Fatalf("%d rows stored, want %d (each event once per handler)", rows, rounds*size*2)
	}
}

// A dead callback that panics is recovered, logged and followed by the next
// record; so is an error callback. Before: the panic crashed the process.
func TestCallbacksThatPanic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("doomed", inbox.HandlerFunc("h", func(context.Context, []byte) error { return errors.New("no") }))
	reg.On("fine", inbox.HandlerFunc("h", badNoop))
	var calls atomic.Int64
	seen := make(chan uuid.UUID, 100)
	var errCalls atomic.Int64
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(1),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) {
			calls.Add(1)
			seen <- rec.EventID
			panic("callback panics on " + rec.EventID.String())
		}),
		inbox.OnErrorCallback(func(error) {
			errCalls.Add(1)
			panic("error callback panics")
		}))...)
	const n = 20
	want := map[uuid.UUID]bool{}
	var recs []*inbox.Record
	for range n {
		id := uuid.New()
		want[id] = true
		recs = append(recs, testenv.Record(t, id, "doomed", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	for range n {
		select {
		case id := <-seen:
			if !want[id] {
				t.Fatalf("dead callback for an unknown or repeated event %s", id)
			}
			delete(want, id)
		case <-time.After(20 * time.Second):
			t.Fatalf("dead callbacks: %d of %d delivered", n-len(want), n)
		}
	}
	// The inbox still works: a machinery error reaches the (panicking)
	// error callback, and the next event is processed.
	reg2 := inbox.NewRegistry()
	reg2.On("other", inbox.HandlerFunc("h", badNoop))
	start(t, pool, reg2, testenv.Fast(t, inbox.WithRetention(10*time.Millisecond, 1),
		inbox.OnErrorCallback(func(error) { errCalls.Add(1); panic("error callback panics") }))...)
	if _, err := pool.Exec(ctx, `DROP TABLE inbox_maintenance`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "error callbacks", func() (bool, error) { return errCalls.Load() >= 2, nil })
	if err := ib.Client().Set(ctx, testenv.Record(t, uuid.New(), "fine", "")); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1, inbox.Dead: n})
	if calls.Load() != n {
		t.Fatalf("dead callback called %d times, want %d", calls.Load(), n)
	}
}

// 100,000 rows die at once while the dead callback blocks for 10 s. Claims,
// result writes and lease renewals go on: healthy rows whose handlers run
// longer than a lease are never run twice, and every dead callback arrives
// once the callback unblocks. Memory stays bounded because the callbacks
// owed are kept in the table, not in memory. Before: a blocked callback
// stopped renewals, leases expired and healthy rows ran twice.
func TestBlockedDeadCallbackStallsNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	const doomed, healthy = 100_000, 40
	const lease = 1500 * time.Millisecond
	var healthyRuns sync.Map // event id → *atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("doomed", inbox.HandlerFunc("h", func(context.Context, []byte) error {
		return inbox.Discard(errors.New("unprocessable"))
	}))
	reg.On("healthy", inbox.HandlerFunc("h", func(ctx context.Context, p []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		n, _ := healthyRuns.LoadOrStore(a.EventID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		select { // longer than a lease: only renewals keep the row ours
		case <-time.After(2 * lease):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	release := make(chan struct{})
	blockedOnce := make(chan struct{})
	var once sync.Once
	var delivered atomic.Int64
	var dupes atomic.Int64
	var got sync.Map
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithLease(lease), inbox.WithBatchSize(1000),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) {
			once.Do(func() {
				close(blockedOnce)
				<-release
			})
			if _, loaded := got.LoadOrStore(rec.EventID, true); loaded {
				dupes.Add(1)
			}
			delivered.Add(1)
		}))...)

	// The doomed rows go in with COPY-speed batches of 10,000.
	for b := 0; b < doomed; b += 10_000 {
		recs := make([]*inbox.Record, 10_000)
		for i := range recs {
			recs[i] = testenv.Record(t, uuid.New(), "doomed", "")
		}
		if err := ib.Client().Set(ctx, recs...); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-blockedOnce:
	case <-time.After(60 * time.Second):
		t.Fatal("the dead callback was never called")
	}
	blockedAt := time.Now()
	var healthyIDs []uuid.UUID
	var recs []*inbox.Record
	for range healthy {
		id := uuid.New()
		healthyIDs = append(healthyIDs, id)
		recs = append(recs, testenv.Record(t, id, "healthy", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	// Meanwhile every doomed row dies, and the healthy ones finish.
	var owed int
	var heap runtime.MemStats
	var peakHeap uint64
	testenv.Eventually(t, 60*time.Second, "all rows finished while the callback blocks", func() (bool, error) {
		runtime.ReadMemStats(&heap)
		peakHeap = max(peakHeap, heap.HeapInuse)
		c, err := ib.Counts(ctx)
		return c[inbox.Dead] == doomed && c[inbox.Done] == healthy, err
	})
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE dead_callback_by IS NOT NULL`).Scan(&owed); err != nil {
		t.Fatal(err)
	}
	if owed < doomed/2 {
		t.Fatalf("%d dead callbacks owed in the table while the callback blocks, want most of %d", owed, doomed)
	}
	// The scenario: the callback stays blocked for 10 s in all.
	<-time.After(time.Until(blockedAt.Add(10 * time.Second)))
	close(release)
	testenv.Eventually(t, 120*time.Second, "every dead callback delivered", func() (bool, error) {
		return delivered.Load() == doomed, nil
	})
	for _, id := range healthyIDs {
		n, ok := healthyRuns.Load(id)
		if !ok || n.(*atomic.Int32).Load() != 1 {
			t.Errorf("healthy event %s ran %v times, want once", id, n)
		}
	}
	if dupes.Load() != 0 {
		t.Fatalf("%d dead callbacks delivered twice", dupes.Load())
	}
	if peakHeap > 512<<20 {
		t.Fatalf("heap in use peaked at %d MiB while 100,000 callbacks were owed", peakHeap>>20)
	}
	t.Logf("owed in the table while blocked: %d; peak heap in use %d MiB", owed, peakHeap>>20)
}

// Two instances with different attempt limits share a table: each row
// keeps the limit of the instance (or handler) that stored it. Before: the
// instance with the lower limit killed the other's rows with a false
// "lease expired".
func TestAttemptLimitBelongsToTheRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var runs sync.Map
	count := func(ctx context.Context, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		n, _ := runs.LoadOrStore(a.EventID, new(atomic.Int32))
		n.(*atomic.Int32).Add(1)
		return errors.New("always fails")
	}
	regFor := func(fn func(context.Context, []byte) error) *inbox.Registry {
		r := inbox.NewRegistry()
		r.On("e", inbox.HandlerFunc("h", fn))
		return r
	}
	dead := make(chan inbox.DeadRecord, 10)
	onDead := inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec })
	generous := start(t, pool, regFor(count), testenv.Fast(t, inbox.WithMaxRetryAttempt(7), onDead)...)
	start(t, pool, regFor(count), testenv.Fast(t, inbox.WithMaxRetryAttempt(2), onDead)...)
	id := uuid.New()
	if err := generous.Client().Set(ctx, testenv.Record(t, id, "e", "")); err != nil {
		t.Fatal(err)
	}
	var rec inbox.DeadRecord
	select {
	case rec = <-dead:
	case <-time.After(30 * time.Second):
		t.Fatal("no dead callback")
	}
	if rec.Attempts != 7 || errors.Is(rec.Err, inbox.ErrLeaseExpired) || rec.Err.Error() != "always fails" {
		t.Fatalf("dead record = %+v, want 7 attempts failing with the handler's error", rec)
	}
	states, err := generous.Lookup(ctx, id)
	if err != nil || len(states) != 1 {
		t.Fatalf("Lookup = %+v, %v", states, err)
	}
	if s := states[0]; s.Attempts != 7 || s.MaxAttempts != 7 || s.LastError != "always fails" {
		t.Fatalf("row = %+v, want 7 of 7 attempts, last error the handler's", s)
	}
	n, _ := runs.Load(id)
	if got := n.(*atomic.Int32).Load(); got != 7 {
		t.Fatalf("handler ran %d times, want 7", got)
	}
}

// A handler returning an error of several megabytes, for 260 rows at
// once: together over PostgreSQL's 1 GiB message limit. Each row dies with
// its error's start and end stored, bounded, and so does the dead record.
// Before: the result write failed and the rows died later with a false
// "lease expired".
func TestHugeErrorTexts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	const rows = 260
	big := "START " + strings.Repeat("x", 4_300_000) + " END"
	huge := errors.New(big)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(context.Context, []byte) error { return huge }))
	var mu sync.Mutex
	var deadRecs []inbox.DeadRecord
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(1), inbox.WithBatchSize(rows), inbox.WithConcurrency(rows),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) {
			mu.Lock()
			deadRecs = append(deadRecs, rec)
			mu.Unlock()
		}))...)
	var recs []*inbox.Record
	for range rows {
		recs = append(recs, testenv.Record(t, uuid.New(), "e", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 60*time.Second, map[inbox.Status]int{inbox.Dead: rows})
	var maxLen int
	var lost int
	if err := pool.QueryRow(ctx, `SELECT max(octet_length(last_error)), count(*) FILTER (WHERE last_error LIKE '%lease expired%') FROM inbox_records`).
		Scan(&maxLen, &lost); err != nil {
		t.Fatal(err)
	}
	if maxLen > inbox.MaxErrorLength || lost != 0 {
		t.Fatalf("longest last_error %d bytes (limit %d); %d rows say lease expired", maxLen, inbox.MaxErrorLength, lost)
	}
	states, err := ib.Lookup(ctx, recs[0].ID())
	if err != nil || len(states) != 1 {
		t.Fatalf("Lookup = %v, %v", states, err)
	}
	text := states[0].LastError
	if !strings.HasPrefix(text, "START xxx") || !strings.HasSuffix(text, "xxx END") || !strings.Contains(text, "bytes left out") {
		t.Fatalf("last_error %q... does not keep the start and the end", text[:min(len(text), 80)])
	}
	testenv.Eventually(t, 10*time.Second, "dead callbacks", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(deadRecs) == rows, nil
	})
	for _, rec := range deadRecs {
		if n := len(rec.Err.Error()); n > inbox.MaxErrorLength {
			t.Fatalf("dead record error is %d bytes, want at most %d", n, inbox.MaxErrorLength)
		}
	}
}

// A record is immutable: NewRecord copies the payload and Payload returns
// a copy. Before: NewRecord kept the caller's slice, and a consumer that
// reused its read buffer changed records it had already built.
func TestRecordDoesNotAliasThePayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	got := make(chan string, 2)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(_ context.Context, p []byte) error { got <- string(p); return nil }))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	buf := []byte("original")
	rec, err := inbox.NewRecord(uuid.New(), "e", buf)
	if err != nil {
		t.Fatal(err)
	}
	copy(buf, "MUTATED!")
	p := rec.Payload()
	copy(p, "changed!")
	if !bytes.Equal(rec.Payload(), []byte("original")) {
		t.Fatalf("record payload = %q after the caller changed its buffers, want %q", rec.Payload(), "original")
	}
	if err := ib.Client().Set(ctx, rec); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "original" {
			t.Fatalf("handler got %q, want %q", s, "original")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called")
	}
}

// Migrate and Start detect a table dropped by hand after migrating, and
// say which. Before: Migrate reported success and every claim failed.
func TestMigrateDetectsDroppedTable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	if _, err := pool.Exec(ctx, `DROP TABLE inbox_records`); err != nil {
		t.Fatal(err)
	}
	err := inbox.Migrate(ctx, pool)
	if !errors.Is(err, inbox.ErrSchema) || !strings.Contains(err.Error(), "inbox_records") {
		t.Fatalf("Migrate after DROP TABLE inbox_records = %v, want ErrSchema naming the table", err)
	}
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", badNoop))
	for _, opts := range [][]inbox.Option{nil, {inbox.WithoutMigrations()}} {
		ib, err := inbox.New(pool, reg, append(opts, inbox.WithLogger(testenv.Logger(t)))...)
		if err != nil {
			t.Fatal(err)
		}
		if err := ib.Start(ctx); !errors.Is(err, inbox.ErrSchema) || !strings.Contains(err.Error(), "inbox_records") {
			t.Fatalf("Start (options %d) = %v, want ErrSchema naming inbox_records", len(opts), err)
		}
	}
}

// Stop called from inside a handler or a callback of the same Inbox
// returns ErrStopInHandler at once, and the Inbox keeps running. Stop of
// another Inbox from a handler works. Before: Stop waited for the handler
// that called it, for ever.
func TestStopFromInsideAHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	other := start(t, pool, func() *inbox.Registry {
		r := inbox.NewRegistry()
		r.On("unused", inbox.HandlerFunc("h", badNoop))
		return r
	}(), testenv.Fast(t)...)
	var ib *inbox.Inbox
	results := make(chan error, 10)
	reg := inbox.NewRegistry()
	reg.On("stop", inbox.HandlerFunc("self", func(ctx context.Context, _ []byte) error {
		results <- ib.Stop(ctx)
		results <- ib.Stop(context.Background()) // the handler's context not passed on
		return nil
	}), inbox.HandlerFunc("other", func(ctx context.Context, _ []byte) error {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		results <- other.Stop(sctx)
		return nil
	}), inbox.HandlerFunc("dies", func(context.Context, []byte) error { return inbox.Discard(nil) }))
	ib = start(t, pool, reg, testenv.Fast(t, inbox.OnDeadCallback(func(ctx context.Context, _ inbox.DeadRecord) {
		results <- ib.Stop(ctx)
	}))...)
	if err := ib.Client().Set(ctx, testenv.Record(t, uuid.New(), "stop", "")); err != nil {
		t.Fatal(err)
	}
	var inHandler, stoppedOther int
	for range 4 {
		select {
		case err := <-results:
			switch {
			case errors.Is(err, inbox.ErrStopInHandler):
				inHandler++
			case err == nil:
				stoppedOther++
			default:
				t.Fatalf("Stop = %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("Stop from inside: %d refused, %d other stopped so far", inHandler, stoppedOther)
		}
	}
	if inHandler != 3 || stoppedOther != 1 {
		t.Fatalf("%d Stops refused and %d others stopped, want 3 and 1", inHandler, stoppedOther)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 2, inbox.Dead: 1})
	if err := ib.Client().Set(ctx, testenv.Record(t, uuid.New(), "stop", "")); err != nil {
		t.Fatal(err) // still running
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 4, inbox.Dead: 2})
}

// A TxHandler that commits or rolls back the inbox's transaction gets an
// error saying so, and the attempt fails with ErrTxControl. Before: "tx is
// closed".
func TestTxHandlerMustNotEndItsTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE writes (k text)`); err != nil {
		t.Fatal(err)
	}
	refused := make(chan error, 3)
	reg := inbox.NewRegistry()
	reg.On("e",
		inbox.TxHandlerFunc("commits", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			if _, err := tx.Exec(ctx, `INSERT INTO writes VALUES ('commits')`); err != nil {
				return err
			}
			err := tx.Commit(ctx)
			refused <- err
			return err
		}),
		inbox.TxHandlerFunc("rolls-back", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			refused <- tx.Rollback(ctx)
			return nil // and pretends all is well
		}),
		inbox.TxHandlerFunc("raw-commit", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			_, err := tx.Exec(ctx, `COMMIT`)
			return err
		}),
		inbox.TxHandlerFunc("failed-statement", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			_, _ = tx.Exec(ctx, `SELECT 1/0`) // error ignored
			return nil
		}),
	)
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(1))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "")); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		select {
		case err := <-refused:
			if !errors.Is(err, inbox.ErrTxControl) {
				t.Fatalf("tx.Commit or tx.Rollback in ProcessTx = %v, want ErrTxControl", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("handlers not called")
		}
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Dead: 4})
	states, err := ib.Lookup(ctx, id)
	if err != nil || len(states) != 4 {
		t.Fatalf("Lookup = %v, %v", states, err)
	}
	want := map[string]string{
		"commits":          "ProcessTx called Commit",
		"rolls-back":       "ProcessTx called Rollback",
		"raw-commit":       "ended by a statement of ProcessTx",
		"failed-statement": "a statement of the TxHandler failed",
	}
	for _, s := range states {
		if !strings.Contains(s.LastError, want[s.HandlerKey]) {
			t.Errorf("%s: last error %q, want it to say %q", s.HandlerKey, s.LastError, want[s.HandlerKey])
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM writes WHERE k = 'commits'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the refused commit's write: %d rows, %v; want it rolled back", n, err)
	}
}

// With WithoutNotify the inbox neither listens nor notifies, and finds new
// rows by polling alone.
func TestPollOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("e", r.handler("h"))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithoutNotify(), inbox.WithIterationRate(50*time.Millisecond))...)
	var schema string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	listener, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Release()
	channel := schema + ".inbox_records"
	if _, err := listener.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := ib.Client().Set(ctx, testenv.Record(t, uuid.New(), "e", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 5})
	var listening int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND query LIKE '%'||$1||'%' AND pid <> $2`,
		schema, listener.Conn().PgConn().PID()).Scan(&listening); err != nil {
		t.Fatal(err)
	}
	if listening != 0 {
		t.Fatalf("%d connections LISTEN for the inbox, want none", listening)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if n, err := listener.Conn().WaitForNotification(wctx); err == nil {
		t.Fatalf("Set notified %q although WithoutNotify was given", n.Channel)
	}
	if got := r.snapshot(); len(got) != 5 {
		t.Fatalf("runs = %v, want 5 events once each", got)
	}
}

// A lease that cannot be renewed (here another transaction holds the row's
// lock, so every renewal skips it) makes the worker cancel the handler,
// with ErrLeaseLost as the cause, before the lease runs out, although no
// renewal statement failed. Once the lease has ended the worker claims the
// row again by itself: no notification announces it, and this worker
// polls once an hour.
func TestUnrenewableLeaseCancelsHandler(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	const lease = 900 * time.Millisecond
	started := make(chan int, 2)
	cause := make(chan error, 1)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(ctx context.Context, _ []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		started <- a.Number
		if a.Number > 1 {
			return nil
		}
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	}))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithLease(lease), inbox.WithHandlerTimeout(time.Hour),
		inbox.WithIterationRate(time.Hour))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "")); err != nil {
		t.Fatal(err)
	}
	if n := <-started; n != 1 {
		t.Fatalf("first run is attempt %d", n)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var due time.Time
	if err := tx.QueryRow(ctx, `SELECT due_at FROM inbox_records WHERE event_id = $1 FOR UPDATE`, id).Scan(&due); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-cause:
		if !errors.Is(err, inbox.ErrLeaseLost) {
			t.Fatalf("handler cancelled with cause %v, want ErrLeaseLost", err)
		}
		var now time.Time
		if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
			t.Fatal(err)
		}
		if !now.Before(due) {
			t.Fatalf("handler cancelled at %v, after its lease ended at %v", now, due)
		}
	case <-time.After(10 * lease):
		t.Fatal("the handler was not cancelled although its lease was not renewed")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-started:
		if n != 2 {
			t.Fatalf("run after the lease ended is attempt %d, want 2", n)
		}
	case <-time.After(10 * lease):
		t.Fatal("the row was not claimed again within 10 leases after the worker gave it up")
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1})
}

// TxHandlers that hold their transactions longer than a lease, more of
// them than the pool has connections, do not starve the worker's lease
// renewals: a worker opens at most the pool's size minus three TxHandler
// transactions, and the others wait for a turn.
func TestLongTxHandlersLeaveConnectionsForRenewals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, 5) // two TxHandler transactions at once
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	const lease, events = 900 * time.Millisecond, 6
	release := make(chan struct{})
	var inTx, most atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("e", inbox.TxHandlerFunc("h", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
		n := inTx.Add(1)
		defer inTx.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}))
	var leaseErrs atomic.Int32
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithLease(lease), inbox.WithConcurrency(events),
		inbox.OnErrorCallback(func(err error) {
			if errors.Is(err, inbox.ErrLeaseLost) {
				leaseErrs.Add(1)
			}
		}))...)
	var recs []*inbox.Record
	for range events {
		recs = append(recs, testenv.Record(t, uuid.New(), "e", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	// Hold the transactions until the leases have been renewed twice over
	// (the database's due times moved past two leases from the claim).
	var first time.Time
	testenv.Eventually(t, 10*time.Second, "TxHandlers in their transactions", func() (bool, error) {
		return inTx.Load() >= 2, nil
	})
	if err := pool.QueryRow(ctx, `SELECT min(due_at) FROM inbox_records WHERE status = 'progress'`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*lease, "leases renewed while TxHandlers hold their transactions", func() (bool, error) {
		var due time.Time
		err := pool.QueryRow(ctx, `SELECT min(due_at) FROM inbox_records WHERE status = 'progress'`).Scan(&due)
		return due.After(first.Add(2 * lease)), err
	})
	close(release)
	waitCounts(t, ib, 30*time.Second, map[inbox.Status]int{inbox.Done: events})
	if m := most.Load(); m != 2 {
		t.Fatalf("%d TxHandlers held transactions at once on a pool of 5, want 2", m)
	}
	if n := leaseErrs.Load(); n != 0 {
		t.Fatalf("%d lease errors reported: renewals waited behind TxHandlers", n)
	}
}
