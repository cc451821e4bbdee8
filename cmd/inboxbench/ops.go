package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// Ops: the operators' API (inbox.Admin) on a table that keeps many
// finished rows. Stats reads the counters the table keeps (folded counts
// plus the counting trigger's deltas) and the index of due rows; its floor
// is what it would cost without the counters, a GROUP BY over the whole
// table. Then the dead-letter views (DeadGroups, List, Count), Show, and
// Stats right after a burst of writes, when it folds their deltas.

const (
	opsPending     = 10_000    // backlog: pending rows, due now
	opsFailed      = 1_000     // failed rows, due in 10 minutes
	opsDead        = 2_000     // dead rows, in opsFailures' patterns
	opsChunkRows   = 1_000_000 // rows per load statement
	opsBurstRows   = 50_000    // rows inserted before the fold's Stats
	opsBurstBatch  = 500       // rows per statement of the burst
	opsPage        = 100       // rows per page of List
	opsStatsTarget = 50.0      // ms: Stats at the kept rows
)

// The rows' event types and handler keys: every event has a row per key.
var (
	opsEventTypes  = []string{"order.created", "order.paid", "order.shipped", "customer.updated", "invoice.sent"}
	opsHandlerKeys = []string{"billing", "notify"}
)

// opsFailures are the failure patterns of the failed and dead rows: SQL
// for the error text of event number g (the numbers and ids in it vary
// from one event to the next; DeadGroups takes them out) and the error
// type.
var opsFailures = []struct{ errSQL, errType string }{
	{`'timeout after ' || (g % 30 + 1) || 's on order ' || g`, "inbox.ErrHandlerTimeout"},
	{`'charge order ' || g || ': card declined (code ' || (g % 90 + 10) || ')'`, "*billing.DeclinedError"},
	{`'dial tcp 10.0.' || (g % 250) || '.' || (g % 7 + 1) || ':5432: connect: connection refused'`, "*net.OpError"},
	{`'customer ' || md5(g::text)::uuid || ' not found'`, "*errors.errorString"},
	{`'handler panicked: runtime error: index out of range [' || (g % 10 + 5) || '] with length ' || (g % 5)`, "*inbox.PanicError"},
}

// opsGroups is how many groups DeadGroups finds: a pattern per pair.
func opsGroups() int { return len(opsFailures) * len(opsEventTypes) * len(opsHandlerKeys) }

// opsIDExpr is the SQL for the event id of event number num: a UUIDv7
// layout whose 48-bit time field is the load's start (prefix: 12 hex
// digits) and whose random bits are the number, so that ids grow with the
// number (as time-ordered ids grow with time) and a range of numbers is a
// range of the primary key.
func opsIDExpr(prefix, num string) string {
	return "(" + prefix + " || '70008' || lpad(to_hex(" + num + "), 15, '0'))::uuid"
}

// opsInsertSQL inserts events $2 to $3 (numbers), a row per handler key
// in $4, in status $5 with $6 attempts; event g is stored at $7 + ($8 µs
// × (g - $2)) with payload, type ($12, or $11[g mod types]), and, if
// $13, its failure (pattern (g / types) mod patterns); due_at is $9 µs
// and updated_at $10 µs after it was stored.
func opsInsertSQL() string {
	var errs, types strings.Builder
	for i, f := range opsFailures {
		fmt.Fprintf(&errs, " WHEN %d THEN %s", i, f.errSQL)
		fmt.Fprintf(&types, " WHEN %d THEN '%s'", i, f.errType)
	}
	pattern := fmt.Sprintf("(g / cardinality($11::text[])) %% %d", len(opsFailures))
	return `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, payload_hash, event_date,
                           status, attempts, last_error, error_type, due_at, created_at, updated_at)
SELECT e.id, k.key, e.type, convert_to(e.body, 'UTF8'), hashtextextended(e.body, 0), e.at,
       $5::text, $6::int, e.err, e.etype,
       e.at + $9::float8 * interval '1 microsecond', e.at, e.at + $10::float8 * interval '1 microsecond'
FROM (
    SELECT ` + opsIDExpr("$1::text", "g") + ` AS id,
           coalesce($12::text, ($11::text[])[(g % cardinality($11::text[]))::int + 1]) AS type,
           '{"order_id":' || g || ',"amount_cents":' || g * 7919 % 100000 || ',"currency":"EUR"}' AS body,
           $7::timestamptz + $8::float8 * (g - $2::bigint) * interval '1 microsecond' AS at,
           CASE WHEN $13::bool THEN CASE ` + pattern + errs.String() + ` END ELSE '' END AS err,
           CASE WHEN $13::bool THEN CASE ` + pattern + types.String() + ` END END AS etype
    FROM generate_series($2::bigint, $3::bigint) g
) e CROSS JOIN unnest($4::text[]) AS k(key)`
}

// opsFailSQL fails the rows of events $2 to $3 once more (an attempt
// more, the same error): status $4; a failed row is due in 10 minutes.
// The counting trigger records each failure in the rows' history.
var opsFailSQL = `
UPDATE inbox_records
SET status = $4::text, attempts = attempts + 1, updated_at = created_at + interval '1 minute',
    due_at = CASE WHEN $4::text = 'failed' THEN now() + interval '10 minutes' ELSE due_at END
WHERE event_id BETWEEN ` + opsIDExpr("$1::text", "$2::bigint") + ` AND ` + opsIDExpr("$1::text", "$3::bigint")

// opsDeleteSQL deletes the rows of events $2 to $3.
var opsDeleteSQL = `
DELETE FROM inbox_records
WHERE event_id BETWEEN ` + opsIDExpr("$1::text", "$2::bigint") + ` AND ` + opsIDExpr("$1::text", "$3::bigint")

// opsFloorSQL is what Stats' counts would cost without the counters.
const opsFloorSQL = `SELECT event_type, handler_key, status, count(*) FROM inbox_records GROUP BY 1, 2, 3`

// opsRange is a range of event numbers, both ends included.
type opsRange struct{ lo, hi int64 }

func (r opsRange) events() int64 { return r.hi - r.lo + 1 }

// opsLayout places the events of each kind in ranges of event numbers
// that do not overlap; a failed or dead range starts at a multiple of
// types × patterns, so that each pattern falls on each type equally.
type opsLayout struct {
	done, pending, failed, dead opsRange
	burst                       int64 // first event of the bursts; repetition r uses opsBurstRows events from burst + r×opsBurstRows
}

func newOpsLayout(doneRows int) opsLayout {
	keys := int64(len(opsHandlerKeys))
	cycle := int64(len(opsEventTypes) * len(opsFailures))
	var l opsLayout
	next := int64(0)
	take := func(rows int64) opsRange {
		next = (next + cycle - 1) / cycle * cycle
		r := opsRange{next, next + rows/keys - 1}
		next = r.hi + 1
		return r
	}
	l.done = take(int64(doneRows))
	l.pending = take(opsPending)
	l.failed = take(opsFailed)
	l.dead = take(opsDead)
	l.burst = (next + cycle - 1) / cycle * cycle
	return l
}

// opsBurstStatement returns burst statement j of repetition rep: its
// events and the one (event type, handler key) pair of its rows.
func (l opsLayout) opsBurstStatement(rep, j int) (r opsRange, eventType, key string) {
	lo := l.burst + int64(rep)*opsBurstRows + int64(j)*opsBurstBatch
	return opsRange{lo, lo + opsBurstBatch - 1}, opsEventTypes[j%len(opsEventTypes)],
		opsHandlerKeys[j/len(opsEventTypes)%len(opsHandlerKeys)]
}

// opsBurstRange is the events of repetition rep's burst.
func (l opsLayout) opsBurstRange(rep int) opsRange {
	lo := l.burst + int64(rep)*opsBurstRows
	return opsRange{lo, lo + opsBurstRows - 1}
}

// opsCountKey is one count of Stats: rows of a pair in a status.
type opsCountKey struct {
	eventType, key string
	status         inbox.Status
}

// opsCounts are the rows per pair and status; no count is zero.
type opsCounts map[opsCountKey]int64

// statsCounts returns the counts Stats reported.
func statsCounts(hs []inbox.HandlerStats) opsCounts {
	c := opsCounts{}
	for _, h := range hs {
		for _, s := range inbox.Statuses() {
			if n := h.Count(s); n != 0 {
				c[opsCountKey{h.EventType, h.HandlerKey, s}] = n
			}
		}
	}
	return c
}

// diffCounts describes where got differs from want, in a stable order;
// nil when they are equal.
func diffCounts(got, want opsCounts) []string {
	keys := slices.Collect(maps.Keys(got))
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b opsCountKey) int {
		return strings.Compare(a.eventType+"\x00"+a.key+"\x00"+string(a.status), b.eventType+"\x00"+b.key+"\x00"+string(b.status))
	})
	var out []string
	for _, k := range keys {
		if got[k] != want[k] {
			out = append(out, fmt.Sprintf("%s/%s %s: %d, want %d", k.eventType, k.key, k.status, got[k], want[k]))
		}
	}
	return out
}

func (c opsCounts) total() int64 {
	var n int64
	for _, v := range c {
		n += v
	}
	return n
}

// opsRun is one repetition of Ops.
type opsRun struct {
	stats, floor                      time.Duration
	deadGroups, list, next, show, cnt time.Duration
	burst, foldStats, foldFloor       time.Duration // burst: its 100 INSERTs
	againStats                        time.Duration // Stats once more after foldStats: nothing to fold, the burst still due
	deltas                            int64         // deltas waiting for the fold
	cleanup                           time.Duration // DELETE, fold, VACUUM after the burst (not a figure)
}

// opsLoad is what loading the table took.
type opsLoad struct {
	done, rest, settle   time.Duration
	chunks               []time.Duration // each statement of the done rows
	doneCPU              cpuUse
	total, heap, indexes int64 // bytes: pg_total_relation_size, pg_table_size, pg_indexes_size
	rows                 int64
	loadDeltas           int64 // deltas the load left, folded before settling
}

// ops runs Ops.
func (b *bench) ops(ctx context.Context) error {
	lay := newOpsLayout(b.size.opsRows)
	prefix := fmt.Sprintf("%012x", time.Now().UnixMilli()) // the ids' time field: the load's start
	admin, err := inbox.NewAdmin(b.lib)
	if err != nil {
		return err
	}
	load, err := b.opsLoad(ctx, admin, lay, prefix)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	// One untimed pass: the first call of each statement (plans, caches)
	// is not what an operator who looks twice sees.
	if _, err := b.opsRep(ctx, admin, lay, prefix, -1, load.rows); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	var runs []opsRun
	for rep := range b.reps {
		r, err := b.opsRep(ctx, admin, lay, prefix, rep, load.rows)
		if err != nil {
			return fmt.Errorf("repetition %d: %w", rep+1, err)
		}
		runs = append(runs, r)
	}
	b.print(b.opsTable(lay, load, runs, b.opsPlan(ctx)))
	// Leave nothing behind for later workloads.
	_, err = b.lib.Exec(ctx, "TRUNCATE inbox_records, inbox_workers, inbox_throughput, inbox_pauses")
	return err
}

// opsLoad empties the library's table and loads it: the done rows in
// statements of opsChunkRows, then the backlog, failed and dead rows; it
// folds the load's deltas and settles the tables.
func (b *bench) opsLoad(ctx context.Context, admin *inbox.Admin, lay opsLayout, prefix string) (l opsLoad, err error) {
	if _, err := b.lib.Exec(ctx, "TRUNCATE inbox_records, inbox_workers, inbox_throughput, inbox_pauses"); err != nil {
		return l, err
	}
	if err := b.settle(ctx, b.lib); err != nil {
		return l, err
	}
	sql := opsInsertSQL()
	insert := func(r opsRange, keys []string, status inbox.Status, attempts int, from time.Time, span, dueAfter, updatedAfter time.Duration, eventType *string, failing bool) error {
		step := float64(span/time.Microsecond) / float64(max(r.events()-1, 1))
		_, err := b.lib.Exec(ctx, sql, prefix, r.lo, r.hi, keys, string(status), attempts, from, step,
			float64(dueAfter/time.Microsecond), float64(updatedAfter/time.Microsecond), opsEventTypes, eventType, failing)
		return err
	}
	now := time.Now()
	cpu := b.startCPU(ctx)
	t := time.Now()
	chunk := int64(opsChunkRows / len(opsHandlerKeys))
	for lo := lay.done.lo; lo <= lay.done.hi; lo += chunk {
		r := opsRange{lo, min(lo+chunk-1, lay.done.hi)}
		// Stored over the last day, in order; done 50 ms after.
		from := now.Add(-24 * time.Hour).Add(time.Duration(float64(24*time.Hour) * float64(lo-lay.done.lo) / float64(lay.done.events())))
		span := time.Duration(float64(24*time.Hour) * float64(r.events()-1) / float64(lay.done.events()))
		ct := time.Now()
		if err := insert(r, opsHandlerKeys, inbox.Done, 1, from, span, 0, 50*time.Millisecond, nil, false); err != nil {
			return l, fmt.Errorf("done rows %d-%d: %w", r.lo, r.hi, err)
		}
		l.chunks = append(l.chunks, time.Since(ct))
	}
	l.done, l.doneCPU = time.Since(t), cpu()

	t = time.Now()
	// The backlog: stored over the last 5 minutes, due when stored.
	if err := insert(lay.pending, opsHandlerKeys, inbox.Null, 0, now.Add(-5*time.Minute), 5*time.Minute, 0, 0, nil, false); err != nil {
		return l, fmt.Errorf("pending rows: %w", err)
	}
	// Failed rows: stored over the hour before the last 5 minutes, failed
	// twice.
	if err := insert(lay.failed, opsHandlerKeys, inbox.Failed, 1, now.Add(-65*time.Minute), time.Hour, 0, time.Minute, nil, true); err != nil {
		return l, fmt.Errorf("failed rows: %w", err)
	}
	if _, err := b.lib.Exec(ctx, opsFailSQL, prefix, lay.failed.lo, lay.failed.hi, string(inbox.Failed)); err != nil {
		return l, fmt.Errorf("fail rows: %w", err)
	}
	// Dead rows: stored over the day before the last 10 minutes, failed
	// 4 times, then dead at the 5th.
	if err := insert(lay.dead, opsHandlerKeys, inbox.Failed, 4, now.Add(-24*time.Hour-10*time.Minute), 24*time.Hour, 0, time.Minute, nil, true); err != nil {
		return l, fmt.Errorf("dead rows: %w", err)
	}
	if _, err := b.lib.Exec(ctx, opsFailSQL, prefix, lay.dead.lo, lay.dead.hi, string(inbox.Dead)); err != nil {
		return l, fmt.Errorf("kill rows: %w", err)
	}
	l.rest = time.Since(t)

	if err := b.lib.QueryRow(ctx, "SELECT count(*) FROM inbox_count_deltas").Scan(&l.loadDeltas); err != nil {
		return l, err
	}
	if _, err := admin.Stats(ctx); err != nil { // folds the load's deltas
		return l, err
	}
	t = time.Now()
	if _, err := b.lib.Exec(ctx, "VACUUM ANALYZE inbox_records, inbox_counts, inbox_count_deltas, inbox_throughput, inbox_history"); err != nil {
		return l, fmt.Errorf("vacuum analyze: %w", err)
	}
	if err := b.checkpoint(ctx, b.lib); err != nil {
		return l, err
	}
	l.settle = time.Since(t)
	err = b.lib.QueryRow(ctx, `SELECT pg_total_relation_size(c), pg_table_size(c), pg_indexes_size(c), (SELECT count(*) FROM inbox_records)
		FROM (SELECT 'inbox_records'::regclass AS c) r`).Scan(&l.total, &l.heap, &l.indexes, &l.rows)
	if err != nil {
		return l, err
	}
	if want := lay.done.events()*2 + opsPending + opsFailed + opsDead; l.rows != want {
		return l, fmt.Errorf("loaded %d rows, want %d", l.rows, want)
	}
	return l, nil
}

// timed returns how long fn took.
func timed(fn func() error) (time.Duration, error) {
	t := time.Now()
	err := fn()
	return time.Since(t), err
}

// floorCounts runs the floor and returns its counts.
func floorCounts(ctx context.Context, pool *pgxpool.Pool) (opsCounts, error) {
	rows, err := pool.Query(ctx, opsFloorSQL)
	if err != nil {
		return nil, err
	}
	c := opsCounts{}
	var k opsCountKey
	var status string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&k.eventType, &k.key, &status, &n}, func() error {
		k.status = inbox.Status(status)
		c[k] = n
		return nil
	})
	return c, err
}

// opsRep is one repetition (rep -1: the warm-up, whose burst uses
// repetition b.reps's events): Stats and its floor, each call of the
// dead-letter views and Show, then a burst and Stats that folds it. Every
// answer is checked; rows is the table's rows before the burst.
func (b *bench) opsRep(ctx context.Context, admin *inbox.Admin, lay opsLayout, prefix string, rep int, rows int64) (r opsRun, err error) {
	var stats []inbox.HandlerStats
	if r.stats, err = timed(func() (err error) { stats, err = admin.Stats(ctx); return err }); err != nil {
		return r, err
	}
	var floor opsCounts
	if r.floor, err = timed(func() (err error) { floor, err = floorCounts(ctx, b.lib); return err }); err != nil {
		return r, fmt.Errorf("floor: %w", err)
	}
	if d := diffCounts(statsCounts(stats), floor); d != nil {
		return r, fmt.Errorf("Stats' counts differ from the table's: %s", strings.Join(d, "; "))
	}
	if floor.total() != rows {
		return r, fmt.Errorf("the floor counts %d rows, the table holds %d", floor.total(), rows)
	}

	var groups []inbox.DeadGroup
	if r.deadGroups, err = timed(func() (err error) { groups, err = admin.DeadGroups(ctx, inbox.Filter{}, 0); return err }); err != nil {
		return r, err
	}
	if err := checkGroups(groups); err != nil {
		return r, err
	}
	dead := inbox.Filter{Statuses: []inbox.Status{inbox.Dead}}
	var p1, p2 inbox.Page
	if r.list, err = timed(func() (err error) { p1, err = admin.List(ctx, dead, "", opsPage); return err }); err != nil {
		return r, err
	}
	if r.next, err = timed(func() (err error) { p2, err = admin.List(ctx, dead, p1.Next, opsPage); return err }); err != nil {
		return r, err
	}
	if err := checkPages(p1, p2); err != nil {
		return r, err
	}
	var ev *inbox.Event
	id := p1.Rows[0].EventID
	if r.show, err = timed(func() (err error) { ev, err = admin.Show(ctx, id); return err }); err != nil {
		return r, err
	}
	if len(ev.Rows) != len(opsHandlerKeys) || len(ev.History) != len(opsHandlerKeys) || len(ev.Payload) == 0 {
		return r, fmt.Errorf("Show(%s): %d rows, %d history entries, %d payload bytes; want %d, %d and some",
			id, len(ev.Rows), len(ev.History), len(ev.Payload), len(opsHandlerKeys), len(opsHandlerKeys))
	}
	var n int64
	g := groups[len(groups)/2]
	if r.cnt, err = timed(func() (err error) { n, err = admin.Count(ctx, inbox.Filter{Fingerprint: g.Fingerprint}); return err }); err != nil {
		return r, err
	}
	if n != g.Count {
		return r, fmt.Errorf("Count of fingerprint %s = %d, its group counts %d", g.Fingerprint, n, g.Count)
	}

	// The burst: opsBurstRows pending rows, opsBurstBatch per statement,
	// each statement of one pair (so one delta row each).
	if rep < 0 {
		rep = b.reps
	}
	sql := opsInsertSQL()
	t := time.Now()
	for j := range opsBurstRows / opsBurstBatch {
		rg, et, key := lay.opsBurstStatement(rep, j)
		if _, err := b.lib.Exec(ctx, sql, prefix, rg.lo, rg.hi, []string{key}, string(inbox.Null), 0, time.Now(), 1.0,
			0.0, 0.0, opsEventTypes, et, false); err != nil {
			return r, fmt.Errorf("burst: %w", err)
		}
	}
	r.burst = time.Since(t)
	if err := b.lib.QueryRow(ctx, "SELECT count(*) FROM inbox_count_deltas").Scan(&r.deltas); err != nil {
		return r, err
	}
	if r.foldStats, err = timed(func() (err error) { stats, err = admin.Stats(ctx); return err }); err != nil {
		return r, err
	}
	var left int64
	if err := b.lib.QueryRow(ctx, "SELECT count(*) FROM inbox_count_deltas").Scan(&left); err != nil {
		return r, err
	}
	if left != 0 {
		return r, fmt.Errorf("Stats left %d of %d deltas unfolded", left, r.deltas)
	}
	if r.foldFloor, err = timed(func() (err error) { floor, err = floorCounts(ctx, b.lib); return err }); err != nil {
		return r, fmt.Errorf("floor: %w", err)
	}
	if d := diffCounts(statsCounts(stats), floor); d != nil {
		return r, fmt.Errorf("after the burst, Stats' counts differ from the table's: %s", strings.Join(d, "; "))
	}
	// The same Stats without deltas to fold: what the fold cost, apart
	// from the lag's reading the burst's due rows.
	if r.againStats, err = timed(func() (err error) { stats, err = admin.Stats(ctx); return err }); err != nil {
		return r, err
	}
	if d := diffCounts(statsCounts(stats), floor); d != nil {
		return r, fmt.Errorf("after the burst, Stats' counts differ from the table's: %s", strings.Join(d, "; "))
	}
	if floor.total() != rows+opsBurstRows {
		return r, fmt.Errorf("after the burst, the floor counts %d rows, want %d", floor.total(), rows+opsBurstRows)
	}

	// Back to the table as loaded: the burst deleted, its deltas folded,
	// the dead tuples vacuumed away (as autovacuum would, soon).
	t = time.Now()
	br := lay.opsBurstRange(rep)
	tag, err := b.lib.Exec(ctx, opsDeleteSQL, prefix, br.lo, br.hi)
	if err != nil {
		return r, fmt.Errorf("delete the burst: %w", err)
	}
	if tag.RowsAffected() != opsBurstRows {
		return r, fmt.Errorf("deleted %d rows of the burst, want %d", tag.RowsAffected(), opsBurstRows)
	}
	if _, err := admin.Stats(ctx); err != nil {
		return r, err
	}
	if _, err := b.lib.Exec(ctx, "VACUUM inbox_records, inbox_counts, inbox_count_deltas, inbox_throughput"); err != nil {
		return r, fmt.Errorf("vacuum: %w", err)
	}
	r.cleanup = time.Since(t)
	return r, nil
}

// checkGroups checks DeadGroups' answer: a group per pattern and pair,
// opsDead rows in all, each pattern's numbers and ids taken out.
func checkGroups(groups []inbox.DeadGroup) error {
	var sum int64
	patterns := map[string]bool{}
	for _, g := range groups {
		sum += g.Count
		patterns[g.Pattern] = true
		if g.ErrorType == "" || g.Sample == "" || g.Fingerprint == "" {
			return fmt.Errorf("DeadGroups: group %+v lacks a type, sample or fingerprint", g)
		}
	}
	if len(groups) != opsGroups() || sum != opsDead || len(patterns) != len(opsFailures) {
		return fmt.Errorf("DeadGroups: %d groups of %d rows, %d patterns; want %d, %d, %d",
			len(groups), sum, len(patterns), opsGroups(), opsDead, len(opsFailures))
	}
	return nil
}

// checkPages checks two consecutive pages of dead rows: full, dead, newest
// first, the second after the first.
func checkPages(p1, p2 inbox.Page) error {
	if len(p1.Rows) != opsPage || len(p2.Rows) != opsPage || p1.Next == "" {
		return fmt.Errorf("List: pages of %d and %d rows (next %q), want %d each", len(p1.Rows), len(p2.Rows), p1.Next, opsPage)
	}
	all := append(slices.Clone(p1.Rows), p2.Rows...)
	for i, s := range all {
		if s.Status != inbox.Dead {
			return fmt.Errorf("List: row %d is %s, not dead", i, s.Status)
		}
		if i > 0 && s.UpdatedAt.After(all[i-1].UpdatedAt) {
			return fmt.Errorf("List: row %d changed after row %d", i, i-1)
		}
		if i > 0 && s.EventID == all[i-1].EventID && s.HandlerKey == all[i-1].HandlerKey {
			return fmt.Errorf("List: row %d repeats row %d", i, i-1)
		}
	}
	return nil
}

// opsPlan returns the floor's plan on one line.
func (b *bench) opsPlan(ctx context.Context) string {
	rows, err := b.lib.Query(ctx, "EXPLAIN (COSTS OFF) "+opsFloorSQL)
	if err != nil {
		return "unknown: " + err.Error()
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "unknown: " + err.Error()
	}
	var nodes []string
	for _, l := range lines {
		if l = strings.TrimLeft(strings.TrimSpace(l), "-> "); !strings.Contains(l, "Key:") {
			nodes = append(nodes, l)
		}
	}
	return strings.Join(nodes, " <- ")
}

// fmtTinyRatio formats a ratio that may be far below 1 (where fmtRatio
// shows 0.00x) with its inverse.
func fmtTinyRatio(x float64) string {
	if x > 0 && x < 0.1 {
		return fmt.Sprintf("%.4fx (1/%s)", x, groupF(1/x))
	}
	return fmtRatio(x)
}

func (b *bench) opsTable(lay opsLayout, l opsLoad, runs []opsRun, floorPlan string) *table {
	t := newTable("Ops: inbox.Admin on %s rows kept (%s done, %s pending, %s failed, %s dead; %d event types x %d handler keys); median (min–max) of %d repetitions",
		group(l.rows), group(lay.done.events()*2), group(opsPending), group(opsFailed), group(opsDead),
		len(opsEventTypes), len(opsHandlerKeys), len(runs))
	msOf := func(f func(opsRun) time.Duration) spread {
		return spreadBy(runs, func(r opsRun) float64 { return ms(f(r)) })
	}
	stats, floor := msOf(func(r opsRun) time.Duration { return r.stats }), msOf(func(r opsRun) time.Duration { return r.floor })
	target := fmt.Sprintf("<= %.0f ms", opsStatsTarget)
	t.add("Admin.Stats", msCell(stats), msCell(floor)+" full-scan GROUP BY", fmtTinyRatio(stats.over(floor)), target,
		b.check("Ops", fmt.Sprintf("Stats at %s rows <= %.0f ms", group(l.rows), opsStatsTarget), fmt.Sprintf("%.1f ms", stats.med), stats.med <= opsStatsTarget))
	deltas := spreadBy(runs, func(r opsRun) float64 { return float64(r.deltas) })
	fs, ff := msOf(func(r opsRun) time.Duration { return r.foldStats }), msOf(func(r opsRun) time.Duration { return r.foldFloor })
	t.add(fmt.Sprintf("Admin.Stats after a burst (folds %s deltas)", groupF(deltas.med)), msCell(fs), msCell(ff)+" full-scan GROUP BY",
		fmtTinyRatio(fs.over(ff)), "", "")
	t.add(fmt.Sprintf("  Stats again (nothing to fold; %s rows due)", group(opsPending+opsBurstRows)),
		msCell(msOf(func(r opsRun) time.Duration { return r.againStats })), "", "", "", "")
	t.add(fmt.Sprintf("  the burst: %s INSERTs of %d pending rows", group(opsBurstRows/opsBurstBatch), opsBurstBatch),
		msCell(msOf(func(r opsRun) time.Duration { return r.burst })), "", "", "", "")
	t.add(fmt.Sprintf("Admin.DeadGroups (%s dead rows, %d groups)", group(opsDead), opsGroups()),
		msCell(msOf(func(r opsRun) time.Duration { return r.deadGroups })), "", "", "", "")
	t.add(fmt.Sprintf("Admin.List dead, first page of %d", opsPage), msCell(msOf(func(r opsRun) time.Duration { return r.list })), "", "", "", "")
	t.add("Admin.List dead, next page", msCell(msOf(func(r opsRun) time.Duration { return r.next })), "", "", "", "")
	t.add(fmt.Sprintf("Admin.Show one dead event (%d rows, history)", len(opsHandlerKeys)),
		msCell(msOf(func(r opsRun) time.Duration { return r.show })), "", "", "", "")
	t.add(fmt.Sprintf("Admin.Count one fingerprint (%d dead rows)", opsDead/opsGroups()),
		msCell(msOf(func(r opsRun) time.Duration { return r.cnt })), "", "", "", "")
	done := lay.done.events() * 2
	_, pgCPU, _ := l.doneCPU.perEvent(1)
	cpu := "PostgreSQL CPU n/a"
	if l.doneCPU.pgKnown {
		cpu = fmt.Sprintf("PostgreSQL CPU %.1f s", pgCPU/1e6)
	}
	t.add(fmt.Sprintf("load %s done rows (%d INSERT ... SELECT)", group(done), len(l.chunks)),
		fmtSecs(l.done)+" ("+fmtRate(rate(int(done), l.done))+")", "", "", "", cpu)
	if len(l.chunks) > 1 {
		t.add("  first, slowest and last statement", fmt.Sprintf("%s, %s, %s", fmtSecs(l.chunks[0]), fmtSecs(slices.Max(l.chunks)),
			fmtSecs(l.chunks[len(l.chunks)-1])), "", "", "", "")
	}
	t.add("load pending, failed and dead rows", fmtSecs(l.rest), "", "", "", "")
	t.add("VACUUM ANALYZE + CHECKPOINT after the load", fmtSecs(l.settle), "", "", "", "")
	t.add("table size: total (heap + indexes)", fmt.Sprintf("%s (%s + %s)", fmtMiB(l.total), fmtMiB(l.heap), fmtMiB(l.indexes)),
		"", "", "", fmt.Sprintf("%.0f B/row", float64(l.total)/float64(l.rows)))
	t.note("rows inserted by SQL (generate_series; the counting trigger counts each statement); events have a row per")
	t.note("handler key, time-ordered ids; done rows stored over the last day, pending ones over the last 5 minutes and")
	t.note("due; failed and dead rows carry %d failure patterns whose numbers and ids vary, with an error type; the", len(opsFailures))
	t.note("failed and dead rows got there by an UPDATE, so the trigger wrote their history; the load left %s deltas,", group(l.loadDeltas))
	t.note("folded by a Stats before VACUUM ANALYZE and a CHECKPOINT")
	t.note("each repetition: Stats, then the floor (its counts must equal Stats' exactly, or the workload fails), then")
	t.note("DeadGroups, List of dead rows (first page, then the next), Show of the first listed event, Count of one")
	t.note("group's fingerprint (each answer checked); then the burst: %s INSERTs of %d pending rows, each of one (type,",
		group(opsBurstRows/opsBurstBatch), opsBurstBatch)
	t.note("key) pair, so one delta each, then Stats (timed: it folds them), then the floor (checked), then Stats again")
	t.note("(Stats' lag reads the due rows: its cost grows with the backlog, which the burst grew); then the burst is")
	t.note("deleted, folded and vacuumed (%s per repetition, untimed); one untimed pass of the same ran first",
		secsCell(spreadBy(runs, func(r opsRun) float64 { return r.cleanup.Seconds() })))
	t.note("times are the calls' own, from this process (Admin over a pgxpool of %d connections, search_path %s)", b.lib.Config().MaxConns, libSchema)
	t.note("floor plan: %s", floorPlan)
	return t
}
