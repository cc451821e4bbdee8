package main

import (
	"context"
	"fmt"
	"math"
	"sync/atomic"
	"time"

	"github.com/pginbox/inbox"
)

const w2Interval = 20 * time.Millisecond

// w2 runs W2: an idle worker with default options receives events 20 ms
// apart; latency from Set returning to the handler starting. Library and
// floor runs alternate, b.reps times each.
func (b *bench) w2(ctx context.Context) error {
	n := b.size.w2
	var lib, floor, claimFloor []latencies
	var libAll, floorAll, claimAll []time.Duration
	var rss int64
	for range b.reps {
		l, r, err := b.w2Library(ctx, n)
		if err != nil {
			return err
		}
		rss = max(rss, r)
		if err := b.reset(ctx, b.floor); err != nil {
			return err
		}
		f, err := b.floorNotify(ctx, n, w2Interval, false)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		if err := b.reset(ctx, b.floor); err != nil {
			return err
		}
		c, err := b.floorNotify(ctx, n, w2Interval, true)
		if err != nil {
			return fmt.Errorf("floor with a claim: %w", err)
		}
		lib, floor, claimFloor = append(lib, summarise(l)), append(floor, summarise(f)), append(claimFloor, summarise(c))
		libAll, floorAll, claimAll = append(libAll, l...), append(floorAll, f...), append(claimAll, c...)
	}
	by := func(runs []latencies, f func(latencies) time.Duration) spread {
		return spreadBy(runs, func(l latencies) float64 { return ms(f(l)) })
	}
	p50 := func(l latencies) time.Duration { return l.p50 }
	p99 := func(l latencies) time.Duration { return l.p99 }
	t := newTable("W2: idle worker (default options), %d events %v apart: Set returned -> handler started; median (min–max) of %d repetitions",
		n, w2Interval, b.reps)
	l, f := by(lib, p50), by(floor, p50)
	t.add("p50", msCell(l), msCell(f), fmtRatio(l.over(f)), "<= 1 ms",
		b.check("W2", "p50 <= 1 ms", fmt.Sprintf("%.3f ms", l.med), l.med <= 1))
	c := by(claimFloor, p50)
	t.add("  vs notify + claim floor", "", msCell(c), fmtRatio(l.over(c)), "", "")
	l, f = by(lib, p99), by(floor, p99)
	t.add("p99", msCell(l), msCell(f), fmtRatio(l.over(f)), "<= 2 ms",
		b.check("W2", "p99 <= 2 ms", fmt.Sprintf("%.3f ms", l.med), l.med <= 2))
	c = by(claimFloor, p99)
	t.add("  vs notify + claim floor", "", msCell(c), fmtRatio(l.over(c)), "", "")
	pl, pf, pc := summarise(libAll), summarise(floorAll), summarise(claimAll)
	t.add(fmt.Sprintf("p99 of all %d samples pooled", len(libAll)), fmtMs(pl.p99), fmtMs(pf.p99), fmtRatio(float64(pl.p99)/float64(pf.p99)), "", "")
	t.add("  vs notify + claim floor", "", fmtMs(pc.p99), fmtRatio(float64(pl.p99)/float64(pc.p99)), "", "")
	t.add("max of all samples", fmtMs(pl.max), fmtMs(pf.max), fmtRatio(float64(pl.max)/float64(pf.max)), "", "")
	t.add("min of all samples", fmtMs(pl.min), fmtMs(pf.min), "", "", "")
	t.add("peak RSS, Go process (max of runs)", fmtMiB(rss), "", "", "", "")
	t.note("p50 and p99 are taken per repetition of %d events, then their median (min–max) across repetitions; the targets", n)
	t.note("are checked on those medians; the pooled p99 puts every repetition's samples together (with %d samples a", n)
	t.note("repetition's p99 is its %s sample)", largest(n-int(math.Ceil(0.99*float64(n)))+1))
	t.note("floor: a connection blocked in WaitForNotification; a writer INSERTs a row and NOTIFYs in one transaction;")
	t.note("latency from the writer's Commit returning to the listener waking (negative: woken before Commit returned)")
	t.note("notify + claim floor: the same, to the listener's one-statement claim of the row (same-shape table,")
	t.note("synchronous_commit off) returning it; library, floor and notify + claim floor runs take turns")
	b.print(t)
	return nil
}

// largest names the k-th largest: "largest", "2nd-largest", ...
func largest(k int) string {
	if k <= 1 {
		return "largest"
	}
	suffix := "th"
	switch {
	case k%100 >= 11 && k%100 <= 13:
	case k%10 == 1:
		suffix = "st"
	case k%10 == 2:
		suffix = "nd"
	case k%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprintf("%d%s-largest", k, suffix)
}

// w2Library is one library run of W2: it returns each event's latency
// and the peak RSS.
func (b *bench) w2Library(ctx context.Context, n int) ([]time.Duration, int64, error) {
	if err := b.reset(ctx, b.lib); err != nil {
		return nil, 0, err
	}
	base := time.Now()
	started := make([]atomic.Int64, n)
	c := newCounter(n)
	count := c.handler()
	h := inbox.HandlerFunc(handlerKey, func(ctx context.Context, p []byte) error {
		at := time.Since(base)
		if seq := seqOf(p); seq >= 0 && seq < n {
			started[seq].CompareAndSwap(0, int64(at))
		}
		return count.Process(ctx, p)
	})
	ib, err := b.startListening(ctx, h)
	if err != nil {
		return nil, 0, err
	}
	defer stopInbox(ib)
	client := ib.Client()
	set := make([]time.Duration, n)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * w2Interval)))
		rec := records(i, 1)[0]
		if err := client.Set(ctx, rec); err != nil {
			return nil, 0, err
		}
		set[i] = time.Since(base)
	}
	if err := c.wait(ctx, 30*time.Second); err != nil {
		return nil, 0, err
	}
	rss := peakRSS()
	stopInbox(ib)
	lat := make([]time.Duration, n)
	for i := range lat {
		lat[i] = time.Duration(started[i].Load()) - set[i]
	}
	return lat, rss, nil
}

// startListening starts an Inbox on the library's schema with handler h,
// resetting the peak RSS first, and returns once its worker listens for
// notifications.
func (b *bench) startListening(ctx context.Context, h inbox.Handler) (*inbox.Inbox, error) {
	ib, err := b.newInbox(b.lib, h)
	if err != nil {
		return nil, err
	}
	resetPeakRSS()
	if err := ib.Start(ctx); err != nil {
		return nil, err
	}
	if err := b.waitListening(ctx); err != nil {
		stopInbox(ib)
		return nil, err
	}
	return ib, nil
}
