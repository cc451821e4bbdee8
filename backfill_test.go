package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// Backfill gives a handler added to an event type rows for the events
// stored before it: only those stored since the given time, none for
// events whose payload was erased everywhere, never a second row. It
// resumes from its token after an interruption, a second run creates
// nothing, and the backfilled rows run in the order of their keys.
func TestBackfill(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	old := inbox.NewRegistry()
	old.On("order", inbox.HandlerFunc("a", badNoop))
	writer, err := inbox.New(pool, old)
	if err != nil {
		t.Fatal(err)
	}
	set := func(from, to int) {
		var recs []*inbox.Record
		for i := from; i < to; i++ {
			if i%10 == 9 { // no ordering key
				recs = append(recs, testenv.Record(t, uuid.New(), "order", string(orderEvent(fmt.Sprintf("u%d", i), 0))))
				continue
			}
			key := fmt.Sprintf("k%d", i%5)
			recs = append(recs, testenv.Record(t, uuid.New(), "order", string(orderEvent(key, i/5))).WithOrderingKey(key))
		}
		if err := writer.Client().Set(ctx, recs...); err != nil {
			t.Fatal(err)
		}
	}
	set(0, 50) // before since: not backfilled
	var since time.Time
	if err := pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&since); err != nil {
		t.Fatal(err)
	}
	set(50, 550)
	var stored time.Time // after every event was stored, before any row was backfilled
	if err := pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	// Retention erased the payloads of 20 events (as WithPayloadRetention does).
	if _, err := pool.Exec(ctx, `UPDATE inbox_records SET payload = NULL
		WHERE event_id IN (SELECT event_id FROM inbox_records WHERE created_at >= $1 ORDER BY event_id LIMIT 20)`, since); err != nil {
		t.Fatal(err)
	}

	admin := writer.Admin()
	spec := inbox.BackfillSpec{EventType: "order", HandlerKey: "b", Since: since}
	dry, err := admin.Backfill(ctx, spec, inbox.ActionOptions{DryRun: true, BatchSize: 100}, nil)
	if err != nil || dry.Created != 480 || dry.PayloadErased != 20 || dry.Existing != 0 {
		t.Fatalf("dry run = %+v, %v; want 480 to create, 20 erased", dry, err)
	}
	// Interrupted after the third batch.
	cctx, cancel := context.WithCancel(ctx)
	batches := 0
	part, err := admin.Backfill(cctx, spec, inbox.ActionOptions{BatchSize: 64}, func(inbox.BackfillResult) {
		if batches++; batches == 3 {
			cancel()
		}
	})
	cancel()
	if !errors.Is(err, context.Canceled) || part.Resume == "" || part.Created+part.PayloadErased != 3*64 {
		t.Fatalf("interrupted backfill = %+v, %v; want 3 batches of 64 events and a resume token", part, err)
	}
	spec.After = part.Resume
	rest, err := admin.Backfill(ctx, spec, inbox.ActionOptions{BatchSize: 64}, nil)
	if err != nil || part.Created+rest.Created != 480 || part.PayloadErased+rest.PayloadErased != 20 || rest.Existing != 0 {
		t.Fatalf("resumed backfill = %+v after %+v, %v; want 480 created in all, 20 erased", rest, part, err)
	}
	spec.After = ""
	again, err := admin.Backfill(ctx, spec, inbox.ActionOptions{}, nil)
	if err != nil || again.Created != 0 || again.Existing != 480 || again.PayloadErased != 20 {
		t.Fatalf("second backfill = %+v, %v; want nothing created, 480 existing", again, err)
	}
	// The rows backfilled for b do not make their events newer: no event
	// was stored since all were.
	later, err := admin.Backfill(ctx, inbox.BackfillSpec{EventType: "order", HandlerKey: "c", Since: stored},
		inbox.ActionOptions{DryRun: true}, nil)
	if err != nil || later.Created+later.Existing+later.PayloadErased != 0 {
		t.Fatalf("backfill of events stored since every event was = %+v, %v; want none", later, err)
	}
	var rows, distinct int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_id) FROM inbox_records WHERE handler_key = 'b'`).
		Scan(&rows, &distinct); err != nil || rows != 480 || distinct != 480 {
		t.Fatalf("handler b has %d rows of %d events (%v), want 480 of 480", rows, distinct, err)
	}

	// The backfilled rows run, in their keys' order.
	log := newOrderLog(t)
	var ran atomic.Int64
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("a", badNoop), inbox.HandlerFunc("b", func(_ context.Context, p []byte) error {
		defer log.end(p)
		log.begin(p)
		ran.Add(1)
		return nil
	}))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	waitCounts(t, ib, time.Minute, map[inbox.Status]int{inbox.Done: 550 + 480})
	log.check(t)
	if n := ran.Load(); n < 480 { // more if a lease was lost under load and a row ran again
		t.Fatalf("the backfilled rows ran %d times, want each of the 480 at least once", n)
	}

	for _, bad := range []inbox.BackfillSpec{
		{EventType: "", HandlerKey: "b"},
		{EventType: "order", HandlerKey: " "},
		{EventType: "order", HandlerKey: "b", MaxAttempts: -1},
		{EventType: "order", HandlerKey: "b", After: "not a token"},
	} {
		if _, err := admin.Backfill(ctx, bad, inbox.ActionOptions{}, nil); !errors.Is(err, inbox.ErrInvalidFilter) {
			t.Errorf("Backfill(%+v) = %v, want ErrInvalidFilter", bad, err)
		}
	}
}
