package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// w1Run is one W1 repetition of one runner: load n events, settle, drain.
type w1Run struct {
	load, drain time.Duration
	cpu         cpuUse
	rss         int64 // peak RSS of this process over load and drain
}

func (r w1Run) loadRate(n int) float64  { return rate(n, r.load) }
func (r w1Run) drainRate(n int) float64 { return rate(n, r.drain) }

// w1Runner is one of W1's three: the library, the same-shape floor and the
// minimal floor.
type w1Runner struct {
	name string // as printed in the floor column
	run  func(ctx context.Context, n int) (w1Run, error)
	runs []w1Run
}

// w1Reps returns the repetitions of W1 at n events: 3 at 1,000,000 (each
// takes minutes) unless -reps says otherwise.
func (b *bench) w1Reps(n int) int {
	if n >= 1_000_000 && !b.repsSet {
		return min(b.reps, 3)
	}
	return b.reps
}

// w1 runs W1: Set then drain, at each size, against two floors: COPY and a
// hand-written drain loop on the same table shape, and the same on a
// minimal queue table. Each size runs the three in turn, b.w1Reps times.
func (b *bench) w1(ctx context.Context) error {
	minPool, minOpts, err := b.newMinFloor(ctx)
	if err != nil {
		return err
	}
	defer minPool.Close()

	var libRef, floorRef, minRef spread // drain rates at the first size
	for i, n := range b.size.w1 {
		reps := b.w1Reps(n)
		var done, attempts []int64
		lib := &w1Runner{name: "library", run: func(ctx context.Context, n int) (w1Run, error) {
			r, d, a, err := b.w1Library(ctx, n)
			done, attempts = append(done, d), append(attempts, a)
			return r, err
		}}
		same := &w1Runner{name: "same-shape", run: func(ctx context.Context, n int) (w1Run, error) {
			return b.w1Floor(ctx, b.floor, "inbox_records", n,
				func(ctx context.Context) (time.Duration, error) { return b.floorCopy(ctx, b.floor, n) },
				func(ctx context.Context) (time.Duration, int, error) { return b.floorDrain(ctx, b.floor) })
		}}
		minimal := &w1Runner{name: "minimal", run: func(ctx context.Context, n int) (w1Run, error) {
			return b.w1Floor(ctx, minPool, "queue", n,
				func(ctx context.Context) (time.Duration, error) { return minCopy(ctx, minPool, n) },
				func(ctx context.Context) (time.Duration, int, error) { return minDrain(ctx, minPool) })
		}}
		runners := []*w1Runner{lib, same, minimal}
		for rep := range reps {
			// The order rotates from one repetition to the next, so that
			// what a run leaves behind (dead tuples, WAL to flush) does not
			// always weigh on the same runner.
			for i := range runners {
				r := runners[(i+rep)%len(runners)]
				run, err := r.run(ctx, n)
				if err != nil {
					return fmt.Errorf("%s: %w", r.name, err)
				}
				r.runs = append(r.runs, run)
			}
		}
		// Leave the tables empty for the next size and workload.
		for _, pool := range []*pgxpool.Pool{b.lib, b.floor} {
			if _, err := pool.Exec(ctx, "TRUNCATE inbox_records"); err != nil {
				return err
			}
		}
		if _, err := minPool.Exec(ctx, "TRUNCATE queue"); err != nil {
			return err
		}

		t := newTable("W1: Set %s events (batches of %s), then drain with a no-op handler; median (min–max) of %d repetitions",
			group(int64(n)), group(setBatch), reps)
		wl := fmt.Sprintf("W1 %s", group(int64(n)))
		loadR := func(r w1Run) float64 { return r.loadRate(n) }
		drainR := func(r w1Run) float64 { return r.drainRate(n) }
		totalR := func(r w1Run) float64 { return rate(n, r.load+r.drain) }

		libSet, sameCopy, minCopyR := spreadBy(lib.runs, loadR), spreadBy(same.runs, loadR), spreadBy(minimal.runs, loadR)
		x := libSet.over(sameCopy)
		t.add("Set (events/s)", rateCell(libSet), rateCell(sameCopy)+" COPY same-shape", fmtRatio(x), ">= 0.80x same-shape",
			b.check(wl, "Set >= 0.80x COPY same-shape", fmtRatio(x), x >= 0.8))
		t.add("  vs COPY into the minimal table", "", rateCell(minCopyR)+" COPY minimal", fmtRatio(libSet.over(minCopyR)), "", "")

		libR, sameR, minR := spreadBy(lib.runs, drainR), spreadBy(same.runs, drainR), spreadBy(minimal.runs, drainR)
		x = libR.over(sameR)
		t.add("drain claim->done (events/s)", rateCell(libR), rateCell(sameR)+" same-shape", fmtRatio(x), ">= 0.80x same-shape",
			b.check(wl, "drain >= 0.80x same-shape floor", fmtRatio(x), x >= 0.8))
		x = libR.over(minR)
		t.add("  vs the minimal floor", "", rateCell(minR)+" minimal", fmtRatio(x), ">= 0.80x minimal",
			b.check(wl, "drain >= 0.80x minimal floor", fmtRatio(x), x >= 0.8))

		perEvent := func(part int) func(w1Run) float64 {
			return func(r w1Run) float64 {
				g, p, tot := r.cpu.perEvent(n)
				return [...]float64{g, p, tot}[part]
			}
		}
		const goPart, pgPart, totalPart = 0, 1, 2
		libC, sameC, minC := spreadBy(lib.runs, perEvent(totalPart)), spreadBy(same.runs, perEvent(totalPart)), spreadBy(minimal.runs, perEvent(totalPart))
		t.add("drain CPU per event, Go + PostgreSQL", usCell(libC), usCell(sameC)+" same-shape", fmtRatio(libC.over(sameC)), "", "")
		cpuResult := "-"
		if x = libC.over(minC); !math.IsNaN(x) {
			cpuResult = b.check(wl, "drain CPU/event <= 1.50x minimal floor", fmtRatio(x), x <= 1.5)
		}
		t.add("  vs the minimal floor", "", usCell(minC)+" minimal", fmtRatio(x), "<= 1.50x minimal", cpuResult)
		split := func(runs []w1Run) string {
			g, p := spreadBy(runs, perEvent(goPart)), spreadBy(runs, perEvent(pgPart))
			if p.n == 0 {
				return fmt.Sprintf("%.1f + n/a µs", g.med)
			}
			return fmt.Sprintf("%.1f + %.1f µs", g.med, p.med)
		}
		t.add("  of which Go + PostgreSQL", split(lib.runs), split(same.runs)+" same-shape", "", "", "")
		t.add("", "", split(minimal.runs)+" minimal", "", "", "")

		libT, sameT := spreadBy(lib.runs, totalR), spreadBy(same.runs, totalR)
		t.add("total Set+drain (events/s)", rateCell(libT), rateCell(sameT)+" same-shape", fmtRatio(libT.over(sameT)), "", "")
		phases := func(runs []w1Run) string {
			l := spreadBy(runs, func(r w1Run) float64 { return r.load.Seconds() })
			d := spreadBy(runs, func(r w1Run) float64 { return r.drain.Seconds() })
			return fmt.Sprintf("%.2f s + %.2f s", l.med, d.med)
		}
		t.add("phase times, load + drain", phases(lib.runs), phases(same.runs)+" same-shape", "", "", "")
		t.add("", "", phases(minimal.runs)+" minimal", "", "", "")

		if i == 0 {
			libRef, floorRef, minRef = libR, sameR, minR
		} else {
			x = libR.over(libRef)
			t.add(fmt.Sprintf("drain rate / %s drain rate", group(int64(b.size.w1[0]))), fmtRatio(x),
				fmtRatio(sameR.over(floorRef))+" same-shape; "+fmtRatio(minR.over(minRef))+" minimal",
				"", ">= 0.80 (falls <= 20 %)", b.check(wl, "drain rate >= 0.80x 20k rate", fmtRatio(x), x >= 0.8))
		}
		maxRSS := func(runs []w1Run) int64 {
			var m int64
			for _, r := range runs {
				m = max(m, r.rss)
			}
			return m
		}
		libRSS, sameRSS := maxRSS(lib.runs), maxRSS(same.runs)
		rssTarget, rssResult := "<= 64 MiB at 1,000,000", "-"
		if n >= 1_000_000 {
			rssResult = b.check(wl, "peak RSS <= 64 MiB", fmtMiB(libRSS), libRSS <= 64<<20)
		}
		t.add("peak RSS, Go process (max of runs)", fmtMiB(libRSS), fmtMiB(sameRSS)+" same-shape",
			fmtRatio(float64(libRSS)/float64(sameRSS)), rssTarget, rssResult)

		t.note("each figure is the median (min–max) of %d repetitions; the library and the two floors run in turn, in an order", reps)
		t.note("that rotates each repetition; ratios are ratios of medians; each run starts from an emptied, vacuumed table")
		if reps < b.reps {
			t.note("%d repetitions at %s events (not %d): each takes minutes; -reps sets the count for every size", reps, group(int64(n)), b.reps)
		}
		t.note("drain is timed from Inbox.Start (default options: batch %d, concurrency %d) until no row is unfinished;",
			inbox.DefaultBatchSize, inbox.DefaultConcurrency)
		t.note("the floors drain on one connection: claim 500 (MATERIALIZED CTE, SKIP LOCKED, UPDATE by ctid) -> no-op per row")
		t.note("-> one UPDATE to done by ctid; same-shape: the library's migrated table in schema %s; minimal: table", floorSchema)
		t.note("%s.queue (id uuid primary key, status, due_at, payload) with one partial index on due_at for due statuses,", minSchema)
		t.note("given the library table's storage parameters (%s)", fmtOpts(minOpts))
		t.note("CPU per event: this process's CPU (getrusage) plus PostgreSQL's (every server process, /proc) over the drain,")
		t.note("divided by the events; the Go and PostgreSQL parts are medians of their own")
		t.note("Set and COPY times are the time inside the calls; generating records is not timed")
		bad := false
		for rep := range done {
			if done[rep] != int64(n) || attempts[rep] != int64(n) {
				b.exitCode, bad = 1, true
				t.note("ERROR: repetition %d: library left %d done rows with %d attempts for %d events", rep+1, done[rep], attempts[rep], n)
			}
		}
		if !bad {
			t.note("library: every repetition left %d rows done, sum(attempts) = %d", n, n)
		}
		b.print(t)
	}
	if len(b.size.w1) == 1 {
		b.printf("  note: -size %s runs W1 at %s events only; -size full adds 100,000 and 1,000,000\n", b.size.name, group(int64(b.size.w1[0])))
	}
	return nil
}

func fmtOpts(opts []string) string {
	if len(opts) == 0 {
		return "none"
	}
	return strings.Join(opts, ", ")
}

// w1Library is one library run of W1: Set n events, settle, drain. It
// returns the done rows and sum of attempts it left.
func (b *bench) w1Library(ctx context.Context, n int) (run w1Run, done, attempts int64, err error) {
	if err := b.reset(ctx, b.lib); err != nil {
		return run, 0, 0, err
	}
	resetPeakRSS()
	if run.load, err = b.libSet(ctx, b.lib, n); err != nil {
		return run, 0, 0, fmt.Errorf("set: %w", err)
	}
	if err := b.settle(ctx, b.lib); err != nil {
		return run, 0, 0, err
	}
	cpu := b.startCPU(ctx)
	if run.drain, err = b.libDrain(ctx, b.lib, n); err != nil {
		return run, 0, 0, fmt.Errorf("drain: %w", err)
	}
	run.cpu = cpu()
	run.rss = peakRSS()
	done, attempts, err = tally(ctx, b.lib)
	return run, done, attempts, err
}

// w1Floor is one floor run of W1 on table of pool: empty and settle it,
// load n events, settle, drain.
func (b *bench) w1Floor(ctx context.Context, pool *pgxpool.Pool, table string, n int,
	load func(context.Context) (time.Duration, error), drain func(context.Context) (time.Duration, int, error)) (run w1Run, err error) {
	if _, err := pool.Exec(ctx, "TRUNCATE "+table); err != nil {
		return run, fmt.Errorf("truncate: %w", err)
	}
	if err := b.settleTable(ctx, pool, table); err != nil {
		return run, err
	}
	resetPeakRSS()
	if run.load, err = load(ctx); err != nil {
		return run, err
	}
	if err := b.settleTable(ctx, pool, table); err != nil {
		return run, err
	}
	cpu := b.startCPU(ctx)
	d, drained, err := drain(ctx)
	if err != nil {
		return run, fmt.Errorf("drain: %w", err)
	}
	run.drain, run.cpu, run.rss = d, cpu(), peakRSS()
	if drained != n {
		return run, fmt.Errorf("drain: drained %d rows, want %d", drained, n)
	}
	return run, nil
}

// w1bRun is one W1b repetition: per-call latencies of Set and INSERT.
type w1bRun struct{ lib, floor latencies }

// w1b runs W1b: one Set per event, each its own transaction, interleaved
// with the floor's one INSERT per transaction so both see the same server,
// b.reps times.
func (b *bench) w1b(ctx context.Context) error {
	n := b.size.w1b
	ib, err := b.newInbox(b.lib, noop)
	if err != nil {
		return err
	}
	c := ib.Client()
	const warmup = 20
	var runs []w1bRun
	resetPeakRSS()
	for range b.reps {
		if err := b.reset(ctx, b.lib); err != nil {
			return err
		}
		if err := b.reset(ctx, b.floor); err != nil {
			return err
		}
		libD := make([]time.Duration, 0, n)
		floorD := make([]time.Duration, 0, n)
		for i := range n + warmup {
			rec := records(i, 1)[0]
			t := time.Now()
			if err := c.Set(ctx, rec); err != nil {
				return err
			}
			d := time.Since(t)
			t = time.Now()
			if err := b.floorInsert(ctx, i); err != nil {
				return err
			}
			fd := time.Since(t)
			if i >= warmup {
				libD, floorD = append(libD, d), append(floorD, fd)
			}
		}
		runs = append(runs, w1bRun{summarise(libD), summarise(floorD)})
	}
	rss := peakRSS()
	fig := func(f func(latencies) time.Duration) (lib, floor spread) {
		return spreadBy(runs, func(r w1bRun) float64 { return ms(f(r.lib)) }),
			spreadBy(runs, func(r w1bRun) float64 { return ms(f(r.floor)) })
	}
	t := newTable("W1b: %s sequential Sets of one event, each its own transaction; median (min–max) of %d repetitions",
		group(int64(n)), b.reps)
	l, f := fig(func(l latencies) time.Duration { return l.mean })
	x := l.over(f)
	t.add("mean per Set", msCell(l), msCell(f)+" INSERT", fmtRatio(x), "<= 1.20x floor",
		b.check("W1b", "mean Set <= 1.20x INSERT", fmtRatio(x), x <= 1.2))
	l, f = fig(func(l latencies) time.Duration { return l.p50 })
	t.add("p50", msCell(l), msCell(f), fmtRatio(l.over(f)), "", "")
	l, f = fig(func(l latencies) time.Duration { return l.p99 })
	t.add("p99", msCell(l), msCell(f), fmtRatio(l.over(f)), "", "")
	t.add("peak RSS, Go process (both)", fmtMiB(rss), "", "", "", "")
	t.note("floor: INSERT ... ON CONFLICT DO NOTHING, autocommit; library Set and floor INSERT alternate, after %d warm-up pairs", warmup)
	t.note("per repetition; mean, p50 and p99 are taken per repetition, then their median (min–max) across repetitions")
	t.note("library Set runs with notifications on (the default); no worker is running")
	b.print(t)
	return nil
}
