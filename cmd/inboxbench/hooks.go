package main

import (
	"context"
	"fmt"

	"github.com/pginbox/inbox"
)

// Hooks: what hooks cost the hot path. The same Set-then-drain as W1,
// once with no hooks and once with a no-op function on every hook and a
// propagator that stores nothing, taking turns.

// noopHooks are hooks that do nothing: what remains is the cost of
// building the events and calling the functions.
var noopHooks = []inbox.Option{
	inbox.WithHooks(inbox.Hooks{
		OnSet:       func(context.Context, inbox.SetEvent) {},
		OnClaim:     func(inbox.ClaimEvent) {},
		OnRun:       func(context.Context, inbox.RunEvent) {},
		OnWrite:     func(inbox.WriteEvent) {},
		OnDead:      func(inbox.DeadRecord) {},
		OnRetention: func(inbox.RetentionEvent) {},
	}),
	inbox.WithPropagator(emptyPropagator{}),
}

// emptyPropagator finds no trace to store.
type emptyPropagator struct{}

func (emptyPropagator) Inject(context.Context) string { return "" }

func (emptyPropagator) Extract(ctx context.Context, _ string) context.Context { return ctx }

func (b *bench) hooks(ctx context.Context) error {
	n := b.size.w1[min(1, len(b.size.w1)-1)]
	var plain, hooked []w1Run
	for rep := range b.reps {
		// Turns alternate (without first, then with first), so that what a
		// run leaves behind (dead tuples, WAL to flush) weighs on both.
		for _, with := range []bool{rep%2 == 1, rep%2 == 0} {
			b.libOpts = nil
			if with {
				b.libOpts = noopHooks
			}
			run, done, _, err := b.w1Library(ctx, n)
			b.libOpts = nil
			if err != nil {
				return err
			}
			if done != int64(n) {
				return fmt.Errorf("%d rows done, want %d", done, n)
			}
			if with {
				hooked = append(hooked, run)
			} else {
				plain = append(plain, run)
			}
		}
	}
	t := newTable("Hooks: W1 at %s events, without hooks and with a no-op on every hook and a propagator; median (min–max) of %d repetitions",
		group(int64(n)), b.reps)
	loadR := func(r w1Run) float64 { return r.loadRate(n) }
	drainR := func(r w1Run) float64 { return r.drainRate(n) }
	total := func(r w1Run) float64 { _, _, tot := r.cpu.perEvent(n); return tot }
	goCPU := func(r w1Run) float64 { g, _, _ := r.cpu.perEvent(n); return g }
	hs, ps := spreadBy(hooked, loadR), spreadBy(plain, loadR)
	t.add("Set (events/s)", rateCell(hs), rateCell(ps)+" no hooks", fmtRatio(hs.over(ps)), "", "")
	hd, pd := spreadBy(hooked, drainR), spreadBy(plain, drainR)
	x := hd.over(pd)
	t.add("drain (events/s)", rateCell(hd), rateCell(pd)+" no hooks", fmtRatio(x), ">= 0.95x no hooks",
		b.check("Hooks", "drain with no-op hooks >= 0.95x without", fmtRatio(x), x >= 0.95))
	hc, pc := spreadBy(hooked, total), spreadBy(plain, total)
	t.add("drain CPU per event, Go + PostgreSQL", usCell(hc), usCell(pc)+" no hooks", fmtRatio(hc.over(pc)), "", "")
	hg, pg := spreadBy(hooked, goCPU), spreadBy(plain, goCPU)
	t.add("  of which Go", usCell(hg), usCell(pg)+" no hooks", fmtRatio(hg.over(pg)), "", "")
	t.note("runs take turns, in alternating order; each Sets %s events in batches of %s, settles, drains", group(int64(n)), group(setBatch))
	t.note("an Inbox without hooks pays a nil check per event; the cost of hooks that do real work (metrics, spans)")
	t.note("is theirs: see the otel module's benchmark")
	b.print(t)
	return nil
}
