package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Ordered: what ordered processing costs (Record.WithOrderingKey).
//
// First, N events spread over orderedKeys ordering keys are Set in
// batches of 1,000 (each batch holds events of many keys, each key's
// events in increasing sequence) and drained with a no-op handler, taking
// turns with the same N events without ordering keys, and with those
// drained from a table with inbox_records_progress_idx (what that index,
// built for handlers with a global concurrency limit, costs a drain). The handler
// checks that each key's events run in increasing sequence.
//
// Then the claim's cost with many rows kept: a table holding done rows,
// orderedKeys parked keys (a dead row each) and rows waiting behind them,
// loaded by INSERT ... SELECT from generate_series, against an empty
// table; a fresh set of events, with and without ordering keys, is Set
// and drained on each. Claim and write times come from the Inbox's hooks.

const (
	orderedKeys    = 1_000           // ordering keys of the events
	orderedKeptKey = "kept-"         // ordering keys of the kept rows: kept-0 ...
	orderedKeyName = "key-"          // ordering keys of the Set events: key-0 ...
	orderedSchema  = "bench_kept"    // the table keeping rows
	orderedIdx     = "bench_progidx" // the library's table with inbox_records_progress_idx
	orderedTarget  = 0.5             // ordered drain >= 0.5x the unordered drain
	orderedStall   = 30 * time.Second
)

// orderKeyOf returns the ordering key (0 to orderedKeys-1) of the event
// with sequence number seq: a hash, so that each Set batch of consecutive
// events holds events of many keys, and each key's events come in
// increasing sequence.
func orderKeyOf(seq int) int {
	x := uint64(seq) + 0x9e3779b97f4a7c15 // splitmix64
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	return int(x % orderedKeys)
}

func orderKeyName(k int) string { return fmt.Sprintf("%s%d", orderedKeyName, k) }

// orderedRecords returns n records with sequence numbers from start (as
// [records]), each with its ordering key if ordered.
func orderedRecords(start, n int, ordered bool) []*inbox.Record {
	recs := records(start, n)
	if ordered {
		for i, r := range recs {
			recs[i] = r.WithOrderingKey(orderKeyName(orderKeyOf(start + i)))
		}
	}
	return recs
}

// orderCheck is a no-op handler that counts its runs (closing done at the
// target, as [counter]) and counts the runs that came before a run of a
// later event of the same ordering key.
type orderCheck struct {
	*counter
	last       [orderedKeys]atomic.Int64 // the latest sequence run per key
	violations atomic.Int64
}

func newOrderCheck(target int) *orderCheck {
	c := &orderCheck{counter: newCounter(target)}
	for i := range c.last {
		c.last[i].Store(-1)
	}
	return c
}

func (c *orderCheck) run(ctx context.Context, p []byte) error {
	seq := seqOf(p)
	if prev := c.last[orderKeyOf(seq)].Swap(int64(seq)); prev >= int64(seq) {
		c.violations.Add(1)
	}
	return c.count(ctx, p)
}

// hookLog collects the durations of the claims that returned rows and of
// the writes of results, from the Inbox's hooks.
type hookLog struct {
	mu                  sync.Mutex
	claims, writes      []time.Duration
	claimRows, emptyCls int
}

func (h *hookLog) option() inbox.Option {
	return inbox.WithHooks(inbox.Hooks{
		OnClaim: func(e inbox.ClaimEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			if e.Rows == 0 {
				h.emptyCls++
				return
			}
			h.claims = append(h.claims, e.Duration)
			h.claimRows += e.Rows
		},
		OnWrite: func(e inbox.WriteEvent) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.writes = append(h.writes, e.Duration)
		},
	})
}

// orderedRun is one Set then drain.
type orderedRun struct {
	set, drain    time.Duration
	setFirst      time.Duration // Set calls of the first tenth of the events
	setLast       time.Duration // Set calls of the last tenth
	cpu           cpuUse
	claim, write  latencies // of claims that returned rows; of writes
	claimRows     int       // rows claimed
	emptyClaims   int       // claims that returned none
	violations    int64     // runs out of their key's order
	ran           int64     // handler runs: n, or fewer if the drain was capped
	final         int64     // handler runs once the Inbox stopped (some may end during Stop)
	capped        bool      // the drain stopped at its runner's cap
	done, attempt int64     // done rows and sum of attempts of the run's events
}

// rate returns the drain's events per second: of the events that ran
// within the cap, if it was capped.
func (r orderedRun) rate() float64 { return rate(int(r.ran), r.drain) }

// perClaim returns the mean rows per claim that returned rows.
func (r orderedRun) perClaim() float64 { return float64(r.claimRows) / float64(r.claim.n) }

// orderedRunner is one kind of run: which table, with ordering keys or not.
type orderedRunner struct {
	name    string
	pool    *pgxpool.Pool
	ordered bool
	kept    bool          // the table keeps rows: delete the run's own rows afterwards instead of emptying it
	cap     time.Duration // stop the drain after this long (0: drain every event) and rate what ran
	runs    []orderedRun
}

// ordered runs the workload Ordered.
func (b *bench) ordered(ctx context.Context) error {
	idx, err := b.schemaPool(ctx, orderedIdx, true)
	if err != nil {
		return err
	}
	defer idx.Close()
	if _, err := idx.Exec(ctx, "CREATE INDEX inbox_records_progress_idx ON inbox_records (handler_key) WHERE status = 'progress'"); err != nil {
		return fmt.Errorf("schema %s: %w", orderedIdx, err)
	}
	if err := b.orderedDrains(ctx, idx); err != nil {
		return err
	}
	idx.Close()
	if err := dropSchema(ctx, b.lib, orderedIdx); err != nil {
		return err
	}

	kept, err := b.schemaPool(ctx, orderedSchema, true)
	if err != nil {
		return err
	}
	defer kept.Close()
	if err := b.orderedKept(ctx, kept); err != nil {
		return err
	}
	kept.Close()
	return dropSchema(ctx, b.lib, orderedSchema)
}

// orderedRunAll runs each runner once per repetition, n events each, in an order
// that rotates from one repetition to the next.
func (b *bench) orderedRunAll(ctx context.Context, runners []*orderedRunner, n int, kept orderedKept) error {
	for rep := range b.reps {
		for i := range runners {
			r := runners[(i+rep)%len(runners)]
			run, err := b.orderedOnce(ctx, r, n, kept)
			if err != nil {
				return fmt.Errorf("%s, repetition %d: %w", r.name, rep+1, err)
			}
			r.runs = append(r.runs, run)
		}
	}
	return nil
}

// orderedDrains is the first part: N events with and without ordering
// keys, and without keys on a table with the progress index.
func (b *bench) orderedDrains(ctx context.Context, idx *pgxpool.Pool) error {
	n := b.size.ordered
	ord := &orderedRunner{name: "ordered", pool: b.lib, ordered: true, cap: b.size.orderedCap}
	unord := &orderedRunner{name: "unordered", pool: b.lib}
	idxR := &orderedRunner{name: "unordered, progress index", pool: idx}
	if err := b.orderedRunAll(ctx, []*orderedRunner{ord, unord, idxR}, n, orderedKept{}); err != nil {
		return err
	}
	if err := b.reset(ctx, b.lib); err != nil {
		return err
	}

	t := newTable("Ordered: Set %s events over %s ordering keys (batches of %s), drain with a no-op handler, against the same without keys; median (min–max) of %d repetitions",
		group(int64(n)), group(orderedKeys), group(setBatch), b.reps)
	setR := func(r orderedRun) float64 { return rate(n, r.set) }
	oset, uset := spreadBy(ord.runs, setR), spreadBy(unord.runs, setR)
	t.add("Set (events/s)", rateCell(oset), rateCell(uset)+" without keys", fmtRatio(oset.over(uset)), "", "")
	t.add("  Set's cost per event", fmt.Sprintf("%.1f µs", 1e6/oset.med), fmt.Sprintf("%.1f µs without keys", 1e6/uset.med),
		fmtRatio(uset.over(oset)), "", fmt.Sprintf("+%.1f µs", 1e6/oset.med-1e6/uset.med))
	tenth := func(last bool) func(r orderedRun) float64 {
		return func(r orderedRun) float64 {
			if last {
				return rate(n/10, r.setLast)
			}
			return rate(n/10, r.setFirst)
		}
	}
	of, ol, uf, ul := spreadBy(ord.runs, tenth(false)), spreadBy(ord.runs, tenth(true)), spreadBy(unord.runs, tenth(false)), spreadBy(unord.runs, tenth(true))
	t.add("  Set, first and last tenth (events/s)", rateCell(of)+", "+rateCell(ol), rateCell(uf)+", "+rateCell(ul)+" without keys",
		"", "", fmt.Sprintf("last/first %s; %s without keys", fmtRatio(ol.over(of)), fmtRatio(ul.over(uf))))
	od, ud := spreadBy(ord.runs, orderedRun.rate), spreadBy(unord.runs, orderedRun.rate)
	x := od.over(ud)
	t.add("drain (events/s)", rateCell(od), rateCell(ud)+" without keys", fmtRatio(x), fmt.Sprintf(">= %.2fx without keys", orderedTarget),
		b.check("Ordered", fmt.Sprintf("ordered drain, %s keys >= %.2fx unordered", group(orderedKeys), orderedTarget), fmtRatio(x), x >= orderedTarget))
	capped := 0
	for _, r := range ord.runs {
		if r.capped {
			capped++
		}
	}
	if capped > 0 {
		ran := spreadBy(ord.runs, func(r orderedRun) float64 { return float64(r.ran) })
		t.add(fmt.Sprintf("  capped at %s: events run in the cap", b.size.orderedCap), ran.format(groupF, ""),
			fmt.Sprintf("of %s (%d of %d runs capped)", group(int64(n)), capped, len(ord.runs)), "", "", "")
	}
	nd := spreadBy(idxR.runs, orderedRun.rate)
	t.add("  without keys, table with the progress index", "", rateCell(nd)+" with index", fmtRatio(nd.over(ud))+" with/without", "", "")
	b.orderedCommon(t, []*orderedRunner{ord, unord, idxR})
	t.note("each repetition runs the three in turn, in an order that rotates; each run empties its table (TRUNCATE, VACUUM")
	t.note("ANALYZE, CHECKPOINT), Sets the events in batches of %s, settles the table the same way, and drains it with one", group(setBatch))
	t.note("Inbox (default options: batch %d, concurrency %d) from Start until no row is in progress after the last run;", inbox.DefaultBatchSize, inbox.DefaultConcurrency)
	t.note("an ordered drain that has not ended after %s stops there and is rated by the events that ran by then", b.size.orderedCap)
	t.note("events have random ids and 64-byte payloads; event i has ordering key hash(i) mod %s, so a batch of %s", group(orderedKeys), group(setBatch))
	t.note("holds about %d keys and a key has about %s events; the handler checks that each key's events run in order",
		orderedBatchKeys(), group(int64(n/orderedKeys)))
	t.note("(a drain that waits for polls, %s each, to reach each key's next row would be capped: it was before the", inbox.DefaultIterationRate)
	t.note("write that makes the next row due woke idle workers)")
	t.note("Set, first and last tenth: the rate of the first and of the last tenth of the Set calls: the statistics of a")
	t.note("table just emptied (TRUNCATE, ANALYZE) say it is empty, and the ordered Set's promote statement may then")
	t.note("read every waiting row, so each Set costs more than the one before until autoanalyze runs")
	t.note("progress index: the library's migrated table in schema %s, plus inbox_records_progress_idx (which the", orderedIdx)
	t.note("first Inbox with a globally limited handler builds, for its claims to count through); the claim's ordering check")
	t.note("cannot be taken out here")
	t.note("claim: the claims that returned rows (Inbox hooks); an ordered claim also leases up to 4 rows behind each")
	t.note("key's first row (a chain, run one after the other), hence its rows per claim; write: each write of results,")
	t.note("in whose transaction a write that ends a chain also locks its key and makes the key's next row due (promote)")
	b.orderedVerify(t, n, ord, unord, idxR)
	b.print(t)
	return nil
}

// orderedCommon adds the rows both parts share: CPU, claims, writes,
// phase times.
func (b *bench) orderedCommon(t *table, runners []*orderedRunner) {
	cpuOf := func(r orderedRun) float64 { _, _, tot := r.cpu.perEvent(int(r.ran)); return tot }
	cell := func(r *orderedRunner, f func([]orderedRun) string) string {
		if r == runners[0] {
			return f(r.runs)
		}
		return f(r.runs) + " " + r.name
	}
	ratio := func(f func(orderedRun) float64) string {
		return fmtRatio(spreadBy(runners[0].runs, f).over(spreadBy(runners[1].runs, f)))
	}
	rows := []struct {
		metric string
		f      func(orderedRun) float64
		format func(spread) string
	}{
		{"drain CPU per event, Go + PostgreSQL", cpuOf, usCell},
		{"claim time (claims returning rows, p50)", func(r orderedRun) float64 { return ms(r.claim.p50) }, msCell},
		{"  p99", func(r orderedRun) float64 { return ms(r.claim.p99) }, msCell},
		{"  rows per claim (mean)", orderedRun.perClaim, func(s spread) string { return s.format(func(x float64) string { return fmt.Sprintf("%.0f", x) }, "") }},
		{"  claims returning rows / returning none", func(r orderedRun) float64 { return float64(r.claim.n) }, func(s spread) string { return s.format(groupF, "") }},
		{"write of results (p50)", func(r orderedRun) float64 { return ms(r.write.p50) }, msCell},
		{"  p99", func(r orderedRun) float64 { return ms(r.write.p99) }, msCell},
		{"phase times, Set + drain", nil, nil},
	}
	for _, row := range rows {
		var cells []string
		for _, r := range runners {
			switch {
			case row.f == nil:
				cells = append(cells, cell(r, func(runs []orderedRun) string {
					s := spreadBy(runs, func(r orderedRun) float64 { return r.set.Seconds() })
					d := spreadBy(runs, func(r orderedRun) float64 { return r.drain.Seconds() })
					return fmt.Sprintf("%.2f s + %.2f s", s.med, d.med)
				}))
			case strings.Contains(row.metric, "returning none"):
				cells = append(cells, cell(r, func(runs []orderedRun) string {
					c := spreadBy(runs, func(r orderedRun) float64 { return float64(r.claim.n) })
					e := spreadBy(runs, func(r orderedRun) float64 { return float64(r.emptyClaims) })
					return fmt.Sprintf("%s / %s", groupF(c.med), groupF(e.med))
				}))
			default:
				cells = append(cells, cell(r, func(runs []orderedRun) string { return row.format(spreadBy(runs, row.f)) }))
			}
		}
		ra := ""
		if row.f != nil && !strings.Contains(row.metric, "returning none") {
			ra = ratio(row.f)
		}
		t.add(row.metric, cells[0], cells[1], ra, "", "")
		for _, c := range cells[2:] {
			t.add("", "", c, "", "", "")
		}
	}
}

// orderedVerify notes, for each runner, that every run left its events
// done once each and, for ordered runs, in order; or the errors, which
// fail the benchmark.
func (b *bench) orderedVerify(t *table, n int, runners ...*orderedRunner) {
	bad := false
	for _, r := range runners {
		for rep, run := range r.runs {
			if run.done != run.final || run.attempt != run.final || (!run.capped && run.final != int64(n)) {
				b.exitCode, bad = 1, true
				t.note("ERROR: %s, repetition %d: %d handler runs, %d of %d events done, sum(attempts) = %d",
					r.name, rep+1, run.final, run.done, n, run.attempt)
			}
			if r.ordered && run.violations != 0 {
				b.exitCode, bad = 1, true
				t.note("ERROR: %s, repetition %d: %d handler runs came after a later event of their key", r.name, rep+1, run.violations)
			}
		}
	}
	if !bad {
		t.note("checked: every run left each event its handler ran done with one attempt (all %s unless capped); ordered", group(int64(n)))
		t.note("runs ran each key's events in order")
	}
}

// orderedBatchKeys is the mean number of keys in a Set batch of setBatch
// consecutive events.
func orderedBatchKeys() int {
	seen := map[int]bool{}
	for i := range setBatch {
		seen[orderKeyOf(i)] = true
	}
	return len(seen)
}

// orderedKept describes the rows a table keeps, for a run to check that it
// left them as they were; zero for an empty table.
type orderedKept struct{ rows, waiting int64 }

// orderedOnce is one run of r: Set n events (sequence numbers from 0),
// settle, drain, check. On an emptied table unless r.kept: then the run's
// events are deleted afterwards, the kept rows checked and the table
// settled again.
func (b *bench) orderedOnce(ctx context.Context, r *orderedRunner, n int, kept orderedKept) (run orderedRun, err error) {
	if !r.kept {
		if err := b.reset(ctx, r.pool); err != nil {
			return run, err
		}
	}
	ids := make([]uuid.UUID, 0, n)
	ib, err := b.newInbox(r.pool, noop)
	if err != nil {
		return run, err
	}
	c := ib.Client()
	for start := 0; start < n; start += setBatch {
		recs := orderedRecords(start, min(setBatch, n-start), r.ordered)
		for _, rec := range recs {
			ids = append(ids, rec.ID())
		}
		t := time.Now()
		if err := c.Set(ctx, recs...); err != nil {
			return run, fmt.Errorf("set: %w", err)
		}
		d := time.Since(t)
		run.set += d
		switch {
		case start < n/10:
			run.setFirst += d
		case start >= n-n/10:
			run.setLast += d
		}
	}
	if err := b.settle(ctx, r.pool); err != nil {
		return run, err
	}

	chk, log := newOrderCheck(n), &hookLog{}
	reg := inbox.NewRegistry()
	reg.On(eventType, inbox.HandlerFunc(handlerKey, chk.run))
	ib, err = inbox.New(r.pool, reg, append([]inbox.Option{inbox.WithLogger(b.log), log.option()}, b.libOpts...)...)
	if err != nil {
		return run, err
	}
	waitCtx, cancel := ctx, context.CancelFunc(func() {})
	if r.cap > 0 {
		waitCtx, cancel = context.WithTimeout(ctx, r.cap)
	}
	defer cancel()
	cpu := b.startCPU(ctx)
	t0 := time.Now()
	if err := ib.Start(ctx); err != nil {
		return run, err
	}
	err = chk.wait(waitCtx, orderedStall)
	if err == nil {
		// Every event ran: what remains is writing the last results.
		err = waitNoneInProgress(waitCtx, r.pool, orderedStall)
	}
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		run.capped, err = true, nil
	}
	run.drain = time.Since(t0)
	run.ran = chk.n.Load()
	run.cpu = cpu()
	stopInbox(ib) // writes the results of the runs that ended; hands back the rest
	if err != nil {
		return run, fmt.Errorf("drain: %w", err)
	}
	log.mu.Lock()
	run.claim, run.write = summarise(log.claims), summarise(log.writes)
	run.claimRows, run.emptyClaims = log.claimRows, log.emptyCls
	log.mu.Unlock()
	run.violations, run.final = chk.violations.Load(), chk.n.Load()
	err = r.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'done'), coalesce(sum(attempts), 0)
		FROM inbox_records WHERE event_id = ANY ($1::uuid[])`, ids).Scan(&run.done, &run.attempt)
	if err != nil || !r.kept {
		return run, err
	}
	tag, err := r.pool.Exec(ctx, `DELETE FROM inbox_records WHERE event_id = ANY ($1::uuid[])`, ids)
	if err != nil {
		return run, fmt.Errorf("delete the run's events: %w", err)
	}
	if tag.RowsAffected() != int64(n) {
		return run, fmt.Errorf("deleted %d rows of the run's events, want %d", tag.RowsAffected(), n)
	}
	var rows, waiting int64
	if err := r.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = '' AND due_at = 'infinity') FROM inbox_records`).
		Scan(&rows, &waiting); err != nil {
		return run, err
	}
	if rows != kept.rows || waiting != kept.waiting {
		return run, fmt.Errorf("the kept rows changed: %d rows, %d waiting; want %d and %d", rows, waiting, kept.rows, kept.waiting)
	}
	return run, b.settle(ctx, r.pool)
}

// waitNoneInProgress polls until no row of pool's table is in progress.
func waitNoneInProgress(ctx context.Context, pool *pgxpool.Pool, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		var busy bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM inbox_records WHERE status = 'progress')`).Scan(&busy); err != nil {
			return err
		}
		if !busy {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("rows still in progress after " + within.String())
		}
		select {
		case <-time.After(time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// keptLayout places the kept rows in ranges of event numbers, which are
// also their seq: for key k (number mod orderedKeys), its done rows, then
// one dead row (the key is parked), then the rows waiting behind it.
type keptLayout struct{ done, heads, waiting opsRange }

func newKeptLayout(done, waiting int) keptLayout {
	h := (int64(done) + orderedKeys - 1) / orderedKeys * orderedKeys
	return keptLayout{
		done:    opsRange{0, int64(done) - 1},
		heads:   opsRange{h, h + orderedKeys - 1},
		waiting: opsRange{h + orderedKeys, h + orderedKeys + int64(waiting) - 1},
	}
}

// keptInsertSQL inserts the rows of events $2 to $3 (numbers) for handler
// $4, event type $5, payload $6, in status $7 with $8 attempts, error $9
// of type $10; waiting ($11) rows are due at 'infinity', others when
// stored. Event g has ordering key 'kept-' || g mod $12, seq g, and is
// stored at $13 + g ms.
var keptInsertSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, payload_hash, event_date,
                           status, attempts, last_error, error_type, due_at, created_at, updated_at, ordering_key, seq)
SELECT e.id, $4::text, $5::text, $6::bytea, 0, e.at, $7::text, $8::int, $9::text, $10::text,
       CASE WHEN $11::bool THEN 'infinity' ELSE e.at END, e.at, e.at + interval '50 milliseconds',
       '` + orderedKeptKey + `' || (e.g % $12::int), e.g
FROM (
    SELECT g, ` + opsIDExpr("$1::text", "g") + ` AS id, $13::timestamptz + g * interval '1 millisecond' AS at
    FROM generate_series($2::bigint, $3::bigint) g
) e`

// orderedKeptLoad loads the kept rows into pool's emptied table, folds
// the load's counts, moves the order sequence past the rows' seq and
// settles the table. It returns the load's time and the rows.
func (b *bench) orderedKeptLoad(ctx context.Context, pool *pgxpool.Pool, lay keptLayout) (took time.Duration, kept orderedKept, err error) {
	prefix := fmt.Sprintf("%012x", time.Now().UnixMilli())
	from := time.Now().Add(-time.Duration(lay.waiting.hi+1) * time.Millisecond).Add(-time.Hour)
	insert := func(r opsRange, status inbox.Status, attempts int, lastErr string, errType *string, waiting bool) error {
		_, err := pool.Exec(ctx, keptInsertSQL, prefix, r.lo, r.hi, handlerKey, eventType, payload(0),
			string(status), attempts, lastErr, errType, waiting, orderedKeys, from)
		return err
	}
	t := time.Now()
	for lo := lay.done.lo; lo <= lay.done.hi; lo += opsChunkRows {
		if err := insert(opsRange{lo, min(lo+opsChunkRows-1, lay.done.hi)}, inbox.Done, 1, "", nil, false); err != nil {
			return 0, kept, fmt.Errorf("done rows: %w", err)
		}
	}
	errType := "*errors.errorString"
	if err := insert(lay.heads, inbox.Dead, inbox.DefaultRetryAttempts, "order rejected", &errType, false); err != nil {
		return 0, kept, fmt.Errorf("dead rows: %w", err)
	}
	for lo := lay.waiting.lo; lo <= lay.waiting.hi; lo += opsChunkRows {
		if err := insert(opsRange{lo, min(lo+opsChunkRows-1, lay.waiting.hi)}, inbox.Null, 0, "", nil, true); err != nil {
			return 0, kept, fmt.Errorf("waiting rows: %w", err)
		}
	}
	took = time.Since(t)
	// Sets draw their rows' seq from inbox_order_seq (value * 2^20 plus
	// the position): past every kept row's.
	if _, err := pool.Exec(ctx, `SELECT setval('inbox_order_seq', (max(seq) >> 20) + 1) FROM inbox_records`); err != nil {
		return 0, kept, err
	}
	admin, err := inbox.NewAdmin(pool)
	if err != nil {
		return 0, kept, err
	}
	if _, err := admin.Stats(ctx); err != nil { // folds the load's counts
		return 0, kept, err
	}
	if err := b.settle(ctx, pool); err != nil {
		return 0, kept, err
	}
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = '' AND due_at = 'infinity') FROM inbox_records`).
		Scan(&kept.rows, &kept.waiting); err != nil {
		return 0, kept, err
	}
	if want := lay.done.events() + lay.heads.events() + lay.waiting.events(); kept.rows != want || kept.waiting != lay.waiting.events() {
		return 0, kept, fmt.Errorf("loaded %d rows (%d waiting), want %d (%d)", kept.rows, kept.waiting, want, lay.waiting.events())
	}
	return took, kept, nil
}

// orderedKept is the second part: a fresh set of events, with and without
// ordering keys, drained on a table keeping rows and on an empty one.
func (b *bench) orderedKept(ctx context.Context, pool *pgxpool.Pool) error {
	lay := newKeptLayout(b.size.orderedKept, b.size.orderedWaiting)
	load, kept, err := b.orderedKeptLoad(ctx, pool, lay)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	var total, heap, orderIdx, dueIdx int64
	if err := pool.QueryRow(ctx, `SELECT pg_total_relation_size('inbox_records'), pg_table_size('inbox_records'),
		pg_relation_size('inbox_records_order_idx'), pg_relation_size('inbox_records_due_idx')`).Scan(&total, &heap, &orderIdx, &dueIdx); err != nil {
		return err
	}
	n := b.size.orderedFresh
	keptOrd := &orderedRunner{name: "kept, ordered", pool: pool, ordered: true, kept: true}
	emptyOrd := &orderedRunner{name: "empty, ordered", pool: b.lib, ordered: true}
	keptUnord := &orderedRunner{name: "kept, without keys", pool: pool, kept: true}
	emptyUnord := &orderedRunner{name: "empty, without keys", pool: b.lib}
	if err := b.orderedRunAll(ctx, []*orderedRunner{keptOrd, emptyOrd, keptUnord, emptyUnord}, n, kept); err != nil {
		return err
	}
	if err := b.reset(ctx, b.lib); err != nil {
		return err
	}

	t := newTable("Ordered, rows kept: a fresh %s events over %s keys Set and drained on a table keeping %s rows, against an empty table; median (min–max) of %d repetitions",
		group(int64(n)), group(orderedKeys), group(kept.rows), b.reps)
	drainR := orderedRun.rate
	setR := func(r orderedRun) float64 { return rate(n, r.set) }
	for _, p := range [][2]*orderedRunner{{keptOrd, emptyOrd}, {keptUnord, emptyUnord}} {
		what := "ordered"
		if !p[0].ordered {
			what = "without keys"
		}
		k, e := spreadBy(p[0].runs, drainR), spreadBy(p[1].runs, drainR)
		t.add("drain "+what+" (events/s)", rateCell(k)+" kept", rateCell(e)+" empty", fmtRatio(k.over(e)), "", "")
		cl := func(r orderedRun) float64 { return ms(r.claim.p50) }
		k, e = spreadBy(p[0].runs, cl), spreadBy(p[1].runs, cl)
		t.add("  claim time (p50)", msCell(k)+" kept", msCell(e)+" empty", fmtRatio(k.over(e)), "", "")
		cl = func(r orderedRun) float64 { return ms(r.claim.p99) }
		k, e = spreadBy(p[0].runs, cl), spreadBy(p[1].runs, cl)
		t.add("  claim time (p99)", msCell(k)+" kept", msCell(e)+" empty", fmtRatio(k.over(e)), "", "")
		cl = orderedRun.perClaim
		k, e = spreadBy(p[0].runs, cl), spreadBy(p[1].runs, cl)
		t.add("  rows per claim (mean)", fmt.Sprintf("%.0f kept", k.med), fmt.Sprintf("%.0f empty", e.med), "", "", "")
		cl = func(r orderedRun) float64 { return ms(r.write.p50) }
		k, e = spreadBy(p[0].runs, cl), spreadBy(p[1].runs, cl)
		t.add("  write of results (p50)", msCell(k)+" kept", msCell(e)+" empty", fmtRatio(k.over(e)), "", "")
		k, e = spreadBy(p[0].runs, setR), spreadBy(p[1].runs, setR)
		t.add("  Set (events/s)", rateCell(k)+" kept", rateCell(e)+" empty", fmtRatio(k.over(e)), "", "")
	}
	o, u := spreadBy(keptOrd.runs, drainR), spreadBy(keptUnord.runs, drainR)
	t.add("ordered / without keys, both on the kept table", fmtRatio(o.over(u)), "", "", "", "")
	t.add(fmt.Sprintf("load the kept rows (%d INSERT ... SELECT)", (lay.done.events()+opsChunkRows-1)/opsChunkRows+1+(lay.waiting.events()+opsChunkRows-1)/opsChunkRows),
		fmtSecs(load)+" ("+fmtRate(rate(int(kept.rows), load))+")", "", "", "", "")
	t.add("kept table: total (heap), order index, due index", fmt.Sprintf("%s (%s), %s, %s", fmtMiB(total), fmtMiB(heap), fmtMiB(orderIdx), fmtMiB(dueIdx)), "", "", "", "")
	t.note("kept: schema %s, the library's migrated table holding %s done rows, %s dead rows (one per key: each of",
		orderedSchema, group(lay.done.events()), group(lay.heads.events()))
	t.note("%s keys %s0... is parked) and %s rows waiting behind them (due at 'infinity', in the order index), all",
		group(orderedKeys), orderedKeptKey, group(kept.waiting))
	t.note("of the benchmark's event type and handler; the done rows have the same keys, before the dead ones; loaded by")
	t.note("INSERT ... SELECT from generate_series, counts folded, VACUUM ANALYZE, CHECKPOINT; empty: schema %s,", libSchema)
	t.note("emptied (TRUNCATE, VACUUM ANALYZE: statistics of an empty table, under which an ordered Set costs more, see above)")
	t.note("each repetition runs the four in turn, in an order that rotates; a run Sets %s events (keys %s0...; none",
		group(int64(n)), orderedKeyName)
	t.note("for the runs without keys), settles the table, drains it with one Inbox with default options, then checks its")
	t.note("events; on the kept table it then deletes its events, checks that the kept rows are unchanged, and settles")
	t.note("the table again; claim times are the Inbox's (hooks), of claims returning rows")
	b.orderedVerify(t, n, keptOrd, emptyOrd, keptUnord, emptyUnord)
	b.print(t)
	return nil
}
