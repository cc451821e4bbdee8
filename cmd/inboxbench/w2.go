package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/pginbox/inbox"
)

const w2Interval = 20 * time.Millisecond

// w2 runs W2: an idle worker with default options receives events 20 ms
// apart; latency from Set returning to the handler starting.
func (b *bench) w2(ctx context.Context) error {
	n := b.size.w2
	if err := b.reset(ctx, b.lib); err != nil {
		return err
	}
	if err := b.reset(ctx, b.floor); err != nil {
		return err
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
		return err
	}
	defer stopInbox(ib)
	client := ib.Client()
	set := make([]time.Duration, n)
	start := time.Now()
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * w2Interval)))
		rec := records(i, 1)[0]
		if err := client.Set(ctx, rec); err != nil {
			return err
		}
		set[i] = time.Since(base)
	}
	if err := c.wait(ctx, 30*time.Second); err != nil {
		return err
	}
	rss := peakRSS()
	stopInbox(ib)
	lib := make([]time.Duration, n)
	for i := range lib {
		lib[i] = time.Duration(started[i].Load()) - set[i]
	}

	floorLat, err := b.floorNotify(ctx, n, w2Interval)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}
	l, f := summarise(lib), summarise(floorLat)
	t := newTable("W2: idle worker (default options), %d events %v apart: Set returned -> handler started", n, w2Interval)
	t.add("p50", fmtMs(l.p50), fmtMs(f.p50), fmtRatio(float64(l.p50)/float64(f.p50)), "<= 1 ms",
		b.check("W2", "p50 <= 1 ms", fmtMs(l.p50), l.p50 <= time.Millisecond))
	t.add("p99", fmtMs(l.p99), fmtMs(f.p99), fmtRatio(float64(l.p99)/float64(f.p99)), "<= 2 ms",
		b.check("W2", "p99 <= 2 ms", fmtMs(l.p99), l.p99 <= 2*time.Millisecond))
	t.add("max", fmtMs(l.max), fmtMs(f.max), fmtRatio(float64(l.max)/float64(f.max)), "", "")
	t.add("min", fmtMs(l.min), fmtMs(f.min), "", "", "")
	t.add("peak RSS, Go process", fmtMiB(rss), "", "", "", "")
	t.note("floor: a connection blocked in WaitForNotification; a writer INSERTs a row and NOTIFYs in one transaction;")
	t.note("latency from the writer's Commit returning to the listener waking (negative: woken before Commit returned)")
	b.print(t)
	return nil
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
