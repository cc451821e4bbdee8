package inboxotel_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
	inboxotel "github.com/pginbox/inbox/otel"
)

// status is the inbox.status attribute.
func status(s string) attribute.KeyValue { return inboxotel.StatusKey.String(s) }

// checkAgainstStats fails unless inbox.rows and inbox.lag report exactly
// what Stats reports, pair by pair.
func checkAgainstStats(t *testing.T, cl collected, stats []inbox.HandlerStats) {
	t.Helper()
	if got, want := cl.points("inbox.rows"), 5*len(stats); got != want {
		t.Errorf("inbox.rows has %d points, want %d (5 statuses × %d pairs)", got, want, len(stats))
	}
	if got, want := cl.points("inbox.lag"), len(stats); got != want {
		t.Errorf("inbox.lag has %d points, want %d", got, want)
	}
	for _, h := range stats {
		pair := []attribute.KeyValue{attribute.String("messaging.destination.name", h.EventType), inboxotel.HandlerKeyKey.String(h.HandlerKey)}
		for s, n := range map[string]int64{"pending": h.Pending, "in_progress": h.InProgress, "failed": h.Failed, "done": h.Done, "dead": h.Dead} {
			if got := cl.sum("inbox.rows", append(pair, status(s))...); got != n {
				t.Errorf("inbox.rows{%s/%s, %s} = %d, Stats says %d", h.EventType, h.HandlerKey, s, got, n)
			}
		}
	}
}

// TestRowsAndLagFromStats: rows stored while no worker runs make the lag
// grow, and inbox.rows matches Stats; once workers have finished them,
// inbox.rows matches Stats again and the lag is zero; unregistering stops
// the reports.
func TestRowsAndLagFromStats(t *testing.T) {
	const n = 5
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	mt := newMeter(t)
	instr, err := inboxotel.New(inboxotel.WithMeterProvider(mt), inboxotel.WithStatsTTL(0), inboxotel.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("order",
		inbox.HandlerFunc("ok", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("bad", func(context.Context, []byte) error { return inbox.Discard(errors.New("no")) }))
	producer, err := inbox.New(pool, reg, instr.Options()...) // never started: no workers
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := producer.Client().Set(ctx, testenv.Record(t, uuid.New(), "order", fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	admin, err := inbox.NewAdmin(pool)
	if err != nil {
		t.Fatal(err)
	}
	unregister, err := instr.ObserveAdmin(admin)
	if err != nil {
		t.Fatal(err)
	}

	first := mt.collect(t)
	stats, err := admin.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != 2 || stats[0].Pending != n || stats[1].Pending != n {
		t.Fatalf("Stats = %+v, want 2 pairs with %d pending rows each", stats, n)
	}
	checkAgainstStats(t, first, stats)
	lag1, ok := first.gauge("inbox.lag", destOrder, keyOK)
	if !ok {
		t.Fatal("no inbox.lag for order/ok")
	}
	var lag2 float64
	testenv.Eventually(t, 10*time.Second, "the lag to grow while no worker runs", func() (bool, error) {
		lag2, _ = mt.collect(t).gauge("inbox.lag", destOrder, keyOK)
		return lag2 > lag1, nil
	})
	t.Logf("lag grew from %.3fs to %.3fs", lag1, lag2)

	testenv.Start(t, ctx, pool, reg, testenv.Fast(t, instr.Options()...)...)
	testenv.Eventually(t, 10*time.Second, "the rows to finish", func() (bool, error) {
		stats, err = admin.Stats(ctx)
		return err == nil && len(stats) == 2 && stats[0].Done+stats[0].Dead == n && stats[1].Done+stats[1].Dead == n, err
	})
	done := mt.collect(t)
	checkAgainstStats(t, done, stats)
	if got := done.sum("inbox.rows", keyOK, status("done")); got != n {
		t.Errorf("inbox.rows{ok, done} = %d, want %d", got, n)
	}
	if got := done.sum("inbox.rows", keyBad, status("dead")); got != n {
		t.Errorf("inbox.rows{bad, dead} = %d, want %d", got, n)
	}
	if lag, _ := done.gauge("inbox.lag", keyOK); lag != 0 {
		t.Errorf("inbox.lag{ok} = %v once every row is done, want 0", lag)
	}

	if err := unregister(); err != nil {
		t.Fatal(err)
	}
	if after := mt.collect(t); after.points("inbox.rows") != 0 || after.points("inbox.lag") != 0 {
		t.Errorf("after unregister: %d inbox.rows and %d inbox.lag points, want none",
			after.points("inbox.rows"), after.points("inbox.lag"))
	}
}
