package inboxredis_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
	inboxredis "github.com/pginbox/inbox/adapters/redis"
	"github.com/pginbox/inbox/broker"
	"github.com/pginbox/inbox/internal/testenv"
)

// fast returns options that make a Consumer react in milliseconds.
func fast(t testing.TB, group, consumer string, streams map[string]string) inboxredis.Options {
	return inboxredis.Options{
		Group: group, Consumer: consumer, Streams: streams,
		Block: 50 * time.Millisecond, ClaimIdle: time.Minute,
		RetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond,
		Logger: testenv.Logger(t),
	}
}

// 10,000 events over two streams, one in ten added twice, read by two
// consumers of one group: each event is stored once and each handler runs
// once per event; nothing stays pending.
func TestDuplicatesStoredOnce(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	r := newRuns()
	// A longer lease than Fast's: under -race on two cores a renewal may be late,
	// and a lost lease would run a handler twice.
	ib := testenv.Start(t, context.Background(), pool, registry(r, "order", "refund", "note"),
		testenv.Fast(t, inbox.WithLease(10*time.Second))...)

	orders, mixed, group := prefix+"orders", prefix+"mixed", prefix+"g"
	const n = 10000
	ids := make([]uuid.UUID, n)
	var toOrders, toMixed []map[string]any
	for i := range n {
		ids[i] = uuid.New()
		e := map[string]any{"id": ids[i].String(), "payload": fmt.Sprintf(`{"n":%d}`, i)}
		if i%7 == 0 {
			e["traceparent"] = fmt.Sprintf("00-%032x-%016x-01", i+1, i+1)
		}
		if i%2 == 0 {
			toOrders = append(toOrders, e)
		} else {
			e["type"] = []string{"refund", "note"}[i%4/2]
			toMixed = append(toMixed, e)
		}
	}
	// One in ten again: the producer retried.
	var againOrders, againMixed []map[string]any
	for i, e := range toOrders {
		if i%10 == 0 {
			againOrders = append(againOrders, e)
		}
	}
	for i, e := range toMixed {
		if i%10 == 0 {
			againMixed = append(againMixed, e)
		}
	}
	add(t, rdb, orders, toOrders)
	add(t, rdb, mixed, toMixed)
	add(t, rdb, orders, againOrders)
	add(t, rdb, mixed, againMixed)
	entries := n + len(againOrders) + len(againMixed)
	if entries != 11000 {
		t.Fatalf("%d entries, want 11000", entries)
	}

	streams := map[string]string{orders: "order", mixed: ""}
	var cs []*inboxredis.Consumer
	for _, name := range []string{"c1", "c2"} {
		o := fast(t, group, name, streams)
		o.IDField, o.TypeField = "id", "type"
		c, err := inboxredis.New(rdb, ib.Client(), o)
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
		run(t, c)
	}

	testenv.Eventually(t, 2*time.Minute, "every event handled", func() (bool, error) {
		c, err := ib.Counts(context.Background())
		return c[inbox.Done] == 2*n, err
	})
	for _, s := range []string{orders, mixed} {
		testenv.Eventually(t, 10*time.Second, "nothing pending on "+s, func() (bool, error) {
			p, err := pending(rdb, s, group)
			return p == 0, err
		})
	}
	if got, err := stored(pool); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	if got, err := seen(pool); err != nil || got != n {
		t.Fatalf("TxHandler wrote %d rows (%v), want %d", got, err, n)
	}
	counts, traces := r.snapshot()
	for i, id := range ids {
		if counts[id] != 1 {
			t.Fatalf("event %d ran %d times, want once", i, counts[id])
		}
		want := ""
		if i%7 == 0 {
			want = fmt.Sprintf("00-%032x-%016x-01", i+1, i+1)
		}
		if traces[id] != want {
			t.Fatalf("event %d ran with trace context %q, want %q", i, traces[id], want)
		}
	}
	var total inboxredis.Stats
	for _, c := range cs {
		s := c.Stats()
		total.Read += s.Read
		total.Stored += s.Stored
		total.Duplicates += s.Duplicates
		total.Acked += s.Acked
		total.DeadLettered += s.DeadLettered
	}
	if total.Read != int64(entries) || total.Acked != int64(entries) || total.Stored != n ||
		total.Duplicates != int64(entries-n) || total.DeadLettered != 0 {
		t.Fatalf("stats %+v; want %d read and acked, %d stored, %d duplicates, none dead-lettered",
			total, entries, n, entries-n)
	}
}

// flakyPool is a pool of the schema that cannot connect while down is set.
func flakyPool(t testing.TB, schema string, down *atomic.Bool) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.BeforeConnect = func(context.Context, *pgx.ConnConfig) error {
		if down.Load() {
			return errors.New("database unreachable (test)")
		}
		return nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// While Set fails nothing is acknowledged and the entries stay pending;
// once the database is back every event is stored once.
func TestSetFailingAcksNothing(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	schema, pool := database(t)
	r := newRuns()
	reg := registry(r, "order")
	var down atomic.Bool
	down.Store(true)
	writer, err := inbox.New(flakyPool(t, schema, &down), reg)
	if err != nil {
		t.Fatal(err)
	}
	stream, group := prefix+"orders", prefix+"g"
	const n = 250
	var es []map[string]any
	for i := range n {
		es = append(es, map[string]any{"payload": fmt.Sprint(i)}) // ids derived from the entry
	}
	entryIDs := add(t, rdb, stream, es)

	o := fast(t, group, "c1", map[string]string{stream: "order"})
	o.BatchSize = 100
	c, err := inboxredis.New(rdb, writer.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 30*time.Second, "Set failing several times", func() (bool, error) {
		return c.Stats().Failures >= 5, nil
	})
	p, err := pending(rdb, stream, group)
	if err != nil || p != 100 {
		t.Fatalf("pending = %d (%v) while Set fails, want the first batch of 100", p, err)
	}
	if s := c.Stats(); s.Acked != 0 || s.Stored != 0 {
		t.Fatalf("stats while Set fails: %+v; want nothing acked or stored", s)
	}
	if got, err := stored(pool); err != nil || got != 0 {
		t.Fatalf("stored %d (%v) while down", got, err)
	}

	down.Store(false)
	ib := testenv.Start(t, context.Background(), pool, reg, testenv.Fast(t, exactLease)...)
	testenv.Eventually(t, 30*time.Second, "every event handled", func() (bool, error) {
		c, err := ib.Counts(context.Background())
		return c[inbox.Done] == 2*n, err
	})
	testenv.Eventually(t, 10*time.Second, "nothing pending", func() (bool, error) {
		p, err := pending(rdb, stream, group)
		return p == 0, err
	})
	counts, _ := r.snapshot()
	for i, eid := range entryIDs {
		if id := broker.ID("redis", stream, eid); counts[id] != 1 {
			t.Fatalf("entry %d (%s) ran %d times, want once", i, eid, counts[id])
		}
	}
	if s := c.Stats(); s.Acked != n || s.Stored != n {
		t.Fatalf("stats %+v; want %d acked and stored", s, n)
	}
}

// Entries that cannot be stored are dead-lettered with their reason and
// fields, then acknowledged; the rest of their batch is stored. The two
// entries Set refuses (unknown event types) share a batch: one Set names
// them, and one more stores the rest.
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	rdb, prefix := newRedis(t)
	_, pool := database(t)
	r := newRuns()
	var sets testenv.SetCalls
	ib := testenv.Start(t, context.Background(), pool, registry(r, "order"), testenv.Fast(t, exactLease, sets.Option())...) // RejectUnknown
	stream, group := prefix+"events", prefix+"g"

	good := func(i int) map[string]any {
		return map[string]any{"id": uuid.NewString(), "type": "order", "payload": fmt.Sprint(i)}
	}
	var es []map[string]any
	reasons := map[int]string{}
	for i := range 40 {
		es = append(es, good(i))
	}
	bad := []struct {
		fields map[string]any
		reason string
	}{
		{map[string]any{"id": "not-a-uuid", "type": "order", "payload": "x"}, "is not a UUID"},
		{map[string]any{"type": "order", "payload": "x"}, `no id field "id"`},
		{map[string]any{"id": uuid.NewString(), "type": "unheard_of", "payload": "x"}, "no handler registered"},
		{map[string]any{"id": uuid.NewString(), "type": "unheard_of", "payload": "y"}, "no handler registered"},
		{map[string]any{"id": uuid.Nil.String(), "type": "order", "payload": "x"}, "nil UUID"},
		{map[string]any{"id": uuid.NewString(), "type": "  ", "payload": "x"}, "blank"},
		{map[string]any{"id": uuid.NewString(), "type": "order"}, `no payload field "payload"`},
		{map[string]any{"id": uuid.NewString(), "payload": "x"}, `no event type field "type"`},
		{map[string]any{"id": uuid.NewString(), "type": "order", "payload": strings.Repeat("z", inbox.MaxPayloadSize+1)}, "MaxPayloadSize"},
	}
	for k, b := range bad { // spread among the good ones
		pos := 3 + 4*k
		es = append(es[:pos], append([]map[string]any{b.fields}, es[pos:]...)...)
		reasons[pos] = b.reason
	}
	entryIDs := add(t, rdb, stream, es)

	o := fast(t, group, "c1", map[string]string{stream: ""})
	o.IDField, o.TypeField, o.BatchSize = "id", "type", 20
	var logs testenv.LogLines
	o.Logger = logs.Logger()
	c, err := inboxredis.New(rdb, ib.Client(), o)
	if err != nil {
		t.Fatal(err)
	}
	run(t, c)
	testenv.Eventually(t, 30*time.Second, "every good event handled, nothing pending", func() (bool, error) {
		cs, err := ib.Counts(context.Background())
		if err != nil || cs[inbox.Done] != 2*40 {
			return false, err
		}
		p, err := pending(rdb, stream, group)
		return p == 0, err
	})
	calls := sets.All()
	refused := 0
	for i, call := range calls {
		if call.Err == nil {
			continue
		}
		refused++
		var re *inbox.RecordsError
		if !errors.As(call.Err, &re) || len(re.Indexes) != 2 || i+1 == len(calls) ||
			calls[i+1].Err != nil || calls[i+1].Records != call.Records-2 {
			t.Fatalf("Set %d of %d records failed with %v; want a RecordsError naming 2, then a Set of the other %d: %+v",
				i, call.Records, call.Err, call.Records-2, calls)
		}
	}
	if refused != 1 {
		t.Fatalf("%d Sets refused records, want 1: %+v", refused, calls)
	}
	dead, err := rdb.XRange(context.Background(), stream+".dead", "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != len(bad) {
		t.Fatalf("%d dead letters, want %d: %v", len(dead), len(bad), dead)
	}
	byID := map[string]redis.XMessage{}
	for _, d := range dead {
		byID[d.Values[inboxredis.DeadIDField].(string)] = d
	}
	for pos, want := range reasons {
		d, ok := byID[entryIDs[pos]]
		if !ok {
			t.Fatalf("entry %d (%s) not dead-lettered", pos, entryIDs[pos])
		}
		if got := d.Values[inboxredis.DeadReasonField].(string); !strings.Contains(got, want) {
			t.Errorf("entry %d: reason %q, want it to contain %q", pos, got, want)
		}
		if d.Values[inboxredis.DeadStreamField] != stream || d.Values[inboxredis.DeadGroupField] != group ||
			d.Values[inboxredis.DeadConsumerField] != "c1" {
			t.Errorf("entry %d: dead letter %v lacks its origin", pos, d.Values)
		}
		for f, v := range es[pos] {
			if d.Values[f] != v {
				t.Errorf("entry %d: dead letter's field %q differs from the original's", pos, f)
			}
		}
	}
	if s := c.Stats(); s.DeadLettered != int64(len(bad)) || s.Stored != 40 || s.Acked != int64(len(es)) {
		t.Fatalf("stats %+v; want %d dead-lettered, 40 stored, %d acked", s, len(bad), len(es))
	}
	if got := logs.Count("entry dead-lettered"); got != len(bad) {
		t.Fatalf("%d dead letters logged, want %d:\n%s", got, len(bad), logs.String())
	}
}

// New checks every option up front.
func TestNewValidates(t *testing.T) {
	t.Parallel()
	rdb, _ := newRedis(t)
	_, pool := database(t)
	ib, err := inbox.New(pool, registry(newRuns(), "order"))
	if err != nil {
		t.Fatal(err)
	}
	ok := inboxredis.Options{Group: "g", Consumer: "c", Streams: map[string]string{"s": "order"}}
	if _, err := inboxredis.New(rdb, ib.Client(), ok); err != nil {
		t.Fatalf("valid options: %v", err)
	}
	for name, change := range map[string]func(*inboxredis.Options){
		"no group":     func(o *inboxredis.Options) { o.Group = "" },
		"no consumer":  func(o *inboxredis.Options) { o.Consumer = " " },
		"no streams":   func(o *inboxredis.Options) { o.Streams = nil },
		"empty stream": func(o *inboxredis.Options) { o.Streams = map[string]string{"": "order"} },
		"no type":      func(o *inboxredis.Options) { o.Streams = map[string]string{"s": ""} },
		"blank type":   func(o *inboxredis.Options) { o.Streams = map[string]string{"s": " "} },
		"dead-letter":  func(o *inboxredis.Options) { o.Streams = map[string]string{"s": "order", "s.dead": "order"} },
		"both ids": func(o *inboxredis.Options) {
			o.IDField, o.ID = "id", func(string, redis.XMessage) (uuid.UUID, error) { return uuid.New(), nil }
		},
		"batch too large":    func(o *inboxredis.Options) { o.BatchSize = inboxredis.MaxBatchSize + 1 },
		"negative batch":     func(o *inboxredis.Options) { o.BatchSize = -1 },
		"negative block":     func(o *inboxredis.Options) { o.Block = -time.Second },
		"backoff inverted":   func(o *inboxredis.Options) { o.RetryBackoff, o.MaxRetryBackoff = time.Second, time.Millisecond },
		"bad start id":       func(o *inboxredis.Options) { o.StartID = "latest" },
		"claim idle too low": func(o *inboxredis.Options) { o.ClaimIdle = time.Microsecond },
	} {
		o := ok
		change(&o)
		if _, err := inboxredis.New(rdb, ib.Client(), o); !errors.Is(err, inbox.ErrInvalidConfig) {
			t.Errorf("%s: New = %v, want ErrInvalidConfig", name, err)
		}
	}
	if _, err := inboxredis.New(nil, ib.Client(), ok); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil Redis client: %v", err)
	}
	if _, err := inboxredis.New(rdb, nil, ok); !errors.Is(err, inbox.ErrInvalidConfig) {
		t.Errorf("nil inbox client: %v", err)
	}
}
