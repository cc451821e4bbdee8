package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/pginbox/inbox"
)

// The ranges of event numbers must not overlap (ids would collide), must
// hold the rows asked for, and the failed and dead ranges must start on a
// cycle of types × patterns, so that DeadGroups finds every (pattern,
// pair) group with as many rows.
func TestOpsLayout(t *testing.T) {
	for _, rows := range []int{100_000, 10_000_000} {
		l := newOpsLayout(rows)
		keys := int64(len(opsHandlerKeys))
		cycle := int64(len(opsEventTypes) * len(opsFailures))
		ranges := []opsRange{l.done, l.pending, l.failed, l.dead, l.opsBurstRange(0), l.opsBurstRange(1), l.opsBurstRange(5)}
		for i := 1; i < len(ranges); i++ {
			if ranges[i].lo <= ranges[i-1].hi {
				t.Fatalf("%d rows: range %d %v overlaps %v", rows, i, ranges[i], ranges[i-1])
			}
		}
		for _, c := range []struct {
			r    opsRange
			rows int64
		}{{l.done, int64(rows)}, {l.pending, opsPending}, {l.failed, opsFailed}, {l.dead, opsDead}, {l.opsBurstRange(3), opsBurstRows * keys}} {
			if c.r.events()*keys != c.rows {
				t.Errorf("%d rows: range %v holds %d rows, want %d", rows, c.r, c.r.events()*keys, c.rows)
			}
		}
		if l.dead.lo%cycle != 0 || l.failed.lo%cycle != 0 || l.dead.events()%cycle != 0 {
			t.Errorf("%d rows: failed %v, dead %v not aligned on %d", rows, l.failed, l.dead, cycle)
		}
	}
}

// The burst's statements cover its range exactly, each of one pair, every
// pair as often.
func TestOpsBurst(t *testing.T) {
	l := newOpsLayout(100_000)
	pairs := map[string]int{}
	next := l.opsBurstRange(2).lo
	for j := range opsBurstRows / opsBurstBatch {
		r, et, key := l.opsBurstStatement(2, j)
		if r.lo != next || r.events() != opsBurstBatch {
			t.Fatalf("statement %d: %v, want %d events from %d", j, r, opsBurstBatch, next)
		}
		next = r.hi + 1
		pairs[et+"/"+key]++
	}
	if next != l.opsBurstRange(2).hi+1 {
		t.Fatalf("statements end at %d, the burst at %d", next-1, l.opsBurstRange(2).hi)
	}
	want := opsBurstRows / opsBurstBatch / (len(opsEventTypes) * len(opsHandlerKeys))
	if len(pairs) != len(opsEventTypes)*len(opsHandlerKeys) {
		t.Fatalf("pairs: %v", pairs)
	}
	for p, n := range pairs {
		if n != want {
			t.Errorf("pair %s: %d statements, want %d", p, n, want)
		}
	}
}

func TestStatsCountsDiff(t *testing.T) {
	hs := []inbox.HandlerStats{
		{EventType: "a", HandlerKey: "k", Pending: 3, Done: 10},
		{EventType: "b", HandlerKey: "k", Dead: 1},
		{EventType: "c", HandlerKey: "k"}, // throughput only: no counts
	}
	got := statsCounts(hs)
	want := opsCounts{
		{"a", "k", inbox.Null}: 3,
		{"a", "k", inbox.Done}: 10,
		{"b", "k", inbox.Dead}: 1,
	}
	if d := diffCounts(got, want); d != nil {
		t.Fatalf("equal counts differ: %v", d)
	}
	if got.total() != 14 {
		t.Fatalf("total = %d", got.total())
	}
	want[opsCountKey{"a", "k", inbox.Done}] = 11
	want[opsCountKey{"c", "k", inbox.Failed}] = 2
	delete(want, opsCountKey{"b", "k", inbox.Dead})
	d := diffCounts(got, want)
	if !slices.Equal(d, []string{"a/k done: 10, want 11", "b/k dead: 1, want 0", "c/k failed: 0, want 2"}) {
		t.Fatalf("diff = %q", d)
	}
}

// The insert statement names a failure and a type per pattern.
func TestOpsInsertSQL(t *testing.T) {
	s := opsInsertSQL()
	for i, f := range opsFailures {
		if !strings.Contains(s, f.errSQL) || !strings.Contains(s, "'"+f.errType+"'") {
			t.Errorf("pattern %d missing", i)
		}
	}
	if strings.Contains(s, "%!") {
		t.Fatalf("bad format: %s", s)
	}
}

func TestFmtTinyRatio(t *testing.T) {
	for x, want := range map[float64]string{0.0042: "0.0042x (1/238)", 0.5: "0.50x", 1.27: "1.27x"} {
		if got := fmtTinyRatio(x); got != want {
			t.Errorf("fmtTinyRatio(%v) = %q, want %q", x, got, want)
		}
	}
}
