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

// tally is what the hooks saw.
type tally struct {
	mu                                 sync.Mutex
	sets, setRecords, setNew, setDup   int
	setConflicting, setTx              int
	claimed, rescued, written, lost    int
	outcomes                           map[string]int // handler key/outcome
	dead                               map[string]int // handler key
	minLag                             time.Duration
	runsWithAttempt, negativeDurations int
	retentions, retentionDeleted       int64
	hookErrs                           []error
}

func (t *tally) hooks() inbox.Hooks {
	t.outcomes, t.dead, t.minLag = map[string]int{}, map[string]int{}, time.Hour
	return inbox.Hooks{
		OnSet: func(_ context.Context, e inbox.SetEvent) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.sets++
			t.setRecords += e.Records
			t.setNew += e.Result.New
			t.setDup += e.Result.Duplicates
			t.setConflicting += e.Result.Conflicting
			if e.Tx {
				t.setTx++
			}
			if e.Err != nil {
				t.hookErrs = append(t.hookErrs, e.Err)
			}
		},
		OnClaim: func(e inbox.ClaimEvent) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.claimed += e.Rows
			t.rescued += e.Rescued
		},
		OnRun: func(ctx context.Context, e inbox.RunEvent) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.outcomes[e.Attempt.HandlerKey+"/"+string(e.Outcome)]++
			t.minLag = min(t.minLag, e.Lag)
			if a, ok := inbox.AttemptFromContext(ctx); ok && a.EventID == e.Attempt.EventID {
				t.runsWithAttempt++
			}
			if e.Duration < 0 || e.Lag < 0 {
				t.negativeDurations++
			}
		},
		OnWrite: func(e inbox.WriteEvent) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.written += e.Rows
			t.lost += e.Lost
		},
		OnDead: func(rec inbox.DeadRecord) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.dead[rec.HandlerKey]++
		},
		OnRetention: func(e inbox.RetentionEvent) {
			t.mu.Lock()
			defer t.mu.Unlock()
			t.retentions++
			t.retentionDeleted += e.RowsDeleted
		},
	}
}

// TestHooksSeeEveryEvent: for a known workload the hooks count exactly
// what happened, and a second set of hooks that panics in every call
// changes nothing but the log.
func TestHooksSeeEveryEvent(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var flaky sync.Map
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("ok", func(context.Context, []byte) error { return nil }))
	reg.Handle("order", inbox.HandlerFunc("flaky", func(_ context.Context, p []byte) error {
		if _, again := flaky.LoadOrStore(string(p), true); !again {
			return errors.New("first attempt fails")
		}
		return nil
	}))
	reg.Handle("order", inbox.HandlerFunc("bad", func(context.Context, []byte) error { return errors.New("always fails") }),
		inbox.HandlerMaxAttempts(2))
	reg.Handle("order", inbox.HandlerFunc("snooze", func(_ context.Context, p []byte) error {
		if _, again := flaky.LoadOrStore("s"+string(p), true); !again {
			return inbox.RetryAfter(time.Millisecond, errors.New("later"))
		}
		return inbox.Discard(errors.New("not wanted"))
	}))
	var tl tally
	var panics atomic.Int64
	boom := func() { panics.Add(1); panic("hook bug") }
	logs := &testenv.LogLines{}
	ib := start(t, pool, reg, testenv.Fast(t,
		inbox.WithHooks(tl.hooks()),
		inbox.WithHooks(inbox.Hooks{
			OnSet:   func(context.Context, inbox.SetEvent) { boom() },
			OnClaim: func(inbox.ClaimEvent) { boom() },
			OnRun:   func(context.Context, inbox.RunEvent) { boom() },
			OnWrite: func(inbox.WriteEvent) { boom() },
			OnDead:  func(inbox.DeadRecord) { boom() },
		}),
		inbox.WithLogger(logs.Logger()))...)

	const events = 30
	var recs []*inbox.Record
	for i := range events {
		recs = append(recs, testenv.Record(t, uuid.New(), "order", fmt.Sprint(i)))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatalf("Set: %v", err)
	}
	// Redeliver the first 10 in a transaction, one of them changed.
	changed := testenv.Record(t, recs[0].ID(), "order", "changed")
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return ib.Client().SetTx(ctx, tx, append([]*inbox.Record{changed}, recs[1:10]...)...)
	})
	if err != nil {
		t.Fatalf("SetTx: %v", err)
	}
	if err := ib.Client().Set(ctx); !errors.Is(err, inbox.ErrNoRecords) {
		t.Fatalf("empty Set: %v", err)
	}
	waitCounts(t, ib, 30*time.Second, map[inbox.Status]int{inbox.Null: 0, inbox.Progress: 0, inbox.Failed: 0,
		inbox.Done: 2 * events, inbox.Dead: 2 * events})
	// The write and dead hooks run once the results committed, the log
	// line once the panic is recovered: wait for the last of them.
	runs := 7 * events
	testenv.Eventually(t, 10*time.Second, "the hooks of the last results", func() (bool, error) {
		tl.mu.Lock()
		defer tl.mu.Unlock()
		return tl.written >= runs && tl.dead["bad"]+tl.dead["snooze"] >= 2*events &&
			int64(logs.Count("hook panicked")) == panics.Load(), nil
	})

	tl.mu.Lock()
	defer tl.mu.Unlock()
	// The empty Set is reported too, with its error.
	if tl.sets != 3 || tl.setRecords != events+10 || tl.setNew != events || tl.setDup != 9 || tl.setConflicting != 1 || tl.setTx != 1 {
		t.Errorf("Set hooks: %d calls, %d records, %d new, %d duplicates, %d conflicting, %d in tx",
			tl.sets, tl.setRecords, tl.setNew, tl.setDup, tl.setConflicting, tl.setTx)
	}
	if len(tl.hookErrs) != 1 || !errors.Is(tl.hookErrs[0], inbox.ErrNoRecords) {
		t.Errorf("Set hooks' errors %v, want the empty Set's ErrNoRecords", tl.hookErrs)
	}
	want := map[string]int{
		"ok/done": events, "flaky/failed": events, "flaky/done": events, "bad/failed": events, "bad/dead": events,
		"snooze/retry_later": events, "snooze/discarded": events,
	}
	if fmt.Sprint(tl.outcomes) != fmt.Sprint(want) {
		t.Errorf("run outcomes\n got %v\nwant %v", tl.outcomes, want)
	}
	if tl.claimed != runs || tl.written != runs || tl.lost != 0 || tl.rescued != 0 {
		t.Errorf("claimed %d, written %d, lost %d, rescued %d; want %d runs claimed and written", tl.claimed, tl.written, tl.lost, tl.rescued, runs)
	}
	if tl.dead["bad"] != events || tl.dead["snooze"] != events || len(tl.dead) != 2 {
		t.Errorf("dead: %v", tl.dead)
	}
	if tl.runsWithAttempt != runs || tl.negativeDurations != 0 || tl.minLag <= 0 {
		t.Errorf("%d runs had their attempt in the context, %d negative durations, min lag %v", tl.runsWithAttempt, tl.negativeDurations, tl.minLag)
	}
	// Every call of the panicking set panicked, and was logged.
	if n := logs.Count("hook panicked"); int64(n) != panics.Load() || n < 2+runs {
		t.Errorf("%d hook panics, %d logged", panics.Load(), n)
	}
}

// ctxTrace is a Propagator for tests: the trace is a context value.
type ctxTrace struct{ panicky bool }

type traceKey struct{}

func (p ctxTrace) Inject(ctx context.Context) string {
	s, _ := ctx.Value(traceKey{}).(string)
	if p.panicky && s == "panic" {
		panic("inject bug")
	}
	return s
}

func (ctxTrace) Extract(ctx context.Context, stored string) context.Context {
	return context.WithValue(ctx, traceKey{}, "extracted:"+stored)
}

// TestPropagator: the trace context of Set's and SetTx's contexts reaches
// the handler's context, in another Inbox; one too long, or an Inject that
// panics, stores none.
func TestPropagator(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var mu sync.Mutex
	seen := map[string]string{} // payload: trace in the handler's context / Attempt.TraceContext
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("k", func(ctx context.Context, p []byte) error {
		a, _ := inbox.AttemptFromContext(ctx)
		v, _ := ctx.Value(traceKey{}).(string)
		mu.Lock()
		seen[string(p)] = v + " / " + a.TraceContext
		mu.Unlock()
		return nil
	}))
	producer, err := inbox.New(pool, reg, inbox.WithPropagator(ctxTrace{panicky: true}), inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	with := func(trace string) context.Context { return context.WithValue(ctx, traceKey{}, trace) }
	long := strings.Repeat("x", inbox.MaxTraceContextLength+1)
	for _, c := range []struct{ payload, trace string }{{"a", "00-trace-a-01"}, {"b", ""}, {"c", long}, {"d", "panic"}} {
		if err := producer.Client().Set(with(c.trace), testenv.Record(t, uuid.New(), "e", c.payload)); err != nil {
			t.Fatalf("Set %s: %v", c.payload, err)
		}
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return producer.Client().SetTx(with("00-trace-tx-01"), tx, testenv.Record(t, uuid.New(), "e", "tx"))
	})
	if err != nil {
		t.Fatalf("SetTx: %v", err)
	}
	// A record's own trace context wins over the context's, per record.
	err = producer.Client().Set(with("00-trace-ctx-01"),
		testenv.Record(t, uuid.New(), "e", "own").WithTraceContext("00-trace-own-01"), testenv.Record(t, uuid.New(), "e", "ctx"))
	if err != nil {
		t.Fatalf("Set with a record's own trace: %v", err)
	}
	tooLong := testenv.Record(t, uuid.New(), "e", "x").WithTraceContext(long)
	if err := producer.Client().Set(ctx, tooLong); !errors.Is(err, inbox.ErrInvalidRecord) {
		t.Fatalf("Set of a record with a trace context too long: %v, want ErrInvalidRecord", err)
	}
	consumer := start(t, pool, reg, testenv.Fast(t, inbox.WithPropagator(ctxTrace{}))...)
	waitCounts(t, consumer, 10*time.Second, map[inbox.Status]int{inbox.Done: 7})
	want := map[string]string{
		"own": "extracted:00-trace-own-01 / 00-trace-own-01", "ctx": "extracted:00-trace-ctx-01 / 00-trace-ctx-01",
		"a": "extracted:00-trace-a-01 / 00-trace-a-01", "b": " / ", "c": " / ", "d": " / ",
		"tx": "extracted:00-trace-tx-01 / 00-trace-tx-01",
	}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("traces seen by the handler\n got %q\nwant %q", seen, want)
	}
	if _, err := inbox.New(pool, reg, inbox.WithPropagator(nil)); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Fatalf("WithPropagator(nil): %v", err)
	}
}
