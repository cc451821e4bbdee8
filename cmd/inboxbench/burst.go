package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Burst: a freshly created table receives a burst of events with three
// handlers each and is drained before anything has analyzed it, as right
// after install or TRUNCATE. The planner then has no statistics; a claim
// planned without them was measured at 63–89 ms instead of ~11 ms at
// 60,000 due rows. The same burst drained after ANALYZE is the reference.

// Schemas created anew for every Burst run.
const (
	burstLibSchema   = "bench_burst_lib"
	burstFloorSchema = "bench_burst_floor"
)

// burstKeys are the handler keys registered for the event type in Burst:
// each event is stored as one row per key.
var burstKeys = []string{"noop-a", "noop-b", "noop-c"}

// burstClaims is how many times each floor run times one claim with
// EXPLAIN ANALYZE before draining.
const burstClaims = 3

// burstRun is one Burst run: load, (ANALYZE,) drain.
type burstRun struct {
	load, drain  time.Duration
	autoAnalyzed bool      // autovacuum analyzed the table before the drain ended
	claims       []float64 // floor only: execution times of one claim of 500, ms
	plan         []string  // floor only: EXPLAIN of the claim before the drain
	buffers      string    // floor only: the last timed claim's buffers, search and whole
}

// burst runs Burst: library fresh, library analyzed, floor fresh, floor
// analyzed, in turn, b.reps times.
func (b *bench) burst(ctx context.Context) error {
	n := b.size.burst
	rows := n * len(burstKeys)
	libPool, err := b.schemaPool(ctx, burstLibSchema, true)
	if err != nil {
		return err
	}
	defer libPool.Close()
	floorPool, err := b.schemaPool(ctx, burstFloorSchema, true)
	if err != nil {
		return err
	}
	defer floorPool.Close()

	var libFresh, libAnalyzed, floorFresh, floorAnalyzed []burstRun
	for range b.reps {
		for _, analyze := range []bool{false, true} {
			r, err := b.burstLibrary(ctx, libPool, n, analyze)
			if err != nil {
				return fmt.Errorf("library (analyzed %t): %w", analyze, err)
			}
			if analyze {
				libAnalyzed = append(libAnalyzed, r)
			} else {
				libFresh = append(libFresh, r)
			}
		}
		for _, analyze := range []bool{false, true} {
			r, err := b.burstFloor(ctx, floorPool, n, analyze)
			if err != nil {
				return fmt.Errorf("floor (analyzed %t): %w", analyze, err)
			}
			if analyze {
				floorAnalyzed = append(floorAnalyzed, r)
			} else {
				floorFresh = append(floorFresh, r)
			}
		}
	}
	// Leave nothing behind for later workloads.
	for _, s := range []struct {
		pool   *pgxpool.Pool
		schema string
	}{{libPool, burstLibSchema}, {floorPool, burstFloorSchema}} {
		if err := dropSchema(ctx, s.pool, s.schema); err != nil {
			return err
		}
	}

	drainR := func(r burstRun) float64 { return rate(rows, r.drain) }
	loadR := func(r burstRun) float64 { return rate(rows, r.load) }
	lf, la := spreadBy(libFresh, drainR), spreadBy(libAnalyzed, drainR)
	ff, fa := spreadBy(floorFresh, drainR), spreadBy(floorAnalyzed, drainR)

	t := newTable("Burst: %s events x %d handlers (%s rows) into a new table, drained with no statistics vs after ANALYZE; median (min–max) of %d repetitions",
		group(int64(n)), len(burstKeys), group(int64(rows)), b.reps)
	t.add("drain, fresh table (rows/s)", rateCell(lf), rateCell(ff), fmtRatio(lf.over(ff)), "", "")
	t.add("drain, after ANALYZE (rows/s)", rateCell(la), rateCell(fa), fmtRatio(la.over(fa)), "", "")
	x := lf.over(la)
	t.add("  fresh / after ANALYZE", fmtRatio(x), fmtRatio(ff.over(fa)), "", ">= 0.80x (library)",
		b.check("Burst", "library drain fresh >= 0.80x after ANALYZE", fmtRatio(x), x >= 0.8))
	ls := spreadBy(append(libFresh, libAnalyzed...), loadR)
	fs := spreadBy(append(floorFresh, floorAnalyzed...), loadR)
	t.add("Set / COPY, every run (rows/s)", rateCell(ls), rateCell(fs)+" COPY", fmtRatio(ls.over(fs)), "", "")

	claims := func(runs []burstRun) spread {
		var all []float64
		for _, r := range runs {
			all = append(all, r.claims...)
		}
		return spreadOf(all)
	}
	cf, ca := claims(floorFresh), claims(floorAnalyzed)
	t.add("floor claim of 500, fresh table", "", msCell(cf), "", "", "")
	t.add("floor claim of 500, after ANALYZE", "", msCell(ca), "", "", "")
	t.add("  fresh / after ANALYZE", "", fmtRatio(cf.over(ca)), "", "", "")

	autoAnalyzed := 0
	for _, r := range append(libFresh, floorFresh...) {
		if r.autoAnalyzed {
			autoAnalyzed++
		}
	}
	t.note("runs in turn: library fresh, library after ANALYZE, floor fresh, floor after ANALYZE, library fresh, ...;")
	t.note("before every run the schema is dropped, created and migrated anew, so its table has no statistics; then")
	t.note("the burst is loaded (library: Set in batches of %s events, a handler registered per key; floor: COPY),", group(setBatch))
	t.note("then ANALYZE (not VACUUM: the runs differ in statistics alone) for the analyzed runs, then a CHECKPOINT")
	t.note("autovacuum analyzed the fresh table before its drain ended in %d of %d fresh runs (autovacuum_naptime %s);",
		autoAnalyzed, len(libFresh)+len(floorFresh), b.setting(ctx, "autovacuum_naptime"))
	t.note("drains: the library with default options until no row is unfinished, the floor with W1's SQL loop")
	t.note("floor claim: EXPLAIN (ANALYZE, BUFFERS) of the floor's claim, %d times per run before its drain, each", burstClaims)
	t.note("rolled back; the figure is the server's Execution Time; the first of each %d also sets hint bits", burstClaims)
	if len(floorFresh) > 0 && len(floorAnalyzed) > 0 {
		fr, an := floorFresh[len(floorFresh)-1], floorAnalyzed[len(floorAnalyzed)-1]
		if len(fr.plan) > 0 {
			t.note("fresh table, floor claim's top plan node (EXPLAIN): %s", fr.plan[0])
		}
		t.note("fresh plan:          %s", strings.Join(planNodes(fr.plan), " -> "))
		t.note("after-ANALYZE plan:  %s", strings.Join(planNodes(an.plan), " -> "))
		t.note("buffers of the last timed claim (search: the CTE's; whole: the statement's), fresh: %s", fr.buffers)
		t.note("  after ANALYZE: %s", an.buffers)
	}
	t.note("the library's own claims are not timed one by one: its drain rates, fresh against analyzed, show their cost")
	b.print(t)
	return nil
}

// burstLibrary is one library run of Burst on a just-created table.
func (b *bench) burstLibrary(ctx context.Context, pool *pgxpool.Pool, n int, analyze bool) (run burstRun, err error) {
	if err := newSchema(ctx, pool, burstLibSchema, true); err != nil {
		return run, err
	}
	if run.load, err = b.libSet(ctx, pool, n, burstKeys...); err != nil {
		return run, fmt.Errorf("set: %w", err)
	}
	if err := b.burstSettle(ctx, pool, analyze); err != nil {
		return run, err
	}
	if run.drain, err = b.libDrain(ctx, pool, n, burstKeys...); err != nil {
		return run, fmt.Errorf("drain: %w", err)
	}
	if run.autoAnalyzed, err = autoAnalyzed(ctx, pool); err != nil {
		return run, err
	}
	rows := int64(n * len(burstKeys))
	done, attempts, err := tally(ctx, pool)
	if err != nil {
		return run, err
	}
	if done != rows || attempts != rows {
		return run, fmt.Errorf("library left %d done rows with %d attempts, want %d and %d", done, attempts, rows, rows)
	}
	return run, nil
}

// burstFloor is one floor run of Burst on a just-created table: COPY, (ANALYZE,)
// EXPLAIN the claim, time burstClaims claims, drain.
func (b *bench) burstFloor(ctx context.Context, pool *pgxpool.Pool, n int, analyze bool) (run burstRun, err error) {
	if err := newSchema(ctx, pool, burstFloorSchema, true); err != nil {
		return run, err
	}
	if run.load, err = b.floorCopy(ctx, pool, n, burstKeys...); err != nil {
		return run, err
	}
	if err := b.burstSettle(ctx, pool, analyze); err != nil {
		return run, err
	}
	worker := uuid.New()
	if run.plan, err = explain(ctx, pool, "EXPLAIN "+floorClaimSQL, worker); err != nil {
		return run, err
	}
	for range burstClaims {
		lines, err := explain(ctx, pool, "EXPLAIN (ANALYZE, BUFFERS) "+floorClaimSQL, worker)
		if err != nil {
			return run, err
		}
		_, exec, err := explainTimes(lines)
		if err != nil {
			return run, err
		}
		run.claims = append(run.claims, exec)
		run.buffers = fmt.Sprintf("search %s; whole claim %s", buffersOf(lines, "CTE c"), buffersOf(lines, ""))
	}
	d, drained, err := b.floorDrain(ctx, pool)
	if err != nil {
		return run, fmt.Errorf("drain: %w", err)
	}
	if want := n * len(burstKeys); drained != want {
		return run, fmt.Errorf("drain: drained %d rows, want %d", drained, want)
	}
	run.drain = d
	run.autoAnalyzed, err = autoAnalyzed(ctx, pool)
	return run, err
}

// burstSettle runs ANALYZE if asked to (and nothing else that would give
// the planner statistics), then a CHECKPOINT.
func (b *bench) burstSettle(ctx context.Context, pool *pgxpool.Pool, analyze bool) error {
	if analyze {
		if _, err := pool.Exec(ctx, "ANALYZE inbox_records"); err != nil {
			return fmt.Errorf("analyze: %w", err)
		}
	}
	return b.checkpoint(ctx, pool)
}

// autoAnalyzed reports whether autovacuum has analyzed pool's inbox table.
func autoAnalyzed(ctx context.Context, pool *pgxpool.Pool) (bool, error) {
	var n int64
	err := pool.QueryRow(ctx, `SELECT autoanalyze_count FROM pg_stat_user_tables WHERE relid = 'inbox_records'::regclass`).Scan(&n)
	return n > 0, err
}

// explain runs an EXPLAIN statement in a transaction it rolls back (an
// EXPLAIN ANALYZE of an UPDATE performs it) and returns its lines.
func explain(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]string, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("explain: %w", err)
	}
	return lines, nil
}

// explainTimes returns the planning and execution times, in milliseconds,
// of EXPLAIN ANALYZE's text output.
func explainTimes(lines []string) (planning, execution float64, err error) {
	found := 0
	for _, l := range lines {
		l = strings.TrimSpace(l)
		for _, f := range []struct {
			prefix string
			to     *float64
		}{{"Planning Time:", &planning}, {"Execution Time:", &execution}} {
			if rest, ok := strings.CutPrefix(l, f.prefix); ok {
				v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(rest, "ms")), 64)
				if err != nil {
					return 0, 0, fmt.Errorf("EXPLAIN line %q: %w", l, err)
				}
				*f.to = v
				found++
			}
		}
	}
	if found != 2 {
		return 0, 0, errors.New("EXPLAIN ANALYZE output without Planning Time and Execution Time")
	}
	return planning, execution, nil
}

// planNodes returns the nodes of EXPLAIN's text output in order, without
// their estimates, each prefixed by the CTE, InitPlan or SubPlan it
// belongs to, if it heads one: "Update on t", "[CTE c] Limit", "LockRows".
func planNodes(lines []string) []string {
	var nodes []string
	label := ""
	for i, l := range lines {
		l = strings.TrimSpace(l)
		node, ok := strings.CutPrefix(l, "->")
		switch {
		case i == 0:
			node = l
		case ok:
			node = strings.TrimSpace(node)
		case strings.HasPrefix(l, "CTE ") || strings.HasPrefix(l, "InitPlan ") || strings.HasPrefix(l, "SubPlan "):
			label = "[" + l + "] "
			continue
		default:
			continue // a detail line: conditions, buffers, times
		}
		if j := strings.Index(node, "  ("); j >= 0 {
			node = node[:j]
		}
		nodes = append(nodes, label+node)
		label = ""
	}
	return nodes
}

// buffersOf returns the Buffers line, without its label, of the first plan
// node after the line marker in EXPLAIN (ANALYZE, BUFFERS) output; with
// marker "", that of the top node, which counts the whole statement.
func buffersOf(lines []string, marker string) string {
	seen := marker == ""
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if !seen {
			seen = l == marker
			continue
		}
		if rest, ok := strings.CutPrefix(l, "Buffers:"); ok {
			return strings.TrimSpace(rest)
		}
	}
	return "n/a"
}

// setting returns a server setting, or "unknown".
func (b *bench) setting(ctx context.Context, name string) string {
	var v string
	if err := b.lib.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
		return "unknown"
	}
	return v
}
