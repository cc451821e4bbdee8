package main

import (
	"context"
	"fmt"
	"time"
)

// insertDoneSQL fills the library's table with $1 done rows directly,
// the state the table is in after those events were processed.
const insertDoneSQL = `
INSERT INTO inbox_records (event_id, handler_key, event_type, payload, event_date, status, attempts)
SELECT gen_random_uuid(), 'noop', 'bench.created', decode(repeat('78', 64), 'hex'), now(), 'done', 1
FROM generate_series(1, $1)`

// idle runs Idle: PostgreSQL's CPU while an idle worker with default
// options watches a table of finished rows, against the same window with
// no worker.
func (b *bench) idle(ctx context.Context) error {
	rows, window := b.size.idleRows, b.size.idleWindow
	t := newTable("Idle: PostgreSQL CPU over %v, %s done rows kept, worker idle (default options)", window, group(int64(rows)))
	srv, err := findServer(ctx, b.lib)
	if err != nil {
		t.note("not measured: %v", err)
		b.print(t)
		return nil
	}
	if err := b.reset(ctx, b.lib); err != nil {
		return err
	}
	for left := rows; left > 0; left -= 100_000 {
		if _, err := b.lib.Exec(ctx, insertDoneSQL, min(left, 100_000)); err != nil {
			return fmt.Errorf("insert done rows: %w", err)
		}
	}
	if err := b.settle(ctx, b.lib); err != nil {
		return err
	}
	time.Sleep(time.Second) // let the VACUUM and CHECKPOINT's after-effects pass

	measure := func() (pg, self time.Duration, err error) {
		a, err := srv.snapshot()
		if err != nil {
			return 0, 0, err
		}
		s0 := selfCPU()
		time.Sleep(window)
		z, err := srv.snapshot()
		if err != nil {
			return 0, 0, err
		}
		return cpuBetween(a, z), selfCPU() - s0, nil
	}
	// Windows alternate: no worker, an idle worker, no worker, ...
	type idleRun struct{ floorPG, floorSelf, libPG, libSelf time.Duration }
	var runs []idleRun
	var rss int64
	for range b.reps {
		var r idleRun
		if r.floorPG, r.floorSelf, err = measure(); err != nil {
			return err
		}
		ib, err := b.startListening(ctx, noop)
		if err != nil {
			return err
		}
		r.libPG, r.libSelf, err = measure()
		rss = max(rss, peakRSS())
		stopInbox(ib)
		if err != nil {
			return err
		}
		runs = append(runs, r)
		time.Sleep(200 * time.Millisecond) // let the worker's stop pass
	}

	pct := func(d time.Duration) float64 { return 100 * d.Seconds() / window.Seconds() }
	fig := func(f func(idleRun) time.Duration) spread {
		return spreadBy(runs, func(r idleRun) float64 { return pct(f(r)) })
	}
	pctCell := func(s spread) string {
		return s.format(func(x float64) string { return fmt.Sprintf("%.2f", x) }, " %")
	}
	libPG, floorPG := fig(func(r idleRun) time.Duration { return r.libPG }), fig(func(r idleRun) time.Duration { return r.floorPG })
	t.add("PostgreSQL CPU, % of one core", pctCell(libPG), pctCell(floorPG)+" no worker", fmtRatio(libPG.over(floorPG)),
		"<= 1 % of a core", b.check("Idle", "PostgreSQL CPU <= 1 % of a core", fmt.Sprintf("%.2f %%", libPG.med), libPG.med <= 1))
	t.add("  of which the worker's (difference)", pctCell(fig(func(r idleRun) time.Duration { return r.libPG - r.floorPG })), "", "", "", "")
	t.add("Go process CPU, % of one core", pctCell(fig(func(r idleRun) time.Duration { return r.libSelf })),
		pctCell(fig(func(r idleRun) time.Duration { return r.floorSelf })), "", "", "")
	t.add("peak RSS, Go process (max of runs)", fmtMiB(rss), "", "", "", "")
	t.note("median (min–max) of %d pairs of %v windows, alternating: no worker, then an idle worker (started anew", b.reps, window)
	t.note("each time, its start-up claim let pass before the window); the difference is taken per pair")
	t.note("CPU is utime+stime from /proc/<pid>/stat of the postmaster and all its children (exited ones through the")
	t.note("postmaster's cutime/cstime), in 10 ms ticks; done rows were inserted by SQL, then VACUUM ANALYZE")
	b.print(t)
	return nil
}
