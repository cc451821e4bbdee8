package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// errBadInput is the error the handlers of TestBadInput wrap or panic with.
var errBadInput = errors.New("bad-input sentinel")

// badEnv is what the cases of TestBadInput share.
type badEnv struct {
	// writes is a migrated schema that no case may leave rows in.
	writes *pgxpool.Pool
	// client stores into writes for an Inbox that is not started, whose
	// registry has "order" → "reserve", "notify".
	client *inbox.Client
	// procs is a migrated schema where the handler cases run.
	procs *pgxpool.Pool
	// running is a started Inbox on procs.
	running *inbox.Inbox
}

// badCase is one bad input and the error it must produce.
type badCase struct {
	name string
	// Exactly one of run and handler is set. run returns the error under
	// test. handler is registered under the event type name with key "h",
	// run by a started Inbox allowing one attempt; the error under test is
	// the dead callback's DeadRecord.Err, and the row's LastError must be
	// its text.
	run     func(t *testing.T, e *badEnv) error
	handler inbox.Handler

	// ok says the input must be handled, not refused: the error must be nil.
	ok bool
	// is is the sentinel the error must wrap (errors.Is), if any.
	is error
	// msg are substrings the error message must contain, naming what is
	// wrong.
	msg []string
	// check makes further assertions on the error (errors.As and such).
	check func(t *testing.T, err error)
	// writes says the error came from a write to badEnv.writes, which must
	// be left empty.
	writes bool
	// parallel runs the case alongside the other parallel ones.
	parallel bool
	// bug names the library defect this case exposed when it was written,
	// printed when the case fails.
	bug string
}

// badTimeout is a handler whose Timeout method returns d.
type badTimeout struct {
	key string
	d   time.Duration
}

func (h badTimeout) Key() string                           { return h.key }
func (h badTimeout) Timeout() time.Duration                { return h.d }
func (h badTimeout) Process(context.Context, []byte) error { return nil }

// badDeaf ignores its context until released.
type badDeaf struct{ release <-chan struct{} }

func (badDeaf) Key() string            { return "h" }
func (badDeaf) Timeout() time.Duration { return 50 * time.Millisecond }
func (h badDeaf) Process(context.Context, []byte) error {
	<-h.release
	return nil
}

// badPanicValue is a struct passed to panic.
type badPanicValue struct {
	Code   int
	Reason string
}

// doneSpy is a context that reports the first call of its Done method.
// Inbox.Stop looks at its context only once it has stopped claiming and
// waits for the running handlers, so the report means Stop has begun.
type doneSpy struct {
	context.Context
	once   sync.Once
	called chan struct{}
}

func (c *doneSpy) Done() <-chan struct{} {
	c.once.Do(func() { close(c.called) })
	return c.Context.Done()
}

func badNoop(context.Context, []byte) error { return nil }

// badRegistry returns the error New gives for a registry set up by fill.
func badRegistry(fill func(r *inbox.Registry)) func(*testing.T, *badEnv) error {
	return func(t *testing.T, e *badEnv) error {
		r := inbox.NewRegistry()
		fill(r)
		_, err := inbox.New(e.writes, r)
		return err
	}
}

// badOptions returns the error New gives for opts and an otherwise good
// registry.
func badOptions(opts ...inbox.Option) func(*testing.T, *badEnv) error {
	return func(t *testing.T, e *badEnv) error {
		r := inbox.NewRegistry()
		r.On("order", inbox.HandlerFunc("reserve", badNoop))
		_, err := inbox.New(e.writes, r, opts...)
		return err
	}
}

// badRecord returns the error NewRecord gives.
func badRecord(id uuid.UUID, eventType string, payload []byte, dates ...time.Time) func(*testing.T, *badEnv) error {
	return func(*testing.T, *badEnv) error {
		r, err := inbox.NewRecord(id, eventType, payload, dates...)
		if err == nil && r == nil {
			return errors.New("NewRecord returned neither a record nor an error")
		}
		return err
	}
}

// badSet returns the error Set gives for the records made by recs.
func badSet(recs func(t *testing.T) []*inbox.Record) func(*testing.T, *badEnv) error {
	return func(t *testing.T, e *badEnv) error {
		return e.client.Set(context.Background(), recs(t)...)
	}
}

// badTx returns the error SetTx gives inside a transaction on writes that
// prepare has put in some state; the transaction is rolled back after.
func badTx(prepare func(ctx context.Context, tx pgx.Tx) error, recs func(t *testing.T) []*inbox.Record) func(*testing.T, *badEnv) error {
	return func(t *testing.T, e *badEnv) error {
		ctx := context.Background()
		tx, err := e.writes.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // a no-op once closed
		if err := prepare(ctx, tx); err != nil {
			t.Fatalf("prepare transaction: %v", err)
		}
		return e.client.SetTx(ctx, tx, recs(t)...)
	}
}

func goodOrder(t *testing.T) *inbox.Record {
	return testenv.Record(t, uuid.New(), "order", `{"id":1}`)
}

func badIsPgCode(code string) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != code {
			t.Errorf("error %v is not a *pgconn.PgError with SQLSTATE %s", err, code)
		}
	}
}

// badPanic checks that err is a *PanicError with a stack whose value
// satisfies value.
func badPanic(value func(v any) bool) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		var pe *inbox.PanicError
		if !errors.As(err, &pe) {
			t.Fatalf("error %v (%T) is not a *inbox.PanicError", err, err)
		}
		if len(pe.Stack) == 0 || !strings.Contains(string(pe.Stack), "badinput_test.go") {
			t.Errorf("PanicError.Stack does not show the panicking handler:\n%s", pe.Stack)
		}
		if !value(pe.Value) {
			t.Errorf("PanicError.Value = %#v (%T), not the value passed to panic", pe.Value, pe.Value)
		}
	}
}

// TestBadInput feeds every public entry point inputs it must refuse or
// survive, and checks the sentinel, that the message names the problem,
// and that a refused write left the table as it was.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	long := strings.Repeat("a", 256)
	longRunes := strings.Repeat("é", 128) // 128 characters, 256 bytes
	deafRelease := make(chan struct{})

	cases := []badCase{
		// ---- NewRecord ----
		{name: "NewRecord nil id", run: badRecord(uuid.Nil, "order", nil),
			is: inbox.ErrInvalidRecord, msg: []string{"nil UUID"}},
		{name: "NewRecord empty event type", run: badRecord(uuid.New(), "", nil),
			is: inbox.ErrInvalidRecord, msg: []string{`event type "" is blank`}},
		{name: "NewRecord blank event type", run: badRecord(uuid.New(), " \t\n\u00a0", nil),
			is: inbox.ErrInvalidRecord, msg: []string{"event type", "is blank"}},
		{name: "NewRecord event type of 256 bytes", run: badRecord(uuid.New(), long, nil),
			is: inbox.ErrInvalidRecord, msg: []string{"event type is 256 bytes long, the limit is 255"}},
		{name: "NewRecord event type of 128 two-byte runes", run: badRecord(uuid.New(), longRunes, nil),
			is: inbox.ErrInvalidRecord, msg: []string{"event type is 256 bytes long"}},
		{name: "NewRecord event type not UTF-8", run: badRecord(uuid.New(), "order\xff\xfe", nil),
			is: inbox.ErrInvalidRecord, msg: []string{`event type "order\xff\xfe" is not valid UTF-8`}},
		{name: "NewRecord event type with NUL", run: badRecord(uuid.New(), "ord\x00er", nil),
			is: inbox.ErrInvalidRecord, msg: []string{`event type "ord\x00er" contains a NUL byte`}},
		{name: "NewRecord zero event date", run: badRecord(uuid.New(), "order", nil, time.Time{}),
			is: inbox.ErrInvalidRecord, msg: []string{"event date is the zero time"}},
		{name: "NewRecord two event dates", run: badRecord(uuid.New(), "order", nil, time.Now(), time.Now()),
			is: inbox.ErrInvalidRecord, msg: []string{"got 2 event dates, want at most one"}},
		{name: "NewRecord event date past PostgreSQL's range", writes: true,
			bug: "NewRecord accepts a date PostgreSQL cannot store; Set then fails with SQLSTATE 22008 instead of ErrInvalidRecord",
			run: func(t *testing.T, e *badEnv) error {
				r, err := inbox.NewRecord(uuid.New(), "order", nil, time.Date(300000, 1, 1, 0, 0, 0, 0, time.UTC))
				if err != nil {
					return err
				}
				return e.client.Set(ctx, r)
			},
			is: inbox.ErrInvalidRecord, msg: []string{"event date"}},
		{name: "NewRecord event date that overflows the wire encoding", writes: true,
			bug: "NewRecord accepts year -300000; Set then stores 284554-01-18 instead, silently",
			run: func(t *testing.T, e *badEnv) error {
				r, err := inbox.NewRecord(uuid.New(), "order", nil, time.Date(-300000, 1, 1, 0, 0, 0, 0, time.UTC))
				if err != nil {
					return err
				}
				return e.client.Set(ctx, r)
			},
			is: inbox.ErrInvalidRecord, msg: []string{"event date"}},

		// ---- Set and SetTx ----
		{name: "Set no records", writes: true,
			run: badSet(func(*testing.T) []*inbox.Record { return nil }),
			is:  inbox.ErrNoRecords, msg: []string{"no records"}},
		{name: "Set nil record", writes: true,
			run: badSet(func(*testing.T) []*inbox.Record { return []*inbox.Record{nil} }),
			is:  inbox.ErrInvalidRecord, msg: []string{"record 0", "record is nil"}},
		{name: "Set good record then nil record", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t), nil} }),
			is:  inbox.ErrInvalidRecord, msg: []string{"record 1", "record is nil"}},
		{name: "Set zero-value record", writes: true,
			run: badSet(func(*testing.T) []*inbox.Record { return []*inbox.Record{{}} }),
			is:  inbox.ErrInvalidRecord, msg: []string{"record 0", "nil UUID"}},
		{name: "Set blank ordering key", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t).WithOrderingKey("  ")} }),
			is:  inbox.ErrInvalidRecord, msg: []string{"record 0", "ordering key", "blank"}},
		{name: "Set ordering key with NUL", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record {
				return []*inbox.Record{goodOrder(t), goodOrder(t).WithOrderingKey("a\x00b")}
			}),
			is: inbox.ErrInvalidRecord, msg: []string{"record 1", "ordering key", "NUL"}},
		{name: "Set ordering key too long", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record {
				return []*inbox.Record{goodOrder(t).WithOrderingKey(strings.Repeat("k", inbox.MaxEventTypeLength+1))}
			}),
			is: inbox.ErrInvalidRecord, msg: []string{"record 0", "ordering key", "limit"}},
		{name: "Set unknown event type", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record {
				return []*inbox.Record{testenv.Record(t, uuid.New(), "payment", "")}
			}),
			is: inbox.ErrUnknownEventType, msg: []string{`"payment" (1)`, "nothing was stored", "SkipUnknown"}},
		{name: "Set good record and unknown ones", writes: true,
			run: badSet(func(t *testing.T) []*inbox.Record {
				return []*inbox.Record{goodOrder(t), testenv.Record(t, uuid.New(), "refund", ""),
					testenv.Record(t, uuid.New(), "payment", ""), testenv.Record(t, uuid.New(), "refund", "")}
			}),
			is: inbox.ErrUnknownEventType, msg: []string{`"payment" (1), "refund" (2)`, "nothing was stored"}},
		{name: "Set cancelled context", writes: true,
			run: func(t *testing.T, e *badEnv) error {
				cctx, cancel := context.WithCancel(ctx)
				cancel()
				return e.client.Set(cctx, goodOrder(t))
			},
			is: context.Canceled, msg: []string{"inbox: set 1 records"}},
		{name: "SetTx nil transaction", writes: true,
			run: func(t *testing.T, e *badEnv) error { return e.client.SetTx(ctx, nil, goodOrder(t)) },
			is:  inbox.ErrNilTx, msg: []string{"transaction is nil"}},
		{name: "SetTx no records", writes: true,
			run: badTx(func(context.Context, pgx.Tx) error { return nil },
				func(*testing.T) []*inbox.Record { return nil }),
			is: inbox.ErrNoRecords, msg: []string{"no records"}},
		{name: "SetTx committed transaction", writes: true,
			run: badTx(func(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) },
				func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t)} }),
			is: pgx.ErrTxClosed, msg: []string{"in transaction", "tx is closed"}},
		{name: "SetTx rolled-back transaction", writes: true,
			run: badTx(func(ctx context.Context, tx pgx.Tx) error { return tx.Rollback(ctx) },
				func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t)} }),
			is: pgx.ErrTxClosed, msg: []string{"in transaction", "tx is closed"}},
		{name: "SetTx aborted transaction", writes: true,
			run: badTx(func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SELECT 1/0`); err == nil {
					return errors.New("SELECT 1/0 succeeded")
				}
				return nil
			}, func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t)} }),
			check: badIsPgCode("25P02"), msg: []string{"in transaction", "current transaction is aborted"}},
		{name: "SetTx invalid record in a good transaction", writes: true,
			run: badTx(func(context.Context, pgx.Tx) error { return nil },
				func(t *testing.T) []*inbox.Record { return []*inbox.Record{goodOrder(t), {}} }),
			is: inbox.ErrInvalidRecord, msg: []string{"record 1", "nil UUID"}},

		// ---- New ----
		{name: "New nil pool", run: func(*testing.T, *badEnv) error {
			r := inbox.NewRegistry()
			r.On("order", inbox.HandlerFunc("reserve", badNoop))
			_, err := inbox.New(nil, r)
			return err
		}, is: inbox.ErrInvalidConfig, msg: []string{"pool is nil"}},
		{name: "New nil registry", run: func(_ *testing.T, e *badEnv) error {
			_, err := inbox.New(e.writes, nil)
			return err
		}, is: inbox.ErrInvalidRegistry, msg: []string{"registry is nil"}},
		{name: "New empty registry", run: badRegistry(func(*inbox.Registry) {}),
			is: inbox.ErrInvalidRegistry, msg: []string{"no handlers registered"}},
		{name: "New zero-value registry", run: func(_ *testing.T, e *badEnv) error {
			_, err := inbox.New(e.writes, &inbox.Registry{})
			return err
		}, is: inbox.ErrInvalidRegistry, msg: []string{"no handlers registered"}},
		{name: "Migrate nil pool", run: func(*testing.T, *badEnv) error { return inbox.Migrate(ctx, nil) },
			is: inbox.ErrInvalidConfig, msg: []string{"pool is nil"}},

		// ---- options ----
		{name: "nil Option", run: badOptions(inbox.WithConcurrency(1), nil),
			is: inbox.ErrInvalidConfig, msg: []string{"option 1 is nil"}},
		{name: "WithIterationRate zero", run: badOptions(inbox.WithIterationRate(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithIterationRate(0s)", "must be positive"}},
		{name: "WithIterationRate negative", run: badOptions(inbox.WithIterationRate(-time.Second)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithIterationRate(-1s)", "must be positive"}},
		{name: "WithIterationSeed negative", run: badOptions(inbox.WithIterationSeed(-1)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithIterationSeed(-1)", "between 0 and 100"}},
		{name: "WithIterationSeed above 100", run: badOptions(inbox.WithIterationSeed(101)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithIterationSeed(101)", "between 0 and 100"}},
		{name: "WithHandlerTimeout zero", run: badOptions(inbox.WithHandlerTimeout(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithHandlerTimeout(0s)", "must be positive"}},
		{name: "WithHandlerTimeout negative", run: badOptions(inbox.WithHandlerTimeout(-time.Millisecond)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithHandlerTimeout(-1ms)", "must be positive"}},
		{name: "WithMaxRetryAttempt zero", run: badOptions(inbox.WithMaxRetryAttempt(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithMaxRetryAttempt(0)", "at least 1"}},
		{name: "WithMaxRetryAttempt negative", run: badOptions(inbox.WithMaxRetryAttempt(-3)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithMaxRetryAttempt(-3)", "at least 1"}},
		{name: "WithRetention zero interval", run: badOptions(inbox.WithRetention(0, 30)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetention(0s)", "must be positive"}},
		{name: "WithRetention negative interval", run: badOptions(inbox.WithRetention(-time.Hour, 30)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetention(-1h0m0s)", "must be positive"}},
		{name: "WithRetention zero-day window", run: badOptions(inbox.WithRetention(time.Hour, 0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetention(0)", "at least 1 day"}},
		{name: "WithRetention negative window", run: badOptions(inbox.WithRetention(time.Hour, -5)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetention(-5)", "at least 1 day"}},
		{name: "WithRetention window past the calendar",
			bug: fmt.Sprintf("WithRetention(_, math.MaxInt) is accepted, and the retention cutoff "+
				"time.Now().AddDate(0, 0, -math.MaxInt) = %s lies in the future: the first retention run "+
				"deletes every done and dead row, so redelivered events run again",
				time.Now().AddDate(0, 0, -math.MaxInt).Format(time.DateOnly)),
			run: badOptions(inbox.WithRetention(time.Hour, math.MaxInt)),
			is:  inbox.ErrInvalidConfig, msg: []string{"WithRetention(9223372036854775807)", "at most"}},
		{name: "OnDeadCallback nil", run: badOptions(inbox.OnDeadCallback(nil)),
			is: inbox.ErrInvalidConfig, msg: []string{"OnDeadCallback(nil)", "must not be nil"}},
		{name: "OnErrorCallback nil", run: badOptions(inbox.OnErrorCallback(nil)),
			is: inbox.ErrInvalidConfig, msg: []string{"OnErrorCallback(nil)", "must not be nil"}},
		{name: "WithConcurrency zero", run: badOptions(inbox.WithConcurrency(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithConcurrency(0)", "between 1 and 100000"}},
		{name: "WithConcurrency negative", run: badOptions(inbox.WithConcurrency(-1)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithConcurrency(-1)", "between 1 and 100000"}},
		{name: "WithConcurrency too large", run: badOptions(inbox.WithConcurrency(100001)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithConcurrency(100001)", "between 1 and 100000"}},
		{name: "WithBatchSize zero", run: badOptions(inbox.WithBatchSize(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithBatchSize(0)", "between 1 and 10000"}},
		{name: "WithBatchSize above 10000", run: badOptions(inbox.WithBatchSize(10001)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithBatchSize(10001)", "between 1 and 10000"}},
		{name: "WithLogger nil", run: badOptions(inbox.WithLogger(nil)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithLogger(nil)", "must not be nil"}},
		{name: "WithUnknownEventTypes out of range", run: badOptions(inbox.WithUnknownEventTypes(2)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithUnknownEventTypes(2)", "RejectUnknown or SkipUnknown"}},
		{name: "WithUnknownEventTypes negative", run: badOptions(inbox.WithUnknownEventTypes(-1)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithUnknownEventTypes(-1)", "RejectUnknown or SkipUnknown"}},
		{name: "WithLease zero", run: badOptions(inbox.WithLease(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithLease(0s)", "between 300ms and 24h"}},
		{name: "WithLease just under 300ms", run: badOptions(inbox.WithLease(300*time.Millisecond - 1)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithLease(299.999999ms)", "between 300ms and 24h"}},
		{name: "WithLease over a day", run: badOptions(inbox.WithLease(25 * time.Hour)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithLease(25h0m0s)", "between 300ms and 24h"}},
		{name: "WithRetryBackoff zero base", run: badOptions(inbox.WithRetryBackoff(0, time.Second)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetryBackoff(0s)", "must be positive"}},
		{name: "WithRetryBackoff negative base", run: badOptions(inbox.WithRetryBackoff(-time.Second, time.Second)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetryBackoff(-1s)", "must be positive"}},
		{name: "WithRetryBackoff max below base", run: badOptions(inbox.WithRetryBackoff(2*time.Second, time.Second)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithRetryBackoff(1s)", "max must not be below base"}},
		{name: "WithMaxBacklog zero", run: badOptions(inbox.WithMaxBacklog(0)),
			is: inbox.ErrInvalidConfig, msg: []string{"WithMaxBacklog(0)", "at least 1"}},
		{name: "WithMaxBacklog negative for a type", run: badOptions(inbox.WithMaxBacklog(-1, "order")),
			is: inbox.ErrInvalidConfig, msg: []string{`WithMaxBacklog(-1, "order")`, "at least 1"}},
		{name: "WithMaxBacklog blank event type", run: badOptions(inbox.WithMaxBacklog(10, "order", " ")),
			is: inbox.ErrInvalidConfig, msg: []string{`WithMaxBacklog(10, "order", " ")`, `event type " " is blank`}},
		{name: "WithMaxBacklog event type not UTF-8", run: badOptions(inbox.WithMaxBacklog(10, "o\xff")),
			is: inbox.ErrInvalidConfig, msg: []string{"WithMaxBacklog", "not valid UTF-8"}},
		{name: "WithMaxBacklog unregistered event type", run: badOptions(inbox.WithMaxBacklog(10, "order"), inbox.WithMaxBacklog(5, "payment")),
			is: inbox.ErrInvalidConfig, msg: []string{`WithMaxBacklog(5, "payment")`, `no handler is registered for event type "payment"`}},
		{name: "WithMaxBacklog for a type, then for every type", ok: true,
			run: badOptions(inbox.WithMaxBacklog(5, "order"), inbox.WithMaxBacklog(7))},

		// ---- Registry.On, reported by New ----
		{name: "On empty event type", run: badRegistry(func(r *inbox.Registry) {
			r.On("", inbox.HandlerFunc("h", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "" is blank`}},
		{name: "On blank event type", run: badRegistry(func(r *inbox.Registry) {
			r.On(" \t ", inbox.HandlerFunc("h", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type " \t " is blank`}},
		{name: "On event type of 256 bytes", run: badRegistry(func(r *inbox.Registry) {
			r.On(long, inbox.HandlerFunc("h", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{"event type is 256 bytes long, the limit is 255"}},
		{name: "On event type not UTF-8", run: badRegistry(func(r *inbox.Registry) {
			r.On("\xc3\x28", inbox.HandlerFunc("h", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "\xc3(" is not valid UTF-8`}},
		{name: "On event type with NUL", run: badRegistry(func(r *inbox.Registry) {
			r.On("a\x00", inbox.HandlerFunc("h", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "a\x00" contains a NUL byte`}},
		{name: "On no handlers", run: badRegistry(func(r *inbox.Registry) { r.On("order") }),
			is: inbox.ErrInvalidRegistry, msg: []string{`event type "order" registered with no handler`}},
		{name: "On nil handler", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("ok", badNoop), nil)
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "order": handler 1 is nil`}},
		{name: "On empty handler key", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "order": handler key "" is blank`}},
		{name: "On blank handler key", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("\n", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`handler key "\n" is blank`}},
		{name: "On handler key of 256 bytes", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc(long, badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{"handler key is 256 bytes long"}},
		{name: "On handler key not UTF-8", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("k\xff", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`handler key "k\xff" is not valid UTF-8`}},
		{name: "On duplicate key in one call", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("k", badNoop), inbox.HandlerFunc("k", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`handler key "k" registered twice`}},
		{name: "On duplicate key across calls", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("k", badNoop))
			r.On("order", inbox.TxHandlerFunc("k", func(context.Context, pgx.Tx, []byte) error { return nil }))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "order": handler key "k" registered twice`}},
		{name: "On handler Timeout zero", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", badTimeout{"k", 0})
		}), is: inbox.ErrInvalidRegistry, msg: []string{`handler "k": Timeout() is 0s, must be positive`}},
		{name: "On handler Timeout negative", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", badTimeout{"k", -time.Second})
		}), is: inbox.ErrInvalidRegistry, msg: []string{`handler "k": Timeout() is -1s, must be positive`}},
		{name: "On HandlerFunc with nil function",
			bug: "On accepts HandlerFunc(key, nil); every event of the type then fails each attempt " +
				"with \"has a nil function\" until it is dead",
			run: badRegistry(func(r *inbox.Registry) { r.On("order", inbox.HandlerFunc("k", nil)) }),
			is:  inbox.ErrInvalidRegistry, msg: []string{`"k"`, "nil function"}},
		{name: "On every mistake is listed", run: badRegistry(func(r *inbox.Registry) {
			r.On("order", inbox.HandlerFunc("good", badNoop))
			r.On("", inbox.HandlerFunc("h", badNoop))
			r.On("refund")
			r.On("order", inbox.HandlerFunc("good", badNoop))
		}), is: inbox.ErrInvalidRegistry, msg: []string{`event type "" is blank`,
			`"refund" registered with no handler`, `handler key "good" registered twice`}},

		// ---- lifecycle ----
		{name: "Start twice", run: func(_ *testing.T, e *badEnv) error { return e.running.Start(ctx) },
			is: inbox.ErrAlreadyStarted, msg: []string{"already started"}},
		{name: "Start without migrations on an empty schema", run: func(t *testing.T, e *badEnv) error {
			pool := testenv.SchemaPool(t, testenv.Schema(t), 2)
			r := inbox.NewRegistry()
			r.On("order", inbox.HandlerFunc("reserve", badNoop))
			ib, err := inbox.New(pool, r, inbox.WithoutMigrations(), inbox.WithLogger(testenv.Logger(t)))
			if err != nil {
				t.Fatal(err)
			}
			return ib.Start(ctx)
		}, is: inbox.ErrSchema, msg: []string{"inbox_schema_version not found", "inbox.Migrate"}},

		// ---- handlers ----
		{name: "handler returns a wrapped error", parallel: true,
			handler: inbox.HandlerFunc("h", func(context.Context, []byte) error {
				return fmt.Errorf("x: %w", errBadInput)
			}),
			is: errBadInput, msg: []string{"x: bad-input sentinel"}},
		{name: "handler panics with an int", parallel: true,
			handler: inbox.HandlerFunc("h", func(context.Context, []byte) error { panic(42) }),
			check:   badPanic(func(v any) bool { return v == 42 }),
			msg:     []string{"inbox: handler panicked: 42"}},
		{name: "handler panics with a struct", parallel: true,
			handler: inbox.HandlerFunc("h", func(context.Context, []byte) error {
				panic(badPanicValue{Code: 7, Reason: "no stock"})
			}),
			check: badPanic(func(v any) bool { return v == badPanicValue{Code: 7, Reason: "no stock"} }),
			msg:   []string{"handler panicked", "7", "no stock"}},
		{name: "handler dereferences a nil pointer", parallel: true,
			handler: inbox.HandlerFunc("h", func(_ context.Context, p []byte) error {
				var v *badPanicValue
				if len(p) > 0 {
					return errors.New(v.Reason) // nil dereference
				}
				return nil
			}),
			check: func(t *testing.T, err error) {
				badPanic(func(v any) bool { _, ok := v.(runtime.Error); return ok })(t, err)
				var re runtime.Error
				if !errors.As(err, &re) {
					t.Errorf("errors.As(%v, runtime.Error) fails through the PanicError", err)
				}
			},
			msg: []string{"handler panicked", "nil pointer dereference"}},
		{name: "handler panics with a wrapped error", parallel: true,
			handler: inbox.HandlerFunc("h", func(context.Context, []byte) error {
				panic(fmt.Errorf("boom: %w", errBadInput))
			}),
			is:    errBadInput,
			check: badPanic(func(v any) bool { err, ok := v.(error); return ok && errors.Is(err, errBadInput) }),
			msg:   []string{"handler panicked: boom: bad-input sentinel"}},
		{name: "handler panics with nil", parallel: true,
			handler: inbox.HandlerFunc("h", func(context.Context, []byte) error { panic(nil) }),
			check: func(t *testing.T, err error) {
				badPanic(func(v any) bool { _, ok := v.(*runtime.PanicNilError); return ok })(t, err)
			},
			msg: []string{"handler panicked", "nil"}},
		{name: "handler ignores its context", parallel: true,
			handler: badDeaf{release: deafRelease},
			is:      inbox.ErrHandlerTimeout, msg: []string{"handler timed out after 50ms", "did not return"}},
		{name: "handler returns after Stop began", parallel: true, ok: true,
			run: badStopWhileRunning},
		{name: "WithHandlerTimeout of the longest Duration", parallel: true, ok: true,
			bug: "execute computes the lease renewal deadline as time.Now().Add(timeout + grace), which " +
				"overflows: the running handler's lease is never renewed, the row is claimed again while " +
				"the handler runs, and it runs several times at once",
			run: badLongestTimeout},
	}

	// The shared schemas and inboxes.
	writes, procs := testenv.MigratedPool(t), testenv.MigratedPool(t)
	wreg := inbox.NewRegistry()
	wreg.On("order", inbox.HandlerFunc("reserve", badNoop), inbox.HandlerFunc("notify", badNoop))
	wib, err := inbox.New(writes, wreg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	preg := inbox.NewRegistry()
	deadCh := make(map[string]chan inbox.DeadRecord)
	for _, c := range cases {
		if c.handler != nil {
			preg.On(c.name, c.handler)
			deadCh[c.name] = make(chan inbox.DeadRecord, 1)
		}
	}
	running := start(t, procs, preg, testenv.Fast(t,
		inbox.WithMaxRetryAttempt(1),
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) {
			select {
			case deadCh[rec.EventType] <- rec:
			default:
				t.Errorf("second dead callback for %q: %+v", rec.EventType, rec)
			}
		}))...)
	t.Cleanup(func() { close(deafRelease) }) // before start's Stop: cleanups run last first
	env := &badEnv{writes: writes, client: wib.Client(), procs: procs, running: running}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.parallel || c.handler != nil {
				t.Parallel()
			}
			if c.bug != "" {
				defer func() {
					if t.Failed() {
						t.Logf("LIBRARY BUG (see the bad-input report): %s", c.bug)
					}
				}()
			}
			if c.writes {
				defer badEmpty(t, env)
			}
			var err error
			if c.handler != nil {
				err = badProcess(t, env, c.name, deadCh[c.name])
			} else {
				err = c.run(t, env)
			}
			badAssert(t, c, err)
		})
	}
}

// badAssert checks err against what c wants.
func badAssert(t *testing.T, c badCase, err error) {
	t.Helper()
	if c.ok {
		if err != nil {
			t.Errorf("error %v, want none", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error; want one wrapping %v and mentioning %q", c.is, c.msg)
	}
	if c.is != nil && !errors.Is(err, c.is) {
		t.Errorf("error %q (%T) does not wrap %q", err, err, c.is)
	}
	for _, m := range c.msg {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
	if c.check != nil {
		c.check(t, err)
	}
}

// badEmpty checks that the writes schema holds no rows, and empties it if
// it does so that later cases are judged on their own.
func badEmpty(t *testing.T, e *badEnv) {
	t.Helper()
	ctx := context.Background()
	var n int
	var dates []time.Time
	err := e.writes.QueryRow(ctx, `SELECT count(*), coalesce(array_agg(event_date), '{}') FROM inbox_records`).
		Scan(&n, &dates)
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	if n != 0 {
		t.Errorf("the refused write left %d rows in the table (event dates %v)", n, dates)
		if _, err := e.writes.Exec(ctx, `DELETE FROM inbox_records`); err != nil {
			t.Fatal(err)
		}
	}
}

// badProcess stores one event of eventType on the running inbox, waits for
// its row to die after its one attempt, checks the row, and returns the
// dead callback's error.
func badProcess(t *testing.T, e *badEnv, eventType string, dead <-chan inbox.DeadRecord) error {
	t.Helper()
	ctx := context.Background()
	id := uuid.New()
	if err := e.running.Client().Set(ctx, testenv.Record(t, id, eventType, "payload")); err != nil {
		t.Fatalf("Set: %v", err)
	}
	var rec inbox.DeadRecord
	select {
	case rec = <-dead:
	case <-time.After(10 * time.Second):
		t.Fatal("no dead callback within 10s")
	}
	if rec.EventID != id || rec.HandlerKey != "h" || rec.Attempts != 1 {
		t.Errorf("dead record %+v, want event %s, key h, 1 attempt", rec, id)
	}
	states, err := e.running.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case len(states) != 1:
		t.Errorf("Lookup = %+v, want one row", states)
	case states[0].Status != inbox.Dead || states[0].Attempts != 1 || states[0].NextAttemptAt != nil:
		t.Errorf("row %+v, want dead after 1 attempt", states[0])
	case rec.Err == nil || states[0].LastError != rec.Err.Error():
		t.Errorf("LastError %q, want the dead callback's error %v", states[0].LastError, rec.Err)
	}
	return rec.Err
}

// badStopWhileRunning runs a handler that is blocked when Stop is called
// and returns only after Stop has begun: Stop must wait for it, write its
// result and return nil.
func badStopWhileRunning(t *testing.T, e *badEnv) error {
	ctx := context.Background()
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	reg := inbox.NewRegistry()
	reg.On("stop-while-running", inbox.HandlerFunc("h", func(context.Context, []byte) error {
		once.Do(func() { close(started) })
		<-release
		return nil
	}))
	ib, err := inbox.New(e.procs, reg, testenv.Fast(t)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Start(ctx); err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "stop-while-running", "")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not start")
	}
	spy := &doneSpy{Context: ctx, called: make(chan struct{})}
	stopped := make(chan error, 1)
	go func() { stopped <- ib.Stop(spy) }()
	select {
	case <-spy.called:
	case err := <-stopped:
		t.Fatalf("Stop returned %v while the handler was blocked", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not begin waiting for the handler")
	}
	unblock()
	var stopErr error
	select {
	case stopErr = <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return after the handler did")
	}
	states, err := ib.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].Status != inbox.Done || states[0].Attempts != 1 || states[0].LastError != "" {
		t.Errorf("after Stop: %+v, want the row done after 1 attempt", states)
	}
	return stopErr
}

// badLongestTimeout gives handlers the longest Duration as their timeout,
// "no timeout" to many callers, and runs one that works for four leases.
// It must run once and succeed.
func badLongestTimeout(t *testing.T, e *badEnv) error {
	ctx := context.Background()
	const lease = time.Second // renewals every 250 ms: not starved on a loaded machine
	var runs atomic.Int32
	reg := inbox.NewRegistry()
	reg.On("longest-timeout", inbox.HandlerFunc("h", func(ctx context.Context, _ []byte) error {
		runs.Add(1)
		select { // work for four leases
		case <-time.After(4 * lease):
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}))
	var lost atomic.Int32
	ib := start(t, e.procs, reg, testenv.Fast(t,
		inbox.WithHandlerTimeout(math.MaxInt64),
		inbox.WithLease(lease),
		inbox.OnErrorCallback(func(err error) {
			if errors.Is(err, inbox.ErrLeaseLost) {
				lost.Add(1)
			}
		}))...)
	id := uuid.New()
	if err := ib.Client().Set(ctx, testenv.Record(t, id, "longest-timeout", "")); err != nil {
		t.Fatal(err)
	}
	var states []inbox.RecordState
	err := testenv.Poll(10*time.Second, func() (bool, error) {
		var err error
		states, err = ib.Lookup(ctx, id)
		return err == nil && len(states) == 1 && (states[0].Status == inbox.Done || states[0].Status == inbox.Dead), err
	})
	if err != nil {
		return fmt.Errorf("row not finished: %w; %+v", err, states)
	}
	if n := runs.Load(); n != 1 || states[0].Status != inbox.Done || states[0].Attempts != 1 || lost.Load() != 0 {
		return fmt.Errorf("the handler ran %d times, %d results were lost, and the row is %s after %d attempts (%q); "+
			"want one run and the row done after 1 attempt", n, lost.Load(), states[0].Status, states[0].Attempts, states[0].LastError)
	}
	return nil
}
