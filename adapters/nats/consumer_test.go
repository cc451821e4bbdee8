package inboxnats_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pginbox/inbox"
	inboxnats "github.com/pginbox/inbox/adapters/nats"
	"github.com/pginbox/inbox/internal/testenv"
)

// orders returns n "order" messages with ids of their own and payloads
// "p<i>", followed by a redelivery (same id header, same payload) of every
// tenth one, shuffled in among the rest; and the n payloads.
func orders(e *env, n int) ([]*nats.Msg, []string) {
	type placed struct {
		at  float64
		msg *nats.Msg
	}
	var all []placed
	var payloads []string
	for i := range n {
		id := uuid.NewString()
		payloads = append(payloads, fmt.Sprint("p", i))
		all = append(all, placed{float64(i), e.msg("order", id, payloads[i])})
		if i%10 == 0 {
			// Up to 300 places later: some duplicates land in the same
			// batch as their first delivery, some in later ones.
			all = append(all, placed{float64(i) + 0.5 + 300*rand.Float64(), e.msg("order", id, payloads[i])})
		}
	}
	slices.SortStableFunc(all, func(a, b placed) int { return cmp.Compare(a.at, b.at) })
	msgs := make([]*nats.Msg, len(all))
	for i, p := range all {
		msgs[i] = p.msg
	}
	return msgs, payloads
}

// 10,000 messages and 1,000 redelivered duplicates (same id header, no
// Nats-Msg-Id, so JetStream's own dedup window keeps them) end as exactly
// 10,000 events, each handler run once, every message acked.
func TestDuplicatesStoredOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease)...)
	const n = 10_000
	msgs, payloads := orders(e, n)
	if len(msgs) != n+n/10 {
		t.Fatalf("%d messages, want %d", len(msgs), n+n/10)
	}
	e.publish(msgs...)
	c := e.consumer(ib.Client(), e.options(nil))

	testenv.Eventually(t, 3*time.Minute, "every event handled", func() (bool, error) {
		return e.runs.distinct() == n, nil
	})
	info := e.settled(time.Minute)
	if bad, distinct := e.runs.check(payloads); bad != "" || distinct != n {
		t.Fatalf("%s; %d distinct events handled, want %d", bad, distinct, n)
	}
	if got := e.rows(); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	testenv.Eventually(t, time.Minute, "every row done", func() (bool, error) {
		counts, err := ib.Counts(context.Background())
		return counts[inbox.Done] == n, err
	})
	testenv.Eventually(t, time.Minute, "every delivery acked", func() (bool, error) {
		return c.Stats().Acked == int64(len(msgs)), nil
	})
	if s := c.Stats(); s.Acked != int64(len(msgs)) || s.Terminated != 0 || s.SetFailures != 0 || s.AckFailures != 0 {
		t.Fatalf("stats %+v: want %d acked, none terminated or failed", s, len(msgs))
	}
	if info.AckFloor.Stream != uint64(len(msgs)) {
		t.Fatalf("ack floor at stream sequence %d, want %d", info.AckFloor.Stream, len(msgs))
	}
	// Every row is done, so no later run can come: each handler ran once.
	if bad, _ := e.runs.check(payloads); bad != "" {
		t.Fatal(bad)
	}
}

// PostgreSQL stopped for three seconds mid-stream: while it is down the
// consumer's Sets fail and the broker counts no more messages acked than
// were stored before the stop; once it is back every message is stored
// exactly once and nothing stays pending or unacked.
func TestDatabaseDownNothingAcked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	cluster, pool := testenv.StoppableDatabase(t, 4)
	const n = 2000
	msgs, ids := make([]*nats.Msg, n), make([]uuid.UUID, n)
	for i := range msgs {
		ids[i] = uuid.New()
		msgs[i] = e.msg("order", ids[i].String(), fmt.Sprint("p", i))
	}
	e.publish(msgs...)
	var stored atomic.Int64 // events the consumer's Sets stored
	countSets := inbox.WithHooks(inbox.Hooks{OnSet: func(_ context.Context, ev inbox.SetEvent) {
		if ev.Err == nil {
			stored.Add(int64(ev.Result.New))
		}
	}})
	c := e.consumer(e.writer(pool, countSets), e.options(func(o *inboxnats.Options) {
		o.BatchSize = 50
		o.RetryBackoff, o.MaxRetryBackoff = 10*time.Millisecond, 200*time.Millisecond
		o.Logger = new(testenv.LogLines).Logger() // failures are expected
	}))
	acked := func() (int, error) {
		info, err := e.consumerInfo()
		if err != nil {
			return 0, err
		}
		return n - int(info.NumPending) - info.NumAckPending, nil
	}
	testenv.Eventually(t, time.Minute, "some messages stored", func() (bool, error) {
		return stored.Load() >= 200, nil
	})

	// The stop comes while a Set waits for this lock: mid-stream, with a
	// Set in flight and messages left to store.
	ctx := context.Background()
	lock, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE inbox_records IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "a Set waiting for the lock", func() (bool, error) {
		var waiting bool
		err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = 'inbox_records'::regclass)`).Scan(&waiting)
		return waiting, err
	})
	if err := cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	_ = lock.Rollback(ctx) // the stop ended it
	failed := c.Stats().SetFailures
	most := 0 // the most messages acked seen while down
	testenv.Hold(t, 3*time.Second, "PostgreSQL is down", func() error {
		a, err := acked()
		if err != nil {
			return err
		}
		most = max(most, a)
		if s := int(stored.Load()); a > s {
			return fmt.Errorf("the broker counts %d messages acked, with %d stored", a, s)
		}
		return nil
	})
	// Nothing can be stored while the database is down: what is stored
	// now is what was stored at the stop.
	atStop := int(stored.Load())
	if most > atStop {
		t.Fatalf("the broker counted %d messages acked while PostgreSQL was down, with %d stored", most, atStop)
	}
	if atStop >= n || c.Stats().SetFailures == failed {
		t.Fatalf("%d of %d stored at the stop, %d failed Sets while down: want some left to store, and failures",
			atStop, n, c.Stats().SetFailures-failed)
	}
	if err := cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}

	e.settled(2 * time.Minute)
	testenv.StoredOnce(t, pool, ids, 1)
	t.Logf("%d stored at the stop, at most %d acked while down; %d failed Sets while down; %+v",
		atStop, most, c.Stats().SetFailures-failed, c.Stats())
}

// Poison messages are terminated with a reason, once each, and the good
// messages of their batches are stored and acked: an id header that is
// not a UUID, the nil UUID (NewRecord rejects it), a subject with no event
// type, and an event type without handlers (Set refuses the batch, naming
// the culprit).
func TestPoisonTerminated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease)...)
	const n = 200
	msgs, payloads := orders(e, n)
	poison := []*nats.Msg{
		e.msg("order", "not-a-uuid", "bad id"),
		e.msg("order", uuid.Nil.String(), "nil id"),
		e.msg("nomap", uuid.NewString(), "no type"),
		e.msg("unknown", uuid.NewString(), "unknown type 1"),
		e.msg("unknown", uuid.NewString(), "unknown type 2"),
	}
	for i, m := range poison { // spread over the batches
		at := (i + 1) * len(msgs) / (len(poison) + 1)
		msgs = append(msgs[:at], append([]*nats.Msg{m}, msgs[at:]...)...)
	}
	e.publish(msgs...)
	var logs testenv.LogLines
	c := e.consumer(ib.Client(), e.options(func(o *inboxnats.Options) {
		o.BatchSize = 50
		o.Logger = logs.Logger()
	}))

	testenv.Eventually(t, time.Minute, "every good event handled", func() (bool, error) {
		return e.runs.distinct() == n, nil
	})
	e.settled(time.Minute)
	if bad, distinct := e.runs.check(payloads); bad != "" || distinct != n {
		t.Fatalf("%s; %d distinct events handled, want %d", bad, distinct, n)
	}
	s := c.Stats()
	if s.Terminated != int64(len(poison)) || s.SetFailures != 0 {
		t.Fatalf("stats %+v: want %d terminated, no failed Set", s, len(poison))
	}
	for _, reason := range []string{
		`header Event-Id \"not-a-uuid\" is not a UUID`,
		"nil UUID",
		"no event type for subject",
		"inbox rejected the record",
	} {
		if logs.Count("poison message terminated", reason) == 0 {
			t.Errorf("no poison log with %q in:\n%s", reason, logs.String())
		}
	}
	if got := logs.Count("poison message terminated", "inbox rejected the record"); got != 2 {
		t.Errorf("%d unknown-type messages terminated, want 2", got)
	}
}

// Several messages Set refuses (event types without handlers) among good
// ones in one batch: Set names them, they are terminated, each with its
// own error, and one more Set stores the rest.
func TestRefusedRecordsTerminated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var sets testenv.SetCalls
	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease, sets.Option())...)
	const n = 40
	unknown := []int{5, 17, 30}
	var msgs []*nats.Msg
	var payloads []string
	for i := range n {
		if slices.Contains(unknown, i) {
			msgs = append(msgs, e.msg("unknown", uuid.NewString(), fmt.Sprint("u", i)))
			continue
		}
		payloads = append(payloads, fmt.Sprint("p", i))
		msgs = append(msgs, e.msg("order", uuid.NewString(), payloads[len(payloads)-1]))
	}
	e.publish(msgs...)
	var logs testenv.LogLines
	c, err := inboxnats.New(context.Background(), e.js, ib.Client(), e.options(func(o *inboxnats.Options) {
		o.BatchSize = n
		o.Logger = logs.Logger()
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.run(c)

	testenv.Eventually(t, time.Minute, "every good event handled", func() (bool, error) {
		return e.runs.distinct() == len(payloads), nil
	})
	e.settled(time.Minute)
	if bad, distinct := e.runs.check(payloads); bad != "" || distinct != len(payloads) {
		t.Fatalf("%s; %d distinct events handled, want %d", bad, distinct, len(payloads))
	}
	calls := sets.All()
	var re *inbox.RecordsError
	if len(calls) != 2 || calls[0].Records != n || !errors.As(calls[0].Err, &re) || !slices.Equal(re.Indexes, unknown) ||
		calls[1].Records != len(payloads) || calls[1].Err != nil {
		t.Fatalf("Sets %+v; want one of %d records refusing records %v, then one of the other %d", calls, n, unknown, len(payloads))
	}
	if s := c.Stats(); s.Terminated != int64(len(unknown)) || s.Acked != int64(len(payloads)) || s.SetFailures != 0 {
		t.Fatalf("stats %+v: want %d terminated, %d acked, no failed Set", s, len(unknown), len(payloads))
	}
	if got := logs.Count("poison message terminated", "inbox rejected the record", "no handler registered for event type"); got != len(unknown) {
		t.Fatalf("%d refused messages logged, want %d:\n%s", got, len(unknown), logs.String())
	}
}

// An ack wait shorter than a slow Set (blocked by a lock the test holds)
// redelivers the batch to a second consumer process while the first is
// still storing it: both Sets commit, each event is stored and handled
// once, nothing stays pending.
func TestAckWaitShorterThanSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease)...)
	ctx := context.Background()
	lock, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `LOCK TABLE inbox_records IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	const n = 100
	msgs, payloads := orders(e, n)
	e.publish(msgs...)
	opts := e.options(func(o *inboxnats.Options) {
		o.AckWait = inboxnats.MinAckWait
		o.BatchSize = 200
		o.Logger = new(testenv.LogLines).Logger() // late acks are expected
	})
	a := e.consumer(ib.Client(), opts)
	b := e.consumer(ib.Client(), opts)
	testenv.Eventually(t, time.Minute, "a redelivery while the Set is blocked", func() (bool, error) {
		return e.info().NumRedelivered > 0 && a.Stats().Fetched+b.Stats().Fetched > int64(len(msgs)), nil
	})
	if got := e.runs.distinct(); got != 0 {
		t.Fatalf("%d events handled while Set was blocked", got)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, time.Minute, "every event handled", func() (bool, error) {
		return e.runs.distinct() == n, nil
	})
	e.settled(time.Minute)
	if bad, distinct := e.runs.check(payloads); bad != "" || distinct != n {
		t.Fatalf("%s; %d distinct events handled, want %d", bad, distinct, n)
	}
	if got := e.rows(); got != n {
		t.Fatalf("%d rows stored, want %d", got, n)
	}
	// Both consumers finish their deliveries: the late acks of the
	// redelivered batch succeed or fail, without waiting long.
	released := time.Now()
	testenv.Eventually(t, time.Minute, "both consumers done with their batches", func() (bool, error) {
		sa, sb := a.Stats(), b.Stats()
		return sa.Acked+sa.AckFailures == sa.Fetched && sb.Acked+sb.AckFailures == sb.Fetched, nil
	})
	t.Logf("consumer a %+v, b %+v, done %v after the release", a.Stats(), b.Stats(), time.Since(released))
}

// Ids: a UUID header is used as it is; without the header the id is the
// stream sequence's, the same on every redelivery; a traceparent header
// becomes the record's trace context; Nats-Msg-Id may carry the id.
func TestMapping(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease)...)
	id := uuid.New()
	withID := e.msg("order", id.String(), "with id")
	withID.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	e.publish(withID, e.msg("order", "", "no id"))
	e.consumer(ib.Client(), e.options(nil))
	testenv.Eventually(t, time.Minute, "both events handled", func() (bool, error) {
		return e.runs.distinct() == 2, nil
	})
	ctx := context.Background()
	states, err := ib.Lookup(ctx, id)
	if err != nil || len(states) != 1 {
		t.Fatalf("Lookup(header id) = %v, %v", states, err)
	}
	var trace string
	if err := e.pool.QueryRow(ctx, `SELECT coalesce(trace_context, '') FROM inbox_records WHERE event_id = $1`, id).Scan(&trace); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(trace, "4bf92f3577b34da6a3ce929d0e0e4736") {
		t.Fatalf("trace context %q, want the traceparent header", trace)
	}
	seqID := brokerID(e.stream, 2)
	if states, err := ib.Lookup(ctx, seqID); err != nil || len(states) != 1 {
		t.Fatalf("Lookup(stream sequence id %s) = %v, %v", seqID, states, err)
	}
}

// New rejects bad options with errors wrapping inbox.ErrInvalidConfig,
// before touching the server.
func TestNewValidates(t *testing.T) {
	t.Parallel()
	var js jetstream.JetStream = nil
	ok := inboxnats.Options{Stream: "S", Durable: "D"}
	client := new(inbox.Client)
	for name, o := range map[string]func(*inboxnats.Options){
		"no stream":        func(o *inboxnats.Options) { o.Stream = "" },
		"dotted durable":   func(o *inboxnats.Options) { o.Durable = "a.b" },
		"batch too large":  func(o *inboxnats.Options) { o.BatchSize = inboxnats.MaxBatchSize + 1 },
		"negative batch":   func(o *inboxnats.Options) { o.BatchSize = -1 },
		"short fetch wait": func(o *inboxnats.Options) { o.FetchWait = time.Millisecond },
		"short ack wait":   func(o *inboxnats.Options) { o.AckWait = 500 * time.Millisecond },
		"ack wait <= fetch wait": func(o *inboxnats.Options) {
			o.AckWait, o.FetchWait = 2*time.Second, 2*time.Second
		},
		"backoff over max": func(o *inboxnats.Options) { o.RetryBackoff, o.MaxRetryBackoff = time.Second, time.Millisecond },
		"two id sources": func(o *inboxnats.Options) {
			o.IDHeader, o.IDOf = "X", func(jetstream.Msg) (uuid.UUID, error) { return uuid.Nil, nil }
		},
		"two type sources": func(o *inboxnats.Options) {
			o.TypeHeader, o.TypeOf = "X", func(jetstream.Msg) (string, error) { return "", nil }
		},
		"blank mapped type": func(o *inboxnats.Options) { o.Types = map[string]string{"a": " "} },
		"blank filter":      func(o *inboxnats.Options) { o.FilterSubjects = []string{""} },
	} {
		opts := ok
		o(&opts)
		js := js
		if name != "no stream" {
			js = fakeJS{}
		}
		_, err := inboxnats.New(context.Background(), js, client, opts)
		if !errors.Is(err, inbox.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := inboxnats.New(context.Background(), nil, client, ok); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil JetStream: %v", err)
	}
	if _, err := inboxnats.New(context.Background(), fakeJS{}, nil, ok); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil client: %v", err)
	}
}

// fakeJS is a JetStream that New must not reach when the options are bad.
type fakeJS struct{ jetstream.JetStream }

// Nats-Msg-Id may carry the event id, a header the event type, and IDOf
// and TypeOf replace both.
func TestMappingHeadersAndFuncs(t *testing.T) {
	t.Parallel()
	for _, funcs := range []bool{false, true} {
		t.Run(map[bool]string{false: "headers", true: "funcs"}[funcs], func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			ib := testenv.Start(t, context.Background(), e.pool, e.reg, testenv.Fast(t, exactLease)...)
			id := uuid.New()
			m := nats.NewMsg(e.subject("other"))
			m.Header.Set(nats.MsgIdHdr, id.String())
			m.Header.Set("Event-Type", "order")
			m.Data = []byte("by header")
			e.publish(m)
			e.consumer(ib.Client(), e.options(func(o *inboxnats.Options) {
				o.Types, o.IDHeader = nil, ""
				if funcs {
					o.IDOf = func(m jetstream.Msg) (uuid.UUID, error) { return uuid.Parse(m.Headers().Get(nats.MsgIdHdr)) }
					o.TypeOf = func(m jetstream.Msg) (string, error) { return m.Headers().Get("Event-Type"), nil }
				} else {
					o.IDHeader, o.TypeHeader = nats.MsgIdHdr, "Event-Type"
				}
			}))
			testenv.Eventually(t, time.Minute, "the event handled", func() (bool, error) {
				return e.runs.distinct() == 1, nil
			})
			states, err := ib.Lookup(context.Background(), id)
			if err != nil || len(states) != 1 || states[0].EventType != "order" {
				t.Fatalf("Lookup(Nats-Msg-Id) = %v, %v; want one order row", states, err)
			}
			e.settled(time.Minute)
		})
	}
}
