package inboxkafka_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	inboxkafka "github.com/pginbox/inbox/adapters/kafka"
	"github.com/pginbox/inbox/internal/testenv"
)

// TestDuplicatesStoredOnce: 10,000 events, 1,000 of them produced twice,
// are stored once each, each handler runs once per event, and the group's
// offsets end at the partitions' ends.
func TestDuplicatesStoredOnce(t *testing.T) {
	const topic, group, n = "orders", "inbox", 10000
	seeds := cluster(t, 4, topic)
	pool := testenv.MigratedPool(t)
	ib, runs := startInbox(t, pool, topic)

	ids := make(map[uuid.UUID]bool, n)
	recs := make([]*kgo.Record, 0, n+n/10)
	order := make([]uuid.UUID, 0, n)
	for range n {
		id := uuid.New()
		ids[id] = true
		order = append(order, id)
		recs = append(recs, event(topic, id))
	}
	for _, i := range rand.Perm(n)[:n/10] {
		recs = append(recs, event(topic, order[i])) // a redelivery
	}
	produce(t, seeds, recs)

	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader,
		Logger: testenv.Logger(t),
	}, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	stop := run(t, c)
	adm := kadm.NewClient(kafkaClient(t, seeds))
	ctx := context.Background()
	testenv.Eventually(t, within, "offsets committed to the end", func() (bool, error) {
		return committedAtEnd(ctx, adm, group, topic)
	})
	testenv.Eventually(t, within, "every handler run once", func() (bool, error) { return runs.check(ids) })
	if got, err := stored(ctx, pool); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	stop()
	s := c.Stats()
	if s.Stored != n || s.Duplicates < n/10 || s.DeadLettered != 0 || s.Committed < int64(len(recs)) {
		t.Errorf("stats %+v: want %d stored, at least %d duplicates and %d committed, none dead-lettered", s, n, n/10, len(recs))
	}
	if _, err := runs.check(ids); err != nil {
		t.Error(err)
	}
}

// TestSetFailingCommitsNothing: while the database is unreachable no
// offset is committed; once it is back every event is stored once, and the
// poison records are in the dead-letter topic with their reasons.
func TestSetFailingCommitsNothing(t *testing.T) {
	const topic, dead, group, n = "payments", "payments-dead", "inbox", 600
	seeds := cluster(t, 3, topic, dead)
	direct, proxied, px := proxiedPool(t)
	_, runs := startInbox(t, direct, topic)
	// The consumer stores through the proxy, with the same registry.
	reg := inbox.NewRegistry()
	reg.Handle(topic, inbox.HandlerFunc("count_"+topic, func(context.Context, []byte) error { return nil }))
	setter, err := inbox.New(proxied, reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatalf("inbox.New: %v", err)
	}

	ids := make(map[uuid.UUID]bool, n)
	var recs []*kgo.Record
	for i := range n {
		id := uuid.New()
		ids[id] = true
		recs = append(recs, event(topic, id))
		switch i {
		case 100: // an id header that is no UUID
			recs = append(recs, &kgo.Record{Topic: topic, Value: []byte("x"), Headers: []kgo.RecordHeader{{Key: idHeader, Value: []byte("not-a-uuid")}}})
		case 300: // the nil UUID
			recs = append(recs, &kgo.Record{Topic: topic, Value: []byte("y"), Headers: []kgo.RecordHeader{{Key: idHeader, Value: []byte(uuid.Nil.String())}}})
		case 500: // an event type without handlers: Set refuses it
			recs = append(recs, &kgo.Record{Topic: topic, Value: []byte("z"), Headers: []kgo.RecordHeader{
				{Key: idHeader, Value: []byte(uuid.NewString())}, {Key: "type", Value: []byte("nobody_handles_this")}}})
		}
	}
	px.setDown(true)
	produce(t, seeds, recs)

	c, err := inboxkafka.New(setter.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, EventTypeHeader: "type",
		DeadLetterTopic: dead, MaxPollRecords: 200,
		RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond,
		Logger: testenv.Logger(t),
	}, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	run(t, c)
	adm := kadm.NewClient(kafkaClient(t, seeds))
	ctx := context.Background()
	testenv.Eventually(t, within, "five failed Sets", func() (bool, error) { return c.Stats().SetFailures >= 5, nil })
	if got := committedCount(ctx, t, adm, group, topic); got != 0 {
		t.Fatalf("%d partitions have offsets committed while Set fails", got)
	}
	if s := c.Stats(); s.Committed != 0 || s.DeadLettered != 0 {
		t.Fatalf("stats %+v while Set fails: want nothing committed or dead-lettered", s)
	}

	px.setDown(false)
	testenv.Eventually(t, within, "offsets committed to the end", func() (bool, error) {
		return committedAtEnd(ctx, adm, group, topic)
	})
	testenv.Eventually(t, within, "every handler run once", func() (bool, error) { return runs.check(ids) })
	if got, err := stored(ctx, direct); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	if s := c.Stats(); s.DeadLettered != 3 {
		t.Errorf("stats %+v: want 3 dead-lettered", s)
	}

	// The dead-letter topic holds the three, with their reasons.
	cl := kafkaClient(t, seeds, kgo.ConsumeTopics(dead), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	var reasons []string
	pctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for len(reasons) < 3 {
		fs := cl.PollFetches(pctx)
		if err := pctx.Err(); err != nil {
			t.Fatalf("read dead-letter topic: %v; got %q", err, reasons)
		}
		fs.EachRecord(func(r *kgo.Record) {
			for _, h := range r.Headers {
				if h.Key == inboxkafka.HeaderReason {
					reasons = append(reasons, string(h.Value))
				}
			}
		})
	}
	slices.Sort(reasons)
	for i, want := range []string{"id header", "id header", "no handler registered"} {
		if !strings.Contains(reasons[i], want) {
			t.Errorf("dead-letter reasons %q: want one containing %q", reasons, want)
		}
	}
}

// TestRefusedRecordsDeadLettered: several records Set refuses (event types
// without handlers) among good ones in one batch are dead-lettered, each
// with its own error as the reason, and one more Set stores the rest.
func TestRefusedRecordsDeadLettered(t *testing.T) {
	const topic, dead, group, n = "refunds", "refunds-dead", "inbox", 40
	seeds := cluster(t, 1, topic, dead)
	pool := testenv.MigratedPool(t)
	var sets testenv.SetCalls
	ib, runs := startInboxWith(t, pool, []inbox.Option{sets.Option()}, topic)

	unknown := []int{5, 17, 30}
	ids := make(map[uuid.UUID]bool, n)
	var recs []*kgo.Record
	for i := range n {
		id := uuid.New()
		r := event(topic, id)
		if slices.Contains(unknown, i) {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: "type", Value: []byte("nobody_handles_this")})
		} else {
			ids[id] = true
		}
		recs = append(recs, r)
	}
	produce(t, seeds, recs)

	var logs testenv.LogLines
	c, err := inboxkafka.New(ib.Client(), inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, EventTypeHeader: "type",
		DeadLetterTopic: dead, Logger: logs.Logger(),
	}, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	run(t, c)
	adm := kadm.NewClient(kafkaClient(t, seeds))
	ctx := context.Background()
	testenv.Eventually(t, within, "offsets committed to the end", func() (bool, error) {
		return committedAtEnd(ctx, adm, group, topic)
	})
	testenv.Eventually(t, within, "every handler run once", func() (bool, error) { return runs.check(ids) })
	good := n - len(unknown)
	if got, err := stored(ctx, pool); err != nil || got != good {
		t.Fatalf("stored %d events (%v), want %d", got, err, good)
	}
	calls := sets.All()
	var re *inbox.RecordsError
	if len(calls) != 2 || calls[0].Records != n || !errors.As(calls[0].Err, &re) || !slices.Equal(re.Indexes, unknown) ||
		calls[1].Records != good || calls[1].Err != nil {
		t.Fatalf("Sets %+v; want one of %d records refusing records %v, then one of the other %d", calls, n, unknown, good)
	}
	if s := c.Stats(); s.DeadLettered != int64(len(unknown)) || s.Stored != int64(good) || s.SetFailures != 0 {
		t.Fatalf("stats %+v: want %d dead-lettered, %d stored, no failed Set", s, len(unknown), good)
	}
	if got := logs.Count("record dead-lettered", "no handler registered for event type"); got != len(unknown) {
		t.Fatalf("%d refused records logged, want %d:\n%s", got, len(unknown), logs.String())
	}
}

// TestRebalanceMidStream: a second consumer joins the group while the
// first is storing; every event is stored once and the offsets end at the
// partitions' ends.
func TestRebalanceMidStream(t *testing.T) {
	const topic, group, n = "shipments", "inbox", 5000
	seeds := cluster(t, 6, topic)
	pool := testenv.MigratedPool(t)
	ib, runs := startInbox(t, pool, topic)
	ids := make(map[uuid.UUID]bool, n)
	recs := make([]*kgo.Record, 0, n)
	for range n {
		id := uuid.New()
		ids[id] = true
		recs = append(recs, event(topic, id))
	}
	produce(t, seeds, recs)

	opts := inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, MaxPollRecords: 50,
		Logger: testenv.Logger(t),
	}
	first, err := inboxkafka.New(ib.Client(), opts, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	second, err := inboxkafka.New(ib.Client(), opts, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	joined := make(chan struct{})
	var calls atomic.Int64
	inboxkafka.SetBeforeCommit(first, func() error {
		if calls.Add(1) == 3 { // the first is storing its third batch
			run(t, second)
			close(joined)
		}
		return nil
	})
	run(t, first)
	<-joined
	adm := kadm.NewClient(kafkaClient(t, seeds))
	ctx := context.Background()
	testenv.Eventually(t, within, "offsets committed to the end", func() (bool, error) {
		return committedAtEnd(ctx, adm, group, topic)
	})
	testenv.Eventually(t, within, "every handler run once", func() (bool, error) { return runs.check(ids) })
	if got, err := stored(ctx, pool); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	a, b := first.Stats(), second.Stats()
	if b.Batches == 0 {
		t.Errorf("the second consumer got no batch: first %+v, second %+v", a, b)
	}
	if a.Stored+b.Stored != n {
		t.Errorf("stored %d + %d, want %d", a.Stored, b.Stored, n)
	}
	t.Logf("first %+v; second %+v", a, b)
}

// TestRebalanceWhileSetFails: a batch that cannot be stored holds a
// rebalance for MaxBlockRebalance only; a consumer that joins meanwhile
// gets partitions, nothing is committed while the database is away, and
// once it is back every event is stored once.
func TestRebalanceWhileSetFails(t *testing.T) {
	const topic, group, n = "invoices", "inbox", 2000
	seeds := cluster(t, 4, topic)
	direct, proxied, px := proxiedPool(t)
	_, runs := startInbox(t, direct, topic)
	reg := inbox.NewRegistry()
	reg.Handle(topic, inbox.HandlerFunc("count_"+topic, func(context.Context, []byte) error { return nil }))
	setter, err := inbox.New(proxied, reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatalf("inbox.New: %v", err)
	}
	ids := make(map[uuid.UUID]bool, n)
	recs := make([]*kgo.Record, 0, n)
	for range n {
		id := uuid.New()
		ids[id] = true
		recs = append(recs, event(topic, id))
	}
	produce(t, seeds, recs)
	px.setDown(true)

	opts := inboxkafka.Options{
		Seeds: seeds, Group: group, Topics: []string{topic}, IDHeader: idHeader, MaxPollRecords: 100,
		RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond,
		MaxBlockRebalance: 200 * time.Millisecond, AttemptTimeout: 5 * time.Second,
	}
	first, err := inboxkafka.New(setter.Client(), opts, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	run(t, first)
	testenv.Eventually(t, within, "the first consumer failing", func() (bool, error) { return first.Stats().SetFailures >= 3, nil })
	second, err := inboxkafka.New(setter.Client(), opts, fastGroup()...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	run(t, second)
	testenv.Eventually(t, within, "the second consumer polling a batch", func() (bool, error) { return second.Stats().Batches > 0, nil })
	adm := kadm.NewClient(kafkaClient(t, seeds))
	ctx := context.Background()
	if got := committedCount(ctx, t, adm, group, topic); got != 0 {
		t.Fatalf("%d partitions have offsets committed while Set fails", got)
	}

	px.setDown(false)
	testenv.Eventually(t, within, "offsets committed to the end", func() (bool, error) {
		return committedAtEnd(ctx, adm, group, topic)
	})
	testenv.Eventually(t, within, "every handler run once", func() (bool, error) { return runs.check(ids) })
	if got, err := stored(ctx, direct); err != nil || got != n {
		t.Fatalf("stored %d events (%v), want %d", got, err, n)
	}
	t.Logf("first %+v; second %+v", first.Stats(), second.Stats())
}
