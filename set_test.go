package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// SetWithResult says what it did with each record: new, duplicate (in an
// earlier call or the same one), conflicting (same id, other payload or
// event type), or skipped; the conflicts are logged at warn level with the
// event id; and under IgnoreConflicting the stored version stays.
func TestSetResultAndConflicts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("a", badNoop), inbox.HandlerFunc("b", badNoop))
	reg.On("refund", inbox.HandlerFunc("a", badNoop))
	logs := &testenv.LogLines{}
	ib, err := inbox.New(pool, reg, inbox.WithUnknownEventTypes(inbox.SkipUnknown), inbox.WithLogger(logs.Logger()))
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	first, second, third := uuid.New(), uuid.New(), uuid.New()
	res, err := c.SetWithResult(ctx,
		testenv.Record(t, first, "order", "v1"),
		testenv.Record(t, second, "order", "v1"),
		testenv.Record(t, first, "order", "v1"),  // a duplicate within the call
		testenv.Record(t, second, "order", "v2"), // a conflict within the call
		testenv.Record(t, uuid.New(), "unknown", ""),
	)
	if err != nil {
		t.Fatal(err)
	}
	want := inbox.SetResult{Records: 5, New: 2, Duplicates: 1, Conflicting: 1, Skipped: 1, Rows: 4,
		ConflictingIDs: []uuid.UUID{second}}
	if !equalResult(res, want) {
		t.Fatalf("first call: %+v, want %+v", res, want)
	}
	res, err = c.SetWithResult(ctx,
		testenv.Record(t, first, "order", "v1"),   // duplicate of a stored event
		testenv.Record(t, second, "order", "v9"),  // conflicts with the stored payload
		testenv.Record(t, first, "refund", "v1"),  // same id, another type: another handler row
		testenv.Record(t, third, "refund", "new"), // new
	)
	if err != nil {
		t.Fatal(err)
	}
	// first/refund has key "a", which first/order stored already: a
	// conflicting duplicate too (same id and key, other event type).
	want = inbox.SetResult{Records: 4, New: 1, Duplicates: 1, Conflicting: 2, Rows: 1, ConflictingIDs: []uuid.UUID{second, first}}
	if !equalResult(res, want) {
		t.Fatalf("second call: %+v, want %+v", res, want)
	}
	var payload string
	if err := pool.QueryRow(ctx, `SELECT convert_from(payload, 'UTF8') FROM inbox_records WHERE event_id = $1 AND handler_key = 'b'`, second).
		Scan(&payload); err != nil || payload != "v1" {
		t.Fatalf("stored payload %q, %v; want the first version kept", payload, err)
	}
	if n := logs.Count("conflicting duplicate", second.String()); n != 2 {
		t.Fatalf("%d warnings name %s, want one per call:\n%s", n, second, logs)
	}
}

// A Set refusing records names every refused record by its position in a
// RecordsError, so a consumer can move exactly those aside: invalid records
// always, records of unknown types only under RejectUnknown. Nothing is
// written, and the rest of the call stores as it is once they are gone.
func TestRecordsErrorNamesEveryRefusedRecord(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("a", badNoop))
	overlong := testenv.Record(t, uuid.New(), "order", "x").WithTraceContext(strings.Repeat("t", inbox.MaxTraceContextLength+1))
	records := []*inbox.Record{
		testenv.Record(t, uuid.New(), "order", "ok"),
		nil,
		testenv.Record(t, uuid.New(), "payment", ""),
		testenv.Record(t, uuid.New(), "order", "ok"),
		overlong,
		{},
		testenv.Record(t, uuid.New(), "payment", ""),
	}
	for _, tc := range []struct {
		policy inbox.UnknownEventTypes
		want   []int
	}{
		{inbox.RejectUnknown, []int{1, 2, 4, 5, 6}},
		{inbox.SkipUnknown, []int{1, 4, 5}},
	} {
		var before int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records`).Scan(&before); err != nil {
			t.Fatal(err)
		}
		ib, err := inbox.New(pool, reg, inbox.WithUnknownEventTypes(tc.policy))
		if err != nil {
			t.Fatal(err)
		}
		err = ib.Client().Set(ctx, records...)
		var re *inbox.RecordsError
		if !errors.As(err, &re) || !slices.Equal(re.Indexes, tc.want) || len(re.Errs) != len(tc.want) {
			t.Fatalf("policy %v: Set = %v (%#v), want a RecordsError naming records %v", tc.policy, err, re, tc.want)
		}
		if !errors.Is(err, inbox.ErrInvalidRecord) || errors.Is(err, inbox.ErrUnknownEventType) != (tc.policy == inbox.RejectUnknown) {
			t.Fatalf("policy %v: %v does not wrap the sentinels of its records", tc.policy, err)
		}
		for k, i := range re.Indexes {
			if want := fmt.Sprintf("record %d: ", i); !strings.HasPrefix(re.Errs[k].Error(), want) {
				t.Fatalf("error of record %d = %q, want it to start %q", i, re.Errs[k], want)
			}
		}
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records`).Scan(&n); err != nil || n != before {
			t.Fatalf("policy %v: %d rows written (%v), want none", tc.policy, n-before, err)
		}
		var rest []*inbox.Record
		for i, r := range records {
			if !slices.Contains(re.Indexes, i) {
				rest = append(rest, r)
			}
		}
		res, err := ib.Client().SetWithResult(ctx, rest...)
		if err != nil || res.New+res.Duplicates != 2 {
			t.Fatalf("policy %v: Set of the rest = %+v, %v; want the two good records stored", tc.policy, res, err)
		}
	}
	if err := inbox.ValidateTraceContext(overlong.TraceContext()); !errors.Is(err, inbox.ErrInvalidRecord) {
		t.Fatalf("ValidateTraceContext(%d bytes) = %v, want ErrInvalidRecord", len(overlong.TraceContext()), err)
	}
	for _, tc := range []string{"", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"} {
		if err := inbox.ValidateTraceContext(tc); err != nil {
			t.Fatalf("ValidateTraceContext(%q) = %v, want nil", tc, err)
		}
	}
	for _, tc := range []string{"a\x00b", "\xff"} {
		if err := inbox.ValidateTraceContext(tc); !errors.Is(err, inbox.ErrInvalidRecord) {
			t.Fatalf("ValidateTraceContext(%q) = %v, want ErrInvalidRecord", tc, err)
		}
	}
}

// With RejectConflicting a conflict fails the whole call, naming the ids,
// and writes nothing: not even the call's new records. In SetTx the
// caller's transaction stays usable.
func TestRejectConflicting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("a", badNoop))
	ib, err := inbox.New(pool, reg, inbox.WithConflictingDuplicates(inbox.RejectConflicting), inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	c := ib.Client()
	stored := uuid.New()
	if err := c.Set(ctx, testenv.Record(t, stored, "order", "v1")); err != nil {
		t.Fatal(err)
	}
	fresh := uuid.New()
	err = c.Set(ctx, testenv.Record(t, fresh, "order", "new"), testenv.Record(t, stored, "order", "v2"))
	var ce *inbox.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, inbox.ErrConflictingDuplicate) || len(ce.IDs) != 1 || ce.IDs[0] != stored ||
		!strings.Contains(err.Error(), stored.String()) {
		t.Fatalf("Set = %v, want a ConflictError naming %s", err, stored)
	}
	// Within one call, before anything is sent.
	dup := uuid.New()
	err = c.Set(ctx, testenv.Record(t, dup, "order", "x"), testenv.Record(t, dup, "order", "y"))
	if !errors.As(err, &ce) || ce.IDs[0] != dup {
		t.Fatalf("Set with a conflict inside the call = %v, want a ConflictError naming %s", err, dup)
	}
	// In a transaction: the caller's own write survives the refused Set.
	if _, err := pool.Exec(ctx, `CREATE TABLE mine (x int)`); err != nil {
		t.Fatal(err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO mine VALUES (1)`); err != nil {
			return err
		}
		err := c.SetTx(ctx, tx, testenv.Record(t, uuid.New(), "order", "new"), testenv.Record(t, stored, "order", "v3"))
		if !errors.Is(err, inbox.ErrConflictingDuplicate) {
			return fmt.Errorf("SetTx did not reject the conflict: %v", err)
		}
		_, err = tx.Exec(ctx, `INSERT INTO mine VALUES (2)`) // the transaction still works
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows, mine int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM inbox_records), (SELECT count(*) FROM mine)`).Scan(&rows, &mine); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || mine != 2 {
		t.Fatalf("%d inbox rows and %d of the caller's rows, want 1 and 2: refused calls write nothing", rows, mine)
	}
	// Duplicates with the same payload are still fine.
	if res, err := c.SetWithResult(ctx, testenv.Record(t, stored, "order", "v1")); err != nil || res.Duplicates != 1 {
		t.Fatalf("SetWithResult of a plain duplicate = %+v, %v", res, err)
	}
}

// Concurrent Sets of the same new ids with different payloads: exactly one
// version is stored, and every other call sees a conflict, none an error.
func TestConcurrentConflictingSets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := testenv.MigratedPool(t)
	reg := inbox.NewRegistry()
	reg.On("order", inbox.HandlerFunc("a", badNoop))
	ib, err := inbox.New(pool, reg, inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, 100)
	for i := range ids {
		ids[i] = uuid.New()
	}
	const writers = 4
	results := make([]inbox.SetResult, writers)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var recs []*inbox.Record
			for _, id := range ids {
				recs = append(recs, testenv.Record(t, id, "order", string(rune('a'+w))))
			}
			results[w], errs[w] = ib.Client().SetWithResult(ctx, recs...)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var fresh, conflicting int
	for _, r := range results {
		fresh += r.New
		conflicting += r.Conflicting
	}
	if fresh != len(ids) || conflicting != (writers-1)*len(ids) {
		t.Fatalf("%d new and %d conflicting over %d writers, want %d and %d", fresh, conflicting, writers, len(ids), (writers-1)*len(ids))
	}
}

func equalResult(a, b inbox.SetResult) bool {
	if a.Records != b.Records || a.New != b.New || a.Duplicates != b.Duplicates || a.Conflicting != b.Conflicting ||
		a.Skipped != b.Skipped || a.Rows != b.Rows || len(a.ConflictingIDs) != len(b.ConflictingIDs) {
		return false
	}
	for i := range a.ConflictingIDs {
		if a.ConflictingIDs[i] != b.ConflictingIDs[i] {
			return false
		}
	}
	return true
}

// insertCounter counts the statements inserting into inbox_records that a
// pool's connections run.
type insertCounter struct{ n atomic.Int64 }

func (c *insertCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(strings.TrimSpace(d.SQL), "INSERT INTO inbox_records") {
		c.n.Add(1)
	}
	return ctx
}

func (c *insertCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// A Set of more than 16 MiB is split into several statements in one
// transaction: all rows are stored, and a conflict found in a later chunk
// under RejectConflicting undoes the earlier chunks too.
func TestLargeSetIsSplitAtomically(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	inserts := &insertCounter{}
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = testenv.Schema(t)
	cfg.ConnConfig.Tracer = inserts
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := inbox.Migrate(ctx, pool); err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	reg.On("big", inbox.HandlerFunc("a", badNoop), inbox.HandlerFunc("b", badNoop))
	ib, err := inbox.New(pool, reg, inbox.WithConflictingDuplicates(inbox.RejectConflicting), inbox.WithLogger(testenv.Logger(t)))
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("x", 1<<20)
	var recs []*inbox.Record
	for range 12 { // 12 records × 2 handlers × 1 MiB: two statements
		recs = append(recs, testenv.Record(t, uuid.New(), "big", payload))
	}
	inserts.n.Store(0)
	res, err := ib.Client().SetWithResult(ctx, recs...)
	if err != nil || res.New != 12 || res.Rows != 24 {
		t.Fatalf("SetWithResult = %+v, %v; want 12 new records, 24 rows", res, err)
	}
	if n := inserts.n.Load(); n < 2 {
		t.Fatalf("the 24 MiB Set ran %d INSERT statements, want it split in several", n)
	}
	// A new batch whose last record conflicts with a stored one: nothing of
	// it is stored, though its first chunk was sent first.
	var more []*inbox.Record
	for range 12 {
		more = append(more, testenv.Record(t, uuid.New(), "big", payload))
	}
	more = append(more, testenv.Record(t, recs[0].ID(), "big", "changed"))
	if err := ib.Client().Set(ctx, more...); !errors.Is(err, inbox.ErrConflictingDuplicate) {
		t.Fatalf("Set with a conflict in its last chunk = %v, want ErrConflictingDuplicate", err)
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox_records`).Scan(&rows); err != nil || rows != 24 {
		t.Fatalf("%d rows, %v; want the first call's 24 only", rows, err)
	}
}
