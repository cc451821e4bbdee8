package inbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// The payload window erases the payloads of done rows older than it and
// keeps the rows, so a redelivery is still a duplicate (and a changed one
// still a conflict); dead rows keep their payload; the dedup window deletes
// rows older than it.
func TestPayloadWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("e", r.handler("h"))
	writer, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]uuid.UUID{"old done": uuid.New(), "new done": uuid.New(), "old dead": uuid.New(), "ancient": uuid.New()}
	for name, id := range ids {
		if err := writer.Client().Set(ctx, testenv.Record(t, id, "e", name)); err != nil {
			t.Fatal(err)
		}
	}
	// Finish the rows by hand, with ages: 10 days, now, 10 days (dead), 70 days.
	_, err = pool.Exec(ctx, `
		UPDATE inbox_records SET status = CASE WHEN event_id = $3 THEN 'dead' ELSE 'done' END, attempts = 1,
		       updated_at = now() - CASE event_id WHEN $2 THEN interval '0' WHEN $4 THEN interval '70 days' ELSE interval '10 days' END
		WHERE event_id IN ($1, $2, $3, $4)`, ids["old done"], ids["new done"], ids["old dead"], ids["ancient"])
	if err != nil {
		t.Fatal(err)
	}
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithRetention(20*time.Millisecond, 60), inbox.WithPayloadRetention(7))...)
	testenv.Eventually(t, 10*time.Second, "retention", func() (bool, error) {
		states, err := ib.Lookup(ctx, ids["old done"])
		return err == nil && len(states) == 1 && states[0].PayloadErased, err
	})
	want := map[string]struct{ exists, erased bool }{
		"old done": {true, true}, "new done": {true, false}, "old dead": {true, false}, "ancient": {false, false},
	}
	for name, w := range want {
		states, err := ib.Lookup(ctx, ids[name])
		if err != nil {
			t.Fatal(err)
		}
		if (len(states) == 1) != w.exists || (w.exists && states[0].PayloadErased != w.erased) {
			t.Errorf("%s: %+v, want exists=%v erased=%v", name, states, w.exists, w.erased)
		}
	}
	res, err := ib.Client().SetWithResult(ctx, testenv.Record(t, ids["old done"], "e", "old done"))
	if err != nil || res.Duplicates != 1 || res.Rows != 0 {
		t.Fatalf("redelivery after the payload window: %+v, %v; want a duplicate", res, err)
	}
	res, err = ib.Client().SetWithResult(ctx, testenv.Record(t, ids["old done"], "e", "changed"))
	if err != nil || res.Conflicting != 1 {
		t.Fatalf("changed redelivery after the payload window: %+v, %v; want a conflict", res, err)
	}
	res, err = ib.Client().SetWithResult(ctx, testenv.Record(t, ids["ancient"], "e", "ancient"))
	if err != nil || res.New != 1 {
		t.Fatalf("redelivery after the dedup window: %+v, %v; want it stored anew", res, err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 3, inbox.Dead: 1})
	if got := r.snapshot(); len(got) != 1 || got["h/ancient"] != 1 {
		t.Fatalf("runs = %v, want only the event stored anew", got)
	}
}
