package inbox_test

import (
	"context"
	"errors"
	"fmt"
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

// wrapped is what a user's logging or metrics wrapper looks like: it hides
// every method of the handler it wraps but Key and Process.
type wrapped struct{ inbox.Handler }

// Settings given at registration survive wrapping: a wrapped handler keeps
// its timeout and attempt limit; its backoff applies; and a handler's
// concurrency limit holds while other handlers of the Inbox run freely.
// Before, wrapping dropped a handler's Timeout method silently.
func TestHandlerSettingsAtRegistration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var running, peak atomic.Int32
	release := make(chan struct{})
	var freeRuns atomic.Int32
	var attempts sync.Map // event id → attempt start times
	reg := inbox.NewRegistry()
	reg.Handle("slow", wrapped{inbox.HandlerFunc("times-out", func(ctx context.Context, _ []byte) error {
		<-ctx.Done()
		return ctx.Err()
	})}, inbox.HandlerTimeout(30*time.Millisecond), inbox.HandlerMaxAttempts(3),
		inbox.HandlerBackoff(200*time.Millisecond, 200*time.Millisecond))
	reg.Handle("limited", inbox.HandlerFunc("two-at-a-time", func(ctx context.Context, _ []byte) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		return nil
	}), inbox.HandlerConcurrency(2))
	reg.On("free", inbox.HandlerFunc("free", func(context.Context, []byte) error { freeRuns.Add(1); return nil }))
	dead := make(chan inbox.DeadRecord, 1)
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithHandlerTimeout(time.Hour), inbox.WithMaxRetryAttempt(10),
		inbox.WithBatchSize(50), inbox.WithConcurrency(20),
		inbox.WithMiddleware(func(ctx context.Context, a inbox.Attempt, next func(context.Context) error) error {
			if a.EventType == "slow" {
				at, _ := attempts.LoadOrStore(a.EventID, &timeList{})
				at.(*timeList).add(time.Now())
			}
			return next(ctx)
		}),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec }))...)

	slowID := uuid.New()
	var recs []*inbox.Record
	recs = append(recs, testenv.Record(t, slowID, "slow", ""))
	for range 30 {
		recs = append(recs, testenv.Record(t, uuid.New(), "limited", ""))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	// The limited handler's backlog holds up nobody: free events run while
	// two limited ones block.
	testenv.Eventually(t, 10*time.Second, "two limited handlers running", func() (bool, error) { return running.Load() == 2, nil })
	var free []*inbox.Record
	for range 20 {
		free = append(free, testenv.Record(t, uuid.New(), "free", ""))
	}
	if err := ib.Client().Set(ctx, free...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "free events done", func() (bool, error) { return freeRuns.Load() == 20, nil })
	var held int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records WHERE event_type = 'limited' AND status = 'progress'`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if held > 4 {
		t.Fatalf("%d limited rows claimed while 2 run, want at most twice the limit (4)", held)
	}
	close(release)
	waitCounts(t, ib, 20*time.Second, map[inbox.Status]int{inbox.Done: 50, inbox.Dead: 1})
	if peak.Load() != 2 {
		t.Fatalf("at most %d limited handlers ran at once, want exactly the limit, 2", peak.Load())
	}
	rec := <-dead
	if rec.EventID != slowID || rec.Attempts != 3 || !errors.Is(rec.Err, inbox.ErrHandlerTimeout) ||
		!strings.Contains(rec.Err.Error(), "after 30ms") {
		t.Fatalf("dead record = %+v, want 3 attempts timing out after 30ms", rec)
	}
	at, _ := attempts.Load(slowID)
	times := at.(*timeList).get()
	for i := 1; i < len(times); i++ {
		// The handler's backoff pauses 100ms to 200ms after each 30ms
		// attempt; the Inbox's own would pause 2.5ms to 20ms.
		if gap := times[i].Sub(times[i-1]); gap < 125*time.Millisecond {
			t.Fatalf("attempt %d came %v after the previous one, want the handler's backoff (100ms to 200ms after a 30ms attempt)", i+1, gap)
		}
	}
	states, err := ib.Lookup(ctx, slowID)
	if err != nil || len(states) != 1 || states[0].MaxAttempts != 3 {
		t.Fatalf("Lookup = %+v, %v; want the handler's limit (3) stored", states, err)
	}
}

type timeList struct {
	mu sync.Mutex
	ts []time.Time
}

func (l *timeList) add(t time.Time) { l.mu.Lock(); l.ts = append(l.ts, t); l.mu.Unlock() }
func (l *timeList) get() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.ts...)
}

// Discard makes the row dead at once; RetryAfter makes it due again after
// the pause without counting the attempt. Both show in last_error, Lookup
// and the dead callback.
func TestOutcomes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	errBadJSON := errors.New("payload is not JSON")
	var snoozes atomic.Int32
	var snoozedAt, retriedAt atomic.Int64
	reg := inbox.NewRegistry()
	reg.On("e",
		inbox.HandlerFunc("discards", func(context.Context, []byte) error {
			return fmt.Errorf("parse: %w", inbox.Discard(errBadJSON))
		}),
		inbox.HandlerFunc("snoozes", func(ctx context.Context, _ []byte) error {
			if snoozes.Add(1) <= 3 {
				snoozedAt.Store(time.Now().UnixNano())
				return inbox.RetryAfter(150*time.Millisecond, errors.New("rate limited"))
			}
			retriedAt.Store(time.Now().UnixNano())
			return nil
		}),
	)
	dead := make(chan inbox.DeadRecord, 2)
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(2),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec }))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "{")); err != nil {
		t.Fatal(err)
	}
	var rec inbox.DeadRecord
	select {
	case rec = <-dead:
	case <-time.After(10 * time.Second):
		t.Fatal("no dead callback for the discarded row")
	}
	if rec.HandlerKey != "discards" || rec.Attempts != 1 || !errors.Is(rec.Err, inbox.ErrDiscarded) ||
		!errors.Is(rec.Err, errBadJSON) {
		t.Fatalf("dead record = %+v, want the first attempt, wrapping ErrDiscarded and the cause", rec)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 1, inbox.Dead: 1})
	// Three snoozes with a limit of two attempts: not counted.
	if gap := time.Duration(retriedAt.Load() - snoozedAt.Load()); gap < 150*time.Millisecond {
		t.Fatalf("retried %v after RetryAfter(150ms)", gap)
	}
	states, err := ib.Lookup(ctx, id)
	if err != nil || len(states) != 2 {
		t.Fatalf("Lookup = %+v, %v", states, err)
	}
	for _, s := range states {
		switch s.HandlerKey {
		case "discards":
			if s.Status != inbox.Dead || s.LastError != "parse: discarded: payload is not JSON" {
				t.Errorf("discarded row: %s, %q", s.Status, s.LastError)
			}
		case "snoozes":
			if s.Status != inbox.Done || s.Attempts != 1 || s.LastError != "retry after 150ms: rate limited" {
				t.Errorf("snoozed row: %s after %d attempts, %q; want done after 1 counted attempt", s.Status, s.Attempts, s.LastError)
			}
		}
	}
	select {
	case extra := <-dead:
		t.Fatalf("second dead callback: %+v", extra)
	default:
	}
}

// Middleware wraps every run, outermost first, sees the attempt, can pass
// a context on, and cannot make a TxHandler's rolled-back writes count as
// done; an error it returns after the transaction committed leaves the row
// done.
func TestMiddleware(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE writes (k text)`); err != nil {
		t.Fatal(err)
	}
	type ctxKey struct{}
	var mu sync.Mutex
	var trace []string
	log := func(s string) { mu.Lock(); trace = append(trace, s); mu.Unlock() }
	reg := inbox.NewRegistry()
	reg.On("e",
		inbox.HandlerFunc("plain", func(ctx context.Context, p []byte) error {
			log(fmt.Sprintf("plain sees %v", ctx.Value(ctxKey{})))
			return errors.New("plain fails")
		}),
		inbox.TxHandlerFunc("tx-fails", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			if _, err := tx.Exec(ctx, `INSERT INTO writes VALUES ('tx-fails')`); err != nil {
				return err
			}
			return errors.New("tx fails after writing")
		}),
		inbox.TxHandlerFunc("tx-ok", func(ctx context.Context, tx pgx.Tx, _ []byte) error {
			_, err := tx.Exec(ctx, `INSERT INTO writes VALUES ('tx-ok')`)
			return err
		}),
		inbox.HandlerFunc("skipped", func(context.Context, []byte) error {
			log("skipped ran")
			return nil
		}),
	)
	outer := func(ctx context.Context, a inbox.Attempt, next func(context.Context) error) error {
		log(fmt.Sprintf("outer %s attempt %d of %d tx=%v payload %s", a.HandlerKey, a.Number, a.MaxAttempts, a.Transactional, a.Payload))
		err := next(context.WithValue(ctx, ctxKey{}, "outer's value"))
		switch a.HandlerKey {
		case "plain", "tx-fails":
			return nil // swallows the error
		case "tx-ok":
			return errors.New("middleware fails after the commit")
		}
		return err
	}
	inner := func(ctx context.Context, a inbox.Attempt, next func(context.Context) error) error {
		log("inner " + a.HandlerKey)
		if a.HandlerKey == "skipped" {
			return nil // never calls next
		}
		return next(ctx)
	}
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(1), inbox.WithMiddleware(outer), inbox.WithMiddleware(inner))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "e", "P")); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 3, inbox.Dead: 1})
	states, err := ib.Lookup(ctx, id)
	if err != nil || len(states) != 4 {
		t.Fatalf("Lookup = %v, %v", states, err)
	}
	for _, s := range states {
		want := inbox.Done
		if s.HandlerKey == "tx-fails" {
			want = inbox.Dead // its writes rolled back: it cannot be done
		}
		if s.Status != want {
			t.Errorf("%s: %s (%q), want %s", s.HandlerKey, s.Status, s.LastError, want)
		}
	}
	var writes []string
	rows, err := pool.Query(ctx, `SELECT k FROM writes ORDER BY k`)
	if err != nil {
		t.Fatal(err)
	}
	writes, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || strings.Join(writes, ",") != "tx-ok" {
		t.Fatalf("writes = %v, %v; want only tx-ok's", writes, err)
	}
	mu.Lock()
	got := strings.Join(trace, "\n")
	mu.Unlock()
	for _, want := range []string{
		"outer plain attempt 1 of 1 tx=false payload P", "inner plain", "plain sees outer's value",
		"outer tx-ok attempt 1 of 1 tx=true payload P", "inner skipped",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("middleware trace lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "skipped ran") {
		t.Errorf("the handler ran although its middleware did not call next")
	}
}

// A claim whose payloads add up to more than its budget withholds them;
// each is read when its handler starts, plain or transactional.
func TestWithheldPayloads(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	t.Cleanup(inbox.SetClaimBudget(1000))
	var mu sync.Mutex
	got := map[string]int{}
	seen := func(p []byte) { mu.Lock(); got[string(p)]++; mu.Unlock() }
	reg := inbox.NewRegistry()
	reg.On("big",
		inbox.HandlerFunc("plain", func(_ context.Context, p []byte) error { seen(p); return nil }),
		inbox.TxHandlerFunc("tx", func(_ context.Context, _ pgx.Tx, p []byte) error { seen(p); return nil }))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	var recs []*inbox.Record
	for i := range 10 {
		recs = append(recs, testenv.Record(t, uuid.New(), "big", strings.Repeat(fmt.Sprint(i), 600)))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 20})
	for i := range 10 {
		if n := got[strings.Repeat(fmt.Sprint(i), 600)]; n != 2 {
			t.Fatalf("payload %d reached %d handlers, want 2", i, n)
		}
	}
}
