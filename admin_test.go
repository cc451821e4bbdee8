package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

type auditError struct{ order int }

func (e *auditError) Error() string {
	return fmt.Sprintf("audit rejected order %d (ref 0x%xe, trace %x-abc)", e.order, e.order, e.order*7919)
}

// tableCounts counts the rows per (event type, handler key, status) the
// slow way, to check the counters against.
func tableCounts(t testing.TB, pool *pgxpool.Pool) map[string]int64 {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT event_type, handler_key, status, count(*) FROM inbox_records GROUP BY 1, 2, 3`)
	if err != nil {
		t.Fatalf("count rows: %v", err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var et, k, s string
		var n int64
		if err := rows.Scan(&et, &k, &s, &n); err != nil {
			t.Fatalf("scan: %v", err)
		}
		out[et+"/"+k+"/"+inbox.Status(s).String()] = n
	}
	return out
}

// statsCounts flattens Stats to the shape of tableCounts.
func statsCounts(t testing.TB, admin *inbox.Admin) (map[string]int64, []inbox.HandlerStats) {
	t.Helper()
	stats, err := admin.Stats(context.Background())
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	out := map[string]int64{}
	for _, h := range stats {
		for _, s := range inbox.Statuses() {
			if n := h.Count(s); n != 0 {
				out[h.EventType+"/"+h.HandlerKey+"/"+s.String()] = n
			}
		}
	}
	return out, stats
}

func requireSameCounts(t testing.TB, pool *pgxpool.Pool, admin *inbox.Admin) []inbox.HandlerStats {
	t.Helper()
	want := tableCounts(t, pool)
	got, stats := statsCounts(t, admin)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Stats counts differ from the table's:\n got %v\nwant %v", got, want)
	}
	return stats
}

func statsOf(stats []inbox.HandlerStats, eventType, key string) inbox.HandlerStats {
	for _, h := range stats {
		if h.EventType == eventType && h.HandlerKey == key {
			return h
		}
	}
	return inbox.HandlerStats{}
}

// TestAdminDeadLetterCycle: rows die in two ways, Stats counts them,
// DeadGroups groups them by failure, Show tells their history, a group is
// replayed and runs to done, and the history says who replayed it.
func TestAdminDeadLetterCycle(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	var billFails atomic.Bool
	billFails.Store(true)
	reg := inbox.NewRegistry()
	reg.On("order.paid",
		inbox.HandlerFunc("ship", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("bill", func(_ context.Context, p []byte) error {
			if billFails.Load() {
				var n int
				fmt.Sscanf(string(p), "order %d", &n)
				return fmt.Errorf("timeout after %ds on order %d", n%7+1, n)
			}
			return nil
		}),
		inbox.HandlerFunc("audit", func(_ context.Context, p []byte) error {
			var n int
			fmt.Sscanf(string(p), "order %d", &n)
			if n%2 == 0 {
				return fmt.Errorf("audit: %w", &auditError{n})
			}
			return nil
		}),
	)
	const events = 40
	ids := make([]uuid.UUID, events)
	recs := make([]*inbox.Record, events)
	for i := range recs {
		ids[i] = uuid.New()
		recs[i] = testenv.Record(t, ids[i], "order.paid", fmt.Sprintf("order %d <script>alert(%d)</script>", 1000+i, i))
	}
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithMaxRetryAttempt(2))...)
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatalf("Set: %v", err)
	}
	waitCounts(t, ib, 30*time.Second, map[inbox.Status]int{inbox.Null: 0, inbox.Progress: 0, inbox.Failed: 0, inbox.Dead: 60})
	admin := ib.Admin()

	stats := requireSameCounts(t, pool, admin)
	if len(stats) != 3 {
		t.Fatalf("Stats has %d pairs, want 3: %+v", len(stats), stats)
	}
	bill, ship, audit := statsOf(stats, "order.paid", "bill"), statsOf(stats, "order.paid", "ship"), statsOf(stats, "order.paid", "audit")
	if bill.Dead != events || ship.Done != events || audit.Done != events/2 || audit.Dead != events/2 {
		t.Fatalf("stats: bill %+v, ship %+v, audit %+v", bill, ship, audit)
	}
	if done, dead := ship.FinishedLastHour(); done != events || dead != 0 {
		t.Fatalf("ship finished last hour: done %d dead %d, want %d 0", done, dead, events)
	}
	if _, dead := bill.FinishedLastHour(); dead != events {
		t.Fatalf("bill dead last hour %d, want %d", dead, events)
	}
	if len(ship.PerMinute) != 60 || bill.Lag != 0 || bill.Paused {
		t.Fatalf("bill: %d minutes, lag %v, paused %v", len(ship.PerMinute), bill.Lag, bill.Paused)
	}

	groups, err := admin.DeadGroups(ctx, inbox.Filter{}, 0)
	if err != nil {
		t.Fatalf("DeadGroups: %v", err)
	}
	if len(groups) != 2 {
		t.Fatalf("got %d groups, want 2: %+v", len(groups), groups)
	}
	billGroup, auditGroup := groups[0], groups[1]
	if billGroup.HandlerKey != "bill" || billGroup.Count != events || billGroup.Pattern != "timeout after <n>s on order <n>" ||
		billGroup.ErrorType != "*errors.errorString" || !strings.HasPrefix(billGroup.Sample, "timeout after ") {
		t.Fatalf("bill group: %+v", billGroup)
	}
	if auditGroup.HandlerKey != "audit" || auditGroup.Count != events/2 || auditGroup.ErrorType != "*inbox_test.auditError" ||
		auditGroup.Pattern != "audit: audit rejected order <n> (ref <n>, trace <n>-abc)" {
		t.Fatalf("audit group: %+v", auditGroup)
	}
	if n, err := admin.Count(ctx, inbox.Filter{Fingerprint: auditGroup.Fingerprint}); err != nil || n != events/2 {
		t.Fatalf("Count of the audit group: %d, %v", n, err)
	}

	ev, err := admin.Show(ctx, ids[0])
	if err != nil {
		t.Fatalf("Show: %v", err)
	}
	if len(ev.Rows) != 3 || !strings.Contains(string(ev.Payload), "<script>") || ev.PayloadErased {
		t.Fatalf("Show: %+v", ev)
	}
	var billHistory []string
	for _, h := range ev.History {
		if h.HandlerKey == "bill" {
			billHistory = append(billHistory, fmt.Sprintf("%s %d", h.Kind, h.Attempt))
		}
	}
	if strings.Join(billHistory, ",") != "failed 1,dead 2" {
		t.Fatalf("bill history %v, want failed 1, dead 2", billHistory)
	}

	// A dry run counts and changes nothing.
	res, err := admin.Replay(ctx, inbox.Filter{Fingerprint: billGroup.Fingerprint}, inbox.ActionOptions{DryRun: true})
	if err != nil || res.Changed != events {
		t.Fatalf("Replay dry run: %+v, %v", res, err)
	}
	if n, err := admin.Count(ctx, inbox.Filter{Fingerprint: billGroup.Fingerprint}); err != nil || n != events {
		t.Fatalf("after the dry run, the group has %d rows (%v), want %d", n, err, events)
	}

	// Replay the bill group, in batches smaller than the group.
	billFails.Store(false)
	var progress []int64
	res, err = admin.Replay(ctx, inbox.Filter{Fingerprint: billGroup.Fingerprint},
		inbox.ActionOptions{Actor: "alice", Reason: "billing fixed", BatchSize: 15, Progress: func(n int64) { progress = append(progress, n) }})
	if err != nil || res.Changed != events {
		t.Fatalf("Replay: %+v, %v", res, err)
	}
	if fmt.Sprint(progress) != "[15 30 40]" {
		t.Fatalf("progress %v, want [15 30 40]", progress)
	}
	waitCounts(t, ib, 30*time.Second, map[inbox.Status]int{inbox.Null: 0, inbox.Progress: 0, inbox.Dead: events / 2})
	stats = requireSameCounts(t, pool, admin)
	if b := statsOf(stats, "order.paid", "bill"); b.Done != events || b.Dead != 0 {
		t.Fatalf("bill after replay: %+v", b)
	}
	ev, err = admin.Show(ctx, ids[0])
	if err != nil {
		t.Fatalf("Show: %v", err)
	}
	var replayed *inbox.HistoryEntry
	for i, h := range ev.History {
		if h.Kind == "replayed" {
			replayed = &ev.History[i]
		}
	}
	if replayed == nil || replayed.Actor != "alice" || replayed.Text != "billing fixed" || replayed.HandlerKey != "bill" || replayed.Attempt != 2 {
		t.Fatalf("history after replay: %+v", ev.History)
	}
	for _, r := range ev.Rows {
		if r.HandlerKey == "bill" && (r.Status != inbox.Done || r.Attempts != 1) {
			t.Fatalf("bill row after replay: %+v", r)
		}
	}

	// Discarding the audit group marks it handled: one group of discards.
	res, err = admin.Discard(ctx, inbox.Filter{Fingerprint: auditGroup.Fingerprint},
		inbox.ActionOptions{Actor: "bob", Reason: "audit not needed"})
	if err != nil || res.Changed != events/2 {
		t.Fatalf("Discard: %+v, %v", res, err)
	}
	groups, err = admin.DeadGroups(ctx, inbox.Filter{}, 0)
	if err != nil || len(groups) != 1 || groups[0].Count != events/2 || groups[0].ErrorType != "inbox.discarded" ||
		groups[0].Sample != "discarded by bob: audit not needed" {
		t.Fatalf("groups after discard: %+v, %v", groups, err)
	}
	ev, err = admin.Show(ctx, ids[0]) // an even order: its audit row died
	if err != nil {
		t.Fatalf("Show: %v", err)
	}
	if last := ev.History[len(ev.History)-1]; last.Kind != "dead" || last.Actor != "bob" || last.HandlerKey != "audit" ||
		last.Text != "discarded by bob: audit not needed" {
		t.Fatalf("history after discard: %+v", ev.History)
	}
	requireSameCounts(t, pool, admin)
}

// TestAdminPause: a paused handler's rows are stored but not claimed,
// while the other handlers of the same events run; Resume lets them run.
func TestAdminPause(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("user.created", r.handler("email"), r.handler("crm"))
	reg.On("user.deleted", r.handler("email"))
	ib := start(t, pool, reg, testenv.Fast(t)...)
	admin := ib.Admin()
	if err := admin.Pause(ctx, "", "crm", "carol", "crm down"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := admin.Pause(ctx, "user.deleted", "", "carol", "gdpr review"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	const events = 20
	var recs []*inbox.Record
	for i := range events {
		recs = append(recs, testenv.Record(t, uuid.New(), "user.created", fmt.Sprint("c", i)), testenv.Record(t, uuid.New(), "user.deleted", fmt.Sprint("d", i)))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatalf("Set: %v", err)
	}
	// The claims that ran email for user.created also saw the paused rows.
	testenv.Eventually(t, 10*time.Second, "email rows of user.created done", func() (bool, error) {
		n, err := admin.Count(ctx, inbox.Filter{EventType: "user.created", HandlerKey: "email", Statuses: []inbox.Status{inbox.Done}})
		return n == events, err
	})
	stats := requireSameCounts(t, pool, admin)
	crm, deleted := statsOf(stats, "user.created", "crm"), statsOf(stats, "user.deleted", "email")
	if crm.Pending != events || !crm.Paused || deleted.Pending != events || !deleted.Paused {
		t.Fatalf("paused pairs: crm %+v, user.deleted %+v", crm, deleted)
	}
	if statsOf(stats, "user.created", "email").Paused {
		t.Fatal("email of user.created reported paused")
	}
	if crm.Lag <= 0 {
		t.Fatalf("crm lag %v, want > 0 while paused", crm.Lag)
	}
	if n, err := admin.Count(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Null}}); err != nil || n != 2*events {
		t.Fatalf("pending rows %d (%v), want %d: a paused row was claimed", n, err, 2*events)
	}
	pauses, err := admin.Pauses(ctx)
	if err != nil || len(pauses) != 2 || pauses[0].HandlerKey != "crm" || pauses[0].Actor != "carol" || pauses[1].Reason != "gdpr review" {
		t.Fatalf("Pauses: %+v, %v", pauses, err)
	}
	if err := admin.Resume(ctx, "", "crm"); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if err := admin.Resume(ctx, "", "crm"); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("second Resume: %v, want ErrNotFound", err)
	}
	if err := admin.Resume(ctx, "user.deleted", ""); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Done: 3 * events})
	for k, n := range r.snapshot() {
		if n != 1 {
			t.Fatalf("%s ran %d times", k, n)
		}
	}
}

// TestAdminListAndBulkActions: keyset pages cover every row once; bulk
// actions refuse bad filters and change nothing then; Delete and Purge
// keep the counters exact.
func TestAdminListAndBulkActions(t *testing.T) {
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("k", func(_ context.Context, p []byte) error {
		if strings.HasPrefix(string(p), "fail") {
			return inbox.RetryAfter(time.Hour, errors.New("upstream said no"))
		}
		return nil
	}))
	const events = 250
	var recs []*inbox.Record
	for i := range events {
		p := "ok"
		if i%10 == 0 {
			p = "fail"
		}
		recs = append(recs, testenv.Record(t, uuid.New(), "e", p))
	}
	ib := start(t, pool, reg, testenv.Fast(t)...)
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatalf("Set: %v", err)
	}
	waitCounts(t, ib, 20*time.Second, map[inbox.Status]int{inbox.Done: 225, inbox.Failed: 25})
	admin := ib.Admin()

	seen := map[uuid.UUID]bool{}
	after, pages := "", 0
	for {
		page, err := admin.List(ctx, inbox.Filter{}, after, 100)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		pages++
		for _, r := range page.Rows {
			if seen[r.EventID] {
				t.Fatalf("row %s on two pages", r.EventID)
			}
			seen[r.EventID] = true
		}
		if after = page.Next; after == "" {
			break
		}
	}
	if len(seen) != events || pages != 3 {
		t.Fatalf("List saw %d rows in %d pages, want %d in 3", len(seen), pages, events)
	}
	page, err := admin.List(ctx, inbox.Filter{ErrorContains: "UPSTREAM", Statuses: []inbox.Status{inbox.Failed}}, "", 0)
	if err != nil || len(page.Rows) != 25 || page.Next != "" || page.Rows[0].ErrorType != "*errors.errorString" {
		t.Fatalf("List failed rows: %d rows, next %q, %v", len(page.Rows), page.Next, err)
	}

	for _, bad := range []struct {
		name string
		call func() error
	}{
		{"delete everything", func() error { _, err := admin.Delete(ctx, inbox.Filter{}, inbox.ActionOptions{}); return err }},
		{"unknown status", func() error {
			_, err := admin.Delete(ctx, inbox.Filter{Statuses: []inbox.Status{"finished"}}, inbox.ActionOptions{})
			return err
		}},
		{"replay pending rows", func() error {
			_, err := admin.Replay(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Null}}, inbox.ActionOptions{})
			return err
		}},
		{"bad fingerprint", func() error { _, err := admin.Count(ctx, inbox.Filter{Fingerprint: "x'; drop table"}); return err }},
		{"bad page token", func() error { _, err := admin.List(ctx, inbox.Filter{}, "nope", 0); return err }},
		{"since after until", func() error {
			_, err := admin.List(ctx, inbox.Filter{Since: time.Now(), Until: time.Now().Add(-time.Hour)}, "", 0)
			return err
		}},
		{"pause nothing", func() error { return admin.Pause(ctx, "", "", "", "") }},
		{"NUL in a filter", func() error {
			_, err := admin.Discard(ctx, inbox.Filter{HandlerKey: "k\x00"}, inbox.ActionOptions{})
			return err
		}},
	} {
		if err := bad.call(); !errors.Is(err, inbox.ErrInvalidFilter) {
			t.Errorf("%s: %v, want ErrInvalidFilter", bad.name, err)
		}
	}
	if _, err := admin.Show(ctx, uuid.New()); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("Show of an unknown event: %v", err)
	}
	requireSameCounts(t, pool, admin)

	// Discard the failed rows, then delete them; age half the done rows
	// past the retention window and purge them.
	res, err := admin.Discard(ctx, inbox.Filter{HandlerKey: "k"}, inbox.ActionOptions{Actor: "ops"})
	if err != nil || res.Changed != 25 {
		t.Fatalf("Discard: %+v, %v", res, err)
	}
	res, err = admin.Delete(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Dead}}, inbox.ActionOptions{BatchSize: 10})
	if err != nil || res.Changed != 25 {
		t.Fatalf("Delete: %+v, %v", res, err)
	}
	tag, err := pool.Exec(ctx, `UPDATE inbox_records SET updated_at = now() - interval '100 days'
		WHERE ctid = ANY (ARRAY(SELECT ctid FROM inbox_records WHERE status = 'done' LIMIT 100))`)
	if err != nil || tag.RowsAffected() != 100 {
		t.Fatalf("age rows: %v", err)
	}
	pr, err := admin.Purge(ctx, inbox.PurgeOptions{}, nil)
	if err != nil || pr.RowsDeleted != 100 {
		t.Fatalf("Purge: %+v, %v", pr, err)
	}
	stats := requireSameCounts(t, pool, admin)
	if k := statsOf(stats, "e", "k"); k.Done != 125 || k.Dead != 0 || k.Failed != 0 {
		t.Fatalf("after delete and purge: %+v", k)
	}

	// A done row past the payload window loses its payload to Purge, and
	// can no longer be replayed: the others of the same call still are.
	var erasedID, keptID uuid.UUID
	if err := pool.QueryRow(ctx, `UPDATE inbox_records SET updated_at = now() - interval '10 days'
		WHERE ctid = (SELECT ctid FROM inbox_records WHERE status = 'done' LIMIT 1) RETURNING event_id`).Scan(&erasedID); err != nil {
		t.Fatalf("age a row: %v", err)
	}
	if pr, err := admin.Purge(ctx, inbox.PurgeOptions{}, nil); err != nil || pr.PayloadsErased != 1 || pr.RowsDeleted != 0 {
		t.Fatalf("Purge: %+v, %v", pr, err)
	}
	if err := admin.ReplayRow(ctx, erasedID, "k", inbox.ActionOptions{}); !errors.Is(err, inbox.ErrPayloadErased) {
		t.Fatalf("ReplayRow of an erased row: %v, want ErrPayloadErased", err)
	}
	if err := pool.QueryRow(ctx, `SELECT event_id FROM inbox_records WHERE status = 'done' AND payload IS NOT NULL LIMIT 1`).Scan(&keptID); err != nil {
		t.Fatal(err)
	}
	res, err = admin.Replay(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Done}, Since: time.Now().Add(-30 * 24 * time.Hour),
		Until: time.Now().Add(-24 * time.Hour)}, inbox.ActionOptions{})
	if !errors.Is(err, inbox.ErrPayloadErased) || res.Changed != 0 || res.PayloadErased != 1 {
		t.Fatalf("Replay of the erased row by filter: %+v, %v", res, err)
	}
	if err := admin.ReplayRow(ctx, keptID, "k", inbox.ActionOptions{Actor: "ops"}); err != nil {
		t.Fatalf("ReplayRow of a done row: %v", err)
	}
	waitCounts(t, ib, 10*time.Second, map[inbox.Status]int{inbox.Null: 0, inbox.Progress: 0, inbox.Done: 125})
	if ev, err := admin.Show(ctx, erasedID); err != nil || !ev.PayloadErased || ev.Payload != nil {
		t.Fatalf("Show of the erased event: %+v, %v", ev, err)
	}
	if _, err := pool.Exec(ctx, `TRUNCATE inbox_records`); err != nil {
		t.Fatalf("truncate: %v", err)
	}
	if got, _ := statsCounts(t, admin); len(got) != 0 {
		t.Fatalf("Stats after TRUNCATE: %v", got)
	}
}
