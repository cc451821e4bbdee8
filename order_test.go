package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// orderEvent is the payload of an ordered test event: its key and its
// place in the key's sequence, as the producer stored them.
func orderEvent(key string, n int) []byte { return []byte(key + ":" + strconv.Itoa(n)) }

func parseOrderEvent(t testing.TB, p []byte) (string, int) {
	key, num, ok := strings.Cut(string(p), ":")
	n, err := strconv.Atoi(num)
	if !ok || err != nil {
		t.Errorf("bad payload %q", p)
	}
	return key, n
}

// orderLog checks what an ordered handler sees: per key, one run at a
// time and never an earlier event after a later one (a re-run of the same
// event is allowed).
type orderLog struct {
	t        testing.TB
	mu       sync.Mutex
	inflight map[string]int
	last     map[string]int
	runs     map[string]int // per payload
	bad      []string
}

func newOrderLog(t testing.TB) *orderLog {
	return &orderLog{t: t, inflight: map[string]int{}, last: map[string]int{}, runs: map[string]int{}}
}

// begin records the start of a run and returns the run's number for
// this event, from 1.
func (l *orderLog) begin(p []byte) int {
	key, n := parseOrderEvent(l.t, p)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight[key]++
	if l.inflight[key] > 1 {
		l.bad = append(l.bad, fmt.Sprintf("%s ran while another row of key %s ran", p, key))
	}
	if last, ok := l.last[key]; ok && n < last {
		l.bad = append(l.bad, fmt.Sprintf("%s ran after %s:%d", p, key, last))
	}
	l.last[key] = n
	l.runs[string(p)]++
	return l.runs[string(p)]
}

func (l *orderLog) end(p []byte) {
	key, _ := parseOrderEvent(l.t, p)
	l.mu.Lock()
	l.inflight[key]--
	l.mu.Unlock()
}

func (l *orderLog) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.bad) > 0 {
		t.Fatalf("%d ordering violations, the first: %s", len(l.bad), strings.Join(l.bad[:min(len(l.bad), 10)], "; "))
	}
}

func (l *orderLog) ran(p []byte) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs[string(p)]
}

// orderedPool is a migrated pool large enough for several Inboxes.
func orderedPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool := testenv.Pool(t, 40)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// Three Inboxes drain 1,200 events of 40 ordering keys, stored by four
// producers in calls that mix keys, while every fifth event fails once:
// per key, the handler runs one row at a time and never sees an earlier
// event after a later one, and a failed row holds its key's later rows
// back until it succeeds.
func TestOrderedAcrossInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	log := newOrderLog(t)
	reg := inbox.NewRegistry()
	reg.On("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		defer log.end(p)
		run := log.begin(p)
		if _, n := parseOrderEvent(t, p); n%5 == 3 && run == 1 {
			return errors.New("first attempt fails")
		}
		return nil
	}))
	// Leases of the default length: the exact run counts below would not
	// survive a renewal held up past a one-second lease under load, and a
	// row given up running again.
	long := inbox.WithLease(inbox.DefaultLease)
	for range 3 {
		start(t, pool, reg, testenv.Fast(t, inbox.WithConcurrency(8), long)...)
	}
	client := start(t, pool, reg, testenv.Fast(t, long)...).Client()

	const keys, perKey, producers = 40, 30, 4
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for n := 0; n < perKey; n += 3 {
				var recs []*inbox.Record
				for k := p; k < keys; k += producers {
					key := fmt.Sprintf("k%d", k)
					for i := n; i < n+3; i++ {
						recs = append(recs, testenv.Record(t, uuid.New(), "acct", string(orderEvent(key, i))).WithOrderingKey(key))
					}
				}
				if err := client.Set(ctx, recs...); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	waitCounts(t, start(t, pool, reg, testenv.Fast(t, long)...), time.Minute, map[inbox.Status]int{inbox.Done: keys * perKey})
	log.check(t)
	for k := range keys {
		for n := range perKey {
			p := orderEvent(fmt.Sprintf("k%d", k), n)
			if want, got := 1+btoi(n%5 == 3), log.ran(p); got != want {
				t.Fatalf("%s ran %d times, want %d", p, got, want)
			}
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// A dead row parks its key: the key's later rows wait (stored, never
// claimed) while other keys go on, and a handler with
// HandlerMovesOnPastDead moves its own rows of the key on. Replaying the
// dead row runs it, then the rest in order; skipping a parked key runs
// the rest and leaves the dead row dead; deleting a parked key's dead row
// lets the rest run too.
func TestParkedKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	log, other := newOrderLog(t), newOrderLog(t)
	var healed atomic.Bool
	poison := func(p []byte) bool {
		s := string(p)
		return s == "k1:2" || s == "k3:0" || s == "k4:0"
	}
	reg := inbox.NewRegistry()
	reg.Handle("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		defer log.end(p)
		log.begin(p)
		if poison(p) && !healed.Load() {
			return errors.New("poison")
		}
		return nil
	}), inbox.HandlerMaxAttempts(2))
	reg.Handle("acct", inbox.HandlerFunc("other", func(_ context.Context, p []byte) error {
		defer other.end(p)
		other.begin(p)
		if poison(p) {
			return errors.New("poison")
		}
		return nil
	}), inbox.HandlerMaxAttempts(2), inbox.HandlerMovesOnPastDead())
	ib := start(t, pool, reg, testenv.Fast(t)...)
	ids := map[string]uuid.UUID{}
	var recs []*inbox.Record
	for key, n := range map[string]int{"k1": 5, "k2": 3, "k3": 3, "k4": 2} {
		for i := range n {
			p := string(orderEvent(key, i))
			ids[p] = uuid.New()
			recs = append(recs, testenv.Record(t, ids[p], "acct", p).WithOrderingKey(key))
		}
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	// "other" moves on: all its rows finish, three of them dead.
	testenv.Eventually(t, time.Minute, "the moving-on handler to finish every row", func() (bool, error) {
		for p := range ids {
			if want := 1 + btoi(poison([]byte(p))); other.ran([]byte(p)) < want {
				return false, nil
			}
		}
		return status(ctx, ib, ids["k1:4"], "other") == inbox.Done, nil
	})
	for _, p := range []string{"k1:2", "k3:0", "k4:0"} {
		testenv.Eventually(t, time.Minute, p+" dead", func() (bool, error) {
			return status(ctx, ib, ids[p], "apply") == inbox.Dead, nil
		})
	}
	testenv.Eventually(t, time.Minute, "k2 done", func() (bool, error) {
		return status(ctx, ib, ids["k2:2"], "apply") == inbox.Done, nil
	})
	for _, p := range []string{"k1:3", "k1:4", "k3:1", "k3:2", "k4:1"} {
		rows, err := ib.Lookup(ctx, ids[p])
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range rows {
			if r.HandlerKey != "apply" {
				continue
			}
			found = true
			if r.Status != inbox.Null || !r.Waiting || r.OrderingKey == "" || log.ran([]byte(p)) != 0 {
				t.Fatalf("%s behind a dead row: %+v, ran %d times; want pending, waiting, never run", p, r, log.ran([]byte(p)))
			}
		}
		if !found {
			t.Fatalf("%s has no row of apply: %+v", p, rows)
		}
	}
	admin := ib.Admin()
	parked, err := admin.ParkedKeys(ctx, 0)
	want := map[string]inbox.ParkedKey{
		"k1": {HandlerKey: "apply", OrderingKey: "k1", EventID: ids["k1:2"], EventType: "acct", Waiting: 2},
		"k3": {HandlerKey: "apply", OrderingKey: "k3", EventID: ids["k3:0"], EventType: "acct", Waiting: 2},
		"k4": {HandlerKey: "apply", OrderingKey: "k4", EventID: ids["k4:0"], EventType: "acct", Waiting: 1},
	}
	for i, k := range parked {
		k.DeadSince = time.Time{}
		if k != want[k.OrderingKey] || (i > 0 && k.Waiting > parked[i-1].Waiting) {
			err = fmt.Errorf("unexpected %+v", k)
		}
	}
	if err != nil || len(parked) != len(want) {
		t.Fatalf("ParkedKeys = %+v, %v; want, most waiting first, %+v", parked, err, want)
	}

	healed.Store(true)
	if res, err := admin.Replay(ctx, inbox.Filter{EventID: ids["k1:2"], HandlerKey: "apply"}, inbox.ActionOptions{Actor: "test"}); err != nil || res.Changed != 1 {
		t.Fatalf("Replay = %+v, %v", res, err)
	}
	if res, err := admin.SkipParked(ctx, "apply", "k3", inbox.ActionOptions{Actor: "test", Reason: "obsolete"}); err != nil || res.Changed != 1 {
		t.Fatalf("SkipParked = %+v, %v", res, err)
	}
	if res, err := admin.Delete(ctx, inbox.Filter{EventID: ids["k4:0"], HandlerKey: "apply"}, inbox.ActionOptions{}); err != nil || res.Changed != 1 {
		t.Fatalf("Delete = %+v, %v", res, err)
	}
	for _, p := range []string{"k1:2", "k1:3", "k1:4", "k3:1", "k3:2", "k4:1"} {
		testenv.Eventually(t, time.Minute, p+" done", func() (bool, error) {
			return status(ctx, ib, ids[p], "apply") == inbox.Done, nil
		})
	}
	if s := status(ctx, ib, ids["k3:0"], "apply"); s != inbox.Dead || log.ran([]byte("k3:0")) != 2 {
		t.Fatalf("skipped k3:0: status %q, ran %d times; want dead, not run again", s, log.ran([]byte("k3:0")))
	}
	log.check(t)
	other.check(t)
	if parked, err := admin.ParkedKeys(ctx, 0); err != nil || len(parked) != 0 {
		t.Fatalf("ParkedKeys after = %+v, %v; want none", parked, err)
	}
	if _, err := admin.SkipParked(ctx, "apply", "k2", inbox.ActionOptions{}); !errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("SkipParked of a key with no dead row = %v, want ErrNotFound", err)
	}
	ev, err := admin.Show(ctx, ids["k3:0"])
	if err != nil {
		t.Fatal(err)
	}
	skipped := false
	for _, h := range ev.History {
		skipped = skipped || (h.Kind == "skipped" && h.Actor == "test" && h.Text == "obsolete")
	}
	if !skipped {
		t.Fatalf("history of k3:0 %+v has no skip by test", ev.History)
	}
}

// status returns the status of the row (id, key), or "?" if not found.
func status(ctx context.Context, ib *inbox.Inbox, id uuid.UUID, key string) inbox.Status {
	rows, err := ib.Lookup(ctx, id)
	if err != nil {
		return "?"
	}
	for _, r := range rows {
		if r.HandlerKey == key {
			return r.Status
		}
	}
	return "?"
}

// A key with a long backlog does not hold up the others: its rows become
// due one at a time, each behind the rows already due, so the 60 single
// events stored after a backlog of 3,000 run before more than a few of it.
func TestOrderedFairness(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	var mu sync.Mutex
	bigRan, othersLeft := 0, 60
	bigAtLastOther := -1
	reg := inbox.NewRegistry()
	reg.On("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if strings.HasPrefix(string(p), "big:") {
			bigRan++
			return nil
		}
		if othersLeft--; othersLeft == 0 {
			bigAtLastOther = bigRan
		}
		return nil
	}))
	client := start(t, pool, reg, testenv.Fast(t, inbox.WithConcurrency(4))...).Client()
	var big []*inbox.Record
	for i := range 3000 {
		big = append(big, testenv.Record(t, uuid.New(), "acct", string(orderEvent("big", i))).WithOrderingKey("big"))
	}
	if err := client.Set(ctx, big...); err != nil {
		t.Fatal(err)
	}
	var others []*inbox.Record
	for i := range 60 {
		key := fmt.Sprintf("o%d", i)
		others = append(others, testenv.Record(t, uuid.New(), "acct", string(orderEvent(key, 0))).WithOrderingKey(key))
	}
	if err := client.Set(ctx, others...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "the 60 other keys' events to run", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return othersLeft == 0, nil
	})
	if bigAtLastOther > 100 {
		t.Fatalf("%d rows of the backlog ran before the 60 other keys' rows; want the others first", bigAtLastOther)
	}
	t.Logf("%d rows of the backlog ran before the other keys' 60", bigAtLastOther)
}

// HandlerGlobalConcurrency holds across Inboxes: three instances of ten
// workers each never run more than three of the handler's rows at once,
// and do reach three.
func TestGlobalConcurrencyLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	const limit, events = 3, 150
	var inflight, peak, over atomic.Int32
	reg := inbox.NewRegistry()
	reg.Handle("call", inbox.HandlerFunc("api", func(context.Context, []byte) error {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		if n > limit {
			over.Add(1)
		}
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		// Stay until the limit is reached, or briefly: the runs overlap.
		_ = testenv.Poll(20*time.Millisecond, func() (bool, error) { return inflight.Load() >= limit, nil })
		return nil
	}), inbox.HandlerGlobalConcurrency(limit))
	reg.On("free", inbox.HandlerFunc("free", func(context.Context, []byte) error { return nil }))
	var before bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('inbox_records_progress_idx') IS NOT NULL`).Scan(&before); err != nil || before {
		t.Fatalf("progress index before a limited Inbox started: %v, %v; want none (not a migration)", before, err)
	}
	var ibs []*inbox.Inbox
	for range 3 {
		ibs = append(ibs, start(t, pool, reg, testenv.Fast(t, inbox.WithConcurrency(10), inbox.WithBatchSize(10))...))
	}
	var recs []*inbox.Record
	for i := range events {
		recs = append(recs, testenv.Record(t, uuid.New(), "call", strconv.Itoa(i)), testenv.Record(t, uuid.New(), "free", strconv.Itoa(i)))
	}
	if err := ibs[0].Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, ibs[0], time.Minute, map[inbox.Status]int{inbox.Done: 2 * events})
	var valid bool
	if err := pool.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('inbox_records_progress_idx')`).
		Scan(&valid); err != nil || !valid {
		t.Fatalf("progress index after the limited Inboxes started: valid %v, %v; want built", valid, err)
	}
	if over.Load() > 0 || peak.Load() != limit {
		t.Fatalf("peak of %d runs at once (%d runs over the limit); want exactly %d", peak.Load(), over.Load(), limit)
	}
}

// A Set naming 20,000 ordering keys, more than the server's shared lock
// table holds for one transaction by default, succeeds: a transaction
// takes at most a few hundred key locks, however many keys it names. Each
// key's first row is due, the others wait.
func TestOrderedManyKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	reg := inbox.NewRegistry()
	reg.On("acct", inbox.HandlerFunc("apply", badNoop))
	ib, err := inbox.New(pool, reg)
	if err != nil {
		t.Fatal(err)
	}
	var recs []*inbox.Record
	for i := range 20000 {
		key := fmt.Sprintf("k%d", i%19000)
		recs = append(recs, testenv.Record(t, uuid.New(), "acct", string(orderEvent(key, i/19000))).WithOrderingKey(key))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	var due, waiting int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE due_at <> 'infinity'), count(*) FILTER (WHERE due_at = 'infinity')
		FROM inbox_records`).Scan(&due, &waiting); err != nil || due != 19000 || waiting != 1000 {
		t.Fatalf("%d rows due, %d waiting (%v); want 19,000 and 1,000", due, waiting, err)
	}
}

// Inboxes with a globally limited handler starting at the same time all
// start, one of them building the index of rows in progress.
func TestLimitedInboxesStartTogether(t *testing.T) {
	t.Parallel()
	pool := orderedPool(t)
	reg := inbox.NewRegistry()
	reg.Handle("call", inbox.HandlerFunc("api", badNoop), inbox.HandlerGlobalConcurrency(2))
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { start(t, pool, reg, testenv.Fast(t)...) })
	}
	wg.Wait()
	var valid bool
	if err := pool.QueryRow(context.Background(), `SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('inbox_records_progress_idx')`).
		Scan(&valid); err != nil || !valid {
		t.Fatalf("progress index: valid %v, %v; want built", valid, err)
	}
}

// A row whose worker died mid-attempt at its last attempt dies when its
// lease is found expired: under HandlerMovesOnPastDead its key's next row
// then runs; by default the key stays parked behind it.
func TestOrderedDeathOfALostLease(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	var ran sync.Map
	reg := inbox.NewRegistry()
	for _, key := range []string{"moves", "parks"} {
		var opts []inbox.HandlerOption
		opts = append(opts, inbox.HandlerMaxAttempts(1))
		if key == "moves" {
			opts = append(opts, inbox.HandlerMovesOnPastDead())
		}
		reg.Handle("acct", inbox.HandlerFunc(key, func(_ context.Context, p []byte) error {
			ran.Store(key+"/"+string(p), true)
			return nil
		}), opts...)
	}
	writer, err := inbox.New(pool, reg)
	if err != nil {
		t.Fatal(err)
	}
	first, second := uuid.New(), uuid.New()
	if err := writer.Client().Set(ctx, testenv.Record(t, first, "acct", "k:0").WithOrderingKey("k"),
		testenv.Record(t, second, "acct", "k:1").WithOrderingKey("k")); err != nil {
		t.Fatal(err)
	}
	// As a worker that claimed the first row and was killed leaves it.
	if _, err := pool.Exec(ctx, `UPDATE inbox_records SET status = 'progress', attempts = 1, claims = 1,
		locked_by = gen_random_uuid(), due_at = now() - interval '1 second' WHERE event_id = $1`, first); err != nil {
		t.Fatal(err)
	}
	ib := start(t, pool, reg, testenv.Fast(t)...)
	testenv.Eventually(t, time.Minute, "the moving-on handler to run the second row", func() (bool, error) {
		_, ok := ran.Load("moves/k:1")
		return ok, nil
	})
	for _, key := range []string{"moves", "parks"} {
		if s := status(ctx, ib, first, key); s != inbox.Dead {
			t.Fatalf("first row of %s: %q, want dead (its lease expired at its last attempt)", key, s)
		}
		if _, ok := ran.Load(key + "/k:0"); ok {
			t.Fatalf("%s ran the row whose lease expired", key)
		}
	}
	if s := status(ctx, ib, second, "parks"); s != inbox.Null {
		t.Fatalf("second row of the parked key: %q, want pending (waiting)", s)
	}
	if _, ok := ran.Load("parks/k:1"); ok {
		t.Fatal("the parking handler ran past its dead row")
	}
	parked, err := ib.Admin().ParkedKeys(ctx, 0)
	if err != nil || len(parked) != 1 || parked[0].HandlerKey != "parks" || parked[0].Waiting != 1 {
		t.Fatalf("ParkedKeys = %+v, %v; want key k of parks, one row waiting", parked, err)
	}
}

// A claim takes a key's first row with up to four rows behind it (a
// chain), and runs each once the one before it is written done, with no
// claim of its own: three keys of 20 rows each take far fewer claims than
// the 20 a key would need one row at a time. A row of a chain that fails
// hands the rows behind it back, unstarted (their claim counted, their
// attempt not), to wait again in the key's order; they run, in order,
// once it succeeds.
func TestOrderedChains(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	log := newOrderLog(t)
	var claims atomic.Int64
	reg := inbox.NewRegistry()
	reg.On("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		defer log.end(p)
		if log.begin(p) == 1 && string(p) == "a:12" {
			return inbox.RetryAfter(time.Hour, errors.New("not yet"))
		}
		return nil
	}))
	hooks := inbox.WithHooks(inbox.Hooks{OnClaim: func(e inbox.ClaimEvent) {
		if e.Rows > 0 {
			claims.Add(1)
		}
	}})
	ib := start(t, pool, reg, testenv.Fast(t, hooks, inbox.WithLease(inbox.DefaultLease))...) // exact run counts below
	const perKey = 20
	keys := []string{"a", "b", "c"}
	ids := map[string]uuid.UUID{}
	var recs []*inbox.Record
	for n := range perKey {
		for _, key := range keys {
			p := string(orderEvent(key, n))
			ids[p] = uuid.New()
			recs = append(recs, testenv.Record(t, ids[p], "acct", p).WithOrderingKey(key))
		}
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	row := func(p string) inbox.RecordState {
		t.Helper()
		rows, err := ib.Lookup(ctx, ids[p])
		if err != nil || len(rows) != 1 {
			t.Fatalf("Lookup %s = %+v, %v", p, rows, err)
		}
		return rows[0]
	}
	testenv.Eventually(t, time.Minute, "b and c to finish, and a to stop at a:12", func() (bool, error) {
		return row("b:19").Status == inbox.Done && row("c:19").Status == inbox.Done && row("a:12").Status == inbox.Failed, nil
	})
	// a:10 to a:14 were one chain: a:13 and a:14 went back when a:12 failed.
	for _, p := range []string{"a:13", "a:14", "a:15"} {
		var claimed int
		if err := pool.QueryRow(ctx, "SELECT claims FROM inbox_records WHERE event_id = $1", ids[p]).Scan(&claimed); err != nil {
			t.Fatal(err)
		}
		s := row(p)
		if want := btoi(p != "a:15"); s.Status != inbox.Null || !s.Waiting || s.Attempts != 0 || claimed != want || log.ran([]byte(p)) != 0 {
			t.Fatalf("%s: %s, waiting %v, %d attempts, claimed %d times, ran %d times; want pending, waiting, no attempt, claimed %d times, never run",
				p, s.Status, s.Waiting, s.Attempts, claimed, log.ran([]byte(p)), want)
		}
	}
	if res, err := ib.Admin().Replay(ctx, inbox.Filter{EventID: ids["a:12"]}, inbox.ActionOptions{Actor: "test"}); err != nil || res.Changed != 1 {
		t.Fatalf("Replay a:12 = %+v, %v", res, err)
	}
	waitCounts(t, ib, time.Minute, map[inbox.Status]int{inbox.Done: len(recs)})
	log.check(t)
	for p := range ids {
		if want, got := 1+btoi(p == "a:12"), log.ran([]byte(p)); got != want {
			t.Fatalf("%s ran %d times, want %d", p, got, want)
		}
		if s := row(p); s.Attempts != 1 {
			t.Fatalf("%s: %d attempts, want 1", p, s.Attempts)
		}
	}
	if n := claims.Load(); n >= perKey {
		t.Fatalf("%d claims returned rows; a claim per row would take %d, chains far fewer", n, perKey)
	}
	t.Logf("%d claims returned rows for %d rows of %d keys", claims.Load(), len(recs), len(keys))
}

// A row of a chain whose lease is lost while it waits (here another
// transaction holds its lock, so renewals skip it) leaves the chain: the
// rows behind it go back to wait, the row before it runs on, and the lost
// row runs once its lease has ended, then the rest, in order, each once.
func TestOrderedChainLeaseLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	const lease = 900 * time.Millisecond
	log := newOrderLog(t)
	started, release := make(chan struct{}), make(chan struct{})
	reg := inbox.NewRegistry()
	reg.On("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		defer log.end(p)
		if log.begin(p) == 1 && string(p) == "k:0" {
			close(started)
			<-release
		}
		return nil
	}))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithLease(lease), inbox.WithHandlerTimeout(time.Hour))...)
	ids := map[string]uuid.UUID{}
	var recs []*inbox.Record
	for n := range 10 {
		p := string(orderEvent("k", n))
		ids[p] = uuid.New()
		recs = append(recs, testenv.Record(t, ids[p], "acct", p).WithOrderingKey("k"))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	<-started // k:0 runs; k:1 to k:4 wait behind it, leased
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var status string
	if err := tx.QueryRow(ctx, `SELECT status FROM inbox_records WHERE event_id = $1 FOR UPDATE`, ids["k:2"]).Scan(&status); err != nil || status != "progress" {
		t.Fatalf("k:2 is %q (%v), want leased behind k:0", status, err)
	}
	testenv.Eventually(t, 10*lease, "the rows behind k:2 to wait again", func() (bool, error) {
		rows, err := ib.Lookup(ctx, ids["k:4"])
		return err == nil && len(rows) == 1 && rows[0].Waiting, err
	})
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	close(release)
	waitCounts(t, ib, time.Minute, map[inbox.Status]int{inbox.Done: len(recs)})
	log.check(t)
	// At least once: this test's lease is short, and a renewal held up
	// under load makes a row run again (in order, as log.check says).
	for p := range ids {
		if got := log.ran([]byte(p)); got < 1 {
			t.Fatalf("%s ran %d times, want once", p, got)
		}
	}
}

// A handler at its global limit holds up nobody else: with its backlog
// older than every other row and larger than a claim, the claims skip it
// while it has no room, and another handler's rows run meanwhile.
func TestGlobalLimitFullDoesNotHoldUpOthers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := orderedPool(t)
	const limit, backlog, batch = 2, 60, 20
	release := make(chan struct{})
	var busy atomic.Int32
	var fast atomic.Int32
	reg := inbox.NewRegistry()
	reg.Handle("call", inbox.HandlerFunc("api", func(ctx context.Context, _ []byte) error {
		busy.Add(1)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}), inbox.HandlerGlobalConcurrency(limit))
	reg.On("free", inbox.HandlerFunc("free", func(context.Context, []byte) error { fast.Add(1); return nil }))
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithBatchSize(batch), inbox.WithHandlerTimeout(time.Hour))...)
	t.Cleanup(func() { close(release) })
	var old, young []*inbox.Record
	for i := range backlog {
		old = append(old, testenv.Record(t, uuid.New(), "call", strconv.Itoa(i)))
	}
	for i := range 5 {
		young = append(young, testenv.Record(t, uuid.New(), "free", strconv.Itoa(i)))
	}
	if err := ib.Client().Set(ctx, old...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "the limited handler to be at its limit", func() (bool, error) {
		return busy.Load() == limit, nil
	})
	if err := ib.Client().Set(ctx, young...); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, time.Minute, "the other handler's rows to run", func() (bool, error) {
		return fast.Load() == int32(len(young)), nil
	})
	if n := busy.Load(); n != limit {
		t.Fatalf("%d runs of the limited handler, want %d at its limit", n, limit)
	}
}
