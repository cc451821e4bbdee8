package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pginbox/inbox"
)

// w1 runs W1: Set then drain, at each size, against COPY and a
// hand-written drain loop.
func (b *bench) w1(ctx context.Context) error {
	var libRef, floorRef float64 // drain rates at the first size
	for i, n := range b.size.w1 {
		t := newTable("W1: Set %s events (batches of %s), then drain with a no-op handler", group(int64(n)), group(setBatch))

		// Library: Set, settle, drain.
		if err := b.reset(ctx, b.lib); err != nil {
			return err
		}
		resetPeakRSS()
		setD, err := b.libSet(ctx, n)
		if err != nil {
			return fmt.Errorf("library set: %w", err)
		}
		if err := b.settle(ctx, b.lib); err != nil {
			return err
		}
		cpu := b.startCPU(ctx)
		drainD, err := b.libDrain(ctx, n)
		if err != nil {
			return fmt.Errorf("library drain: %w", err)
		}
		libGo, libPG := cpu()
		libRSS := peakRSS()
		done, attempts, err := tally(ctx, b.lib)
		if err != nil {
			return err
		}

		// Floor: COPY, settle, SQL loop.
		if err := b.reset(ctx, b.floor); err != nil {
			return err
		}
		resetPeakRSS()
		copyD, err := b.floorCopy(ctx, n)
		if err != nil {
			return err
		}
		if err := b.settle(ctx, b.floor); err != nil {
			return err
		}
		cpu = b.startCPU(ctx)
		fDrainD, drained, err := b.floorDrain(ctx)
		if err != nil {
			return fmt.Errorf("floor drain: %w", err)
		}
		floorGo, floorPG := cpu()
		floorRSS := peakRSS()
		if drained != n {
			return fmt.Errorf("floor drain: drained %d rows, want %d", drained, n)
		}

		wl := fmt.Sprintf("W1 %s", group(int64(n)))
		setR, copyR := rate(n, setD), rate(n, copyD)
		t.add("Set (events/s)", fmtRate(setR), fmtRate(copyR)+" COPY", fmtRatio(setR/copyR), ">= 0.80x floor",
			b.check(wl, "Set >= 0.80x COPY", fmtRatio(setR/copyR), setR >= 0.8*copyR))
		libR, floorR := rate(n, drainD), rate(n, fDrainD)
		t.add("drain claim->done (events/s)", fmtRate(libR), fmtRate(floorR)+" SQL loop", fmtRatio(libR/floorR), ">= 0.80x floor",
			b.check(wl, "drain >= 0.80x SQL loop", fmtRatio(libR/floorR), libR >= 0.8*floorR))
		totR, fTotR := rate(n, setD+drainD), rate(n, copyD+fDrainD)
		t.add("total Set+drain (events/s)", fmtRate(totR), fmtRate(fTotR), fmtRatio(totR/fTotR), "", "")
		t.add("phase times", fmtSecs(setD)+" + "+fmtSecs(drainD), fmtSecs(copyD)+" + "+fmtSecs(fDrainD), "", "", "")
		t.add("drain CPU, Go + PostgreSQL", libGo+" + "+libPG, floorGo+" + "+floorPG, "", "", "")
		if i == 0 {
			libRef, floorRef = libR, floorR
		} else {
			ratio := libR / libRef
			t.add(fmt.Sprintf("drain rate / %s drain rate", group(int64(b.size.w1[0]))), fmtRatio(ratio), fmtRatio(floorR/floorRef),
				"", ">= 0.80 (falls <= 20 %)", b.check(wl, "drain rate >= 0.80x 20k rate", fmtRatio(ratio), ratio >= 0.8))
		}
		rssTarget, rssResult := "<= 64 MiB at 1,000,000", "-"
		if n >= 1_000_000 {
			rssResult = b.check(wl, "peak RSS <= 64 MiB", fmtMiB(libRSS), libRSS <= 64<<20)
		}
		t.add("peak RSS, Go process", fmtMiB(libRSS), fmtMiB(floorRSS), fmtRatio(float64(libRSS)/float64(floorRSS)), rssTarget, rssResult)
		t.note("library: %d rows done, sum(attempts) = %d (want %d and %d)", done, attempts, n, n)
		t.note("drain is timed from Inbox.Start (default options: batch %d, concurrency %d) until no row is unfinished;",
			inbox.DefaultBatchSize, inbox.DefaultConcurrency)
		t.note("the floor drains on one connection: claim 500 (MATERIALIZED CTE, SKIP LOCKED) -> no-op per row -> one UPDATE to done")
		t.note("Set and COPY times are the time inside the calls; generating records is not timed")
		if done != int64(n) || attempts != int64(n) {
			b.exitCode = 1
			t.note("ERROR: library left %d done rows with %d attempts for %d events", done, attempts, n)
		}
		b.print(t)
	}
	if len(b.size.w1) == 1 {
		b.printf("  note: -size %s runs W1 at %s events only; -size full adds 100,000 and 1,000,000\n", b.size.name, group(int64(b.size.w1[0])))
	}
	return nil
}

// w1b runs W1b: one Set per event, each its own transaction, interleaved
// with the floor's one INSERT per transaction so both see the same server.
func (b *bench) w1b(ctx context.Context) error {
	n := b.size.w1b
	if err := b.reset(ctx, b.lib); err != nil {
		return err
	}
	if err := b.reset(ctx, b.floor); err != nil {
		return err
	}
	ib, err := b.newInbox(b.lib, noop)
	if err != nil {
		return err
	}
	c := ib.Client()
	const warmup = 20
	libD := make([]time.Duration, 0, n)
	floorD := make([]time.Duration, 0, n)
	resetPeakRSS()
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
	rss := peakRSS()
	l, f := summarise(libD), summarise(floorD)
	t := newTable("W1b: %s sequential Sets of one event, each its own transaction", group(int64(n)))
	ratio := float64(l.mean) / float64(f.mean)
	t.add("mean per Set", fmtMs(l.mean), fmtMs(f.mean)+" INSERT", fmtRatio(ratio), "<= 1.20x floor",
		b.check("W1b", "mean Set <= 1.20x INSERT", fmtRatio(ratio), ratio <= 1.2))
	t.add("p50", fmtMs(l.p50), fmtMs(f.p50), fmtRatio(float64(l.p50)/float64(f.p50)), "", "")
	t.add("p99", fmtMs(l.p99), fmtMs(f.p99), fmtRatio(float64(l.p99)/float64(f.p99)), "", "")
	t.add("peak RSS, Go process (both)", fmtMiB(rss), "", "", "", "")
	t.note("floor: INSERT ... ON CONFLICT DO NOTHING, autocommit; library Set and floor INSERT alternate, after %d warm-up pairs", warmup)
	t.note("library Set runs with notifications on (the default); no worker is running")
	b.print(t)
	return nil
}
