package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// Each Set batch must hold events of many keys, every key must get events,
// and the key of an event must not change from one call to the next.
func TestOrderKeyOf(t *testing.T) {
	used := map[int]int{}
	for seq := range 20_000 {
		k := orderKeyOf(seq)
		if k < 0 || k >= orderedKeys {
			t.Fatalf("orderKeyOf(%d) = %d, out of range", seq, k)
		}
		if k != orderKeyOf(seq) {
			t.Fatalf("orderKeyOf(%d) is not deterministic", seq)
		}
		used[k]++
	}
	if len(used) != orderedKeys {
		t.Fatalf("20,000 events use %d keys, want %d", len(used), orderedKeys)
	}
	for k, n := range used {
		if n < 5 || n > 50 {
			t.Errorf("key %d has %d of 20,000 events: the hash is lopsided", k, n)
		}
	}
	if n := orderedBatchKeys(); n < orderedKeys/2 {
		t.Fatalf("a batch of %d events holds %d keys, want many", setBatch, n)
	}
}

func TestOrderedRecords(t *testing.T) {
	recs := orderedRecords(3_000, 50, true)
	for i, r := range recs {
		seq := 3_000 + i
		if got := seqOf(r.Payload()); got != seq {
			t.Fatalf("record %d: payload seq %d, want %d", i, got, seq)
		}
		if want := orderKeyName(orderKeyOf(seq)); r.OrderingKey() != want {
			t.Fatalf("record %d: key %q, want %q", i, r.OrderingKey(), want)
		}
		if !strings.HasPrefix(r.OrderingKey(), orderedKeyName) || strings.HasPrefix(r.OrderingKey(), orderedKeptKey) {
			t.Fatalf("record %d: key %q collides with the kept rows' keys", i, r.OrderingKey())
		}
	}
	for _, r := range orderedRecords(0, 10, false) {
		if r.OrderingKey() != "" {
			t.Fatalf("unordered record has key %q", r.OrderingKey())
		}
	}
}

// The check counts a run that comes after a later event of its key, and
// only that; it closes done at the target.
func TestOrderCheck(t *testing.T) {
	ctx := context.Background()
	c := newOrderCheck(4)
	// Two keys' events in order, interleaved.
	var a, b []int
	for seq := 0; len(a) < 2 || len(b) < 2; seq++ {
		switch k := orderKeyOf(seq); {
		case k == orderKeyOf(0) && len(a) < 2:
			a = append(a, seq)
		case k != orderKeyOf(0) && len(b) < 2 && (len(b) == 0 || k == orderKeyOf(b[0])):
			b = append(b, seq)
		}
	}
	for _, seq := range []int{a[0], b[0], a[1], b[1]} {
		_ = c.run(ctx, payload(seq))
	}
	if v := c.violations.Load(); v != 0 {
		t.Fatalf("in-order runs: %d violations", v)
	}
	if err := c.wait(ctx, time.Second); err != nil {
		t.Fatalf("wait after the target: %v", err)
	}
	_ = c.run(ctx, payload(a[0])) // again, after a[1]
	if v := c.violations.Load(); v != 1 {
		t.Fatalf("a run after a later event of its key: %d violations, want 1", v)
	}
}

// For every kept key: its done rows, then exactly one dead row, then its
// waiting rows, in seq (= event number) order.
func TestKeptLayout(t *testing.T) {
	for _, c := range []struct{ done, waiting int }{{100_000, 10_000}, {1_000_000, 100_000}, {12_345, 999}} {
		l := newKeptLayout(c.done, c.waiting)
		if l.done.lo != 0 || l.done.events() != int64(c.done) || l.waiting.events() != int64(c.waiting) {
			t.Fatalf("%+v: layout %+v", c, l)
		}
		if l.heads.lo <= l.done.hi || l.waiting.lo <= l.heads.hi {
			t.Fatalf("%+v: ranges overlap or are out of order: %+v", c, l)
		}
		if l.heads.lo%orderedKeys != 0 || l.heads.events() != orderedKeys {
			t.Fatalf("%+v: heads %v: want one per key", c, l.heads)
		}
	}
}

func TestKeptInsertSQL(t *testing.T) {
	if strings.Contains(keptInsertSQL, "%!") || !strings.Contains(keptInsertSQL, "'"+orderedKeptKey+"'") {
		t.Fatalf("bad statement: %s", keptInsertSQL)
	}
}

func TestOrderedRunRate(t *testing.T) {
	r := orderedRun{ran: 500, drain: 2 * time.Second, capped: true}
	if got := r.rate(); got != 250 {
		t.Fatalf("rate = %v, want 250", got)
	}
}
