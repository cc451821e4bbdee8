package main

import (
	"reflect"
	"strings"
	"testing"
)

// explainAnalyzed is EXPLAIN (ANALYZE, BUFFERS) output of the floor's
// claim on a table without statistics, as PostgreSQL 15 prints it.
var explainAnalyzed = strings.Split(`Update on inbox_records r  (cost=195.69..235.89 rows=10 width=74) (actual time=7.120..9.016 rows=500 loops=1)
  Buffers: shared hit=6006 dirtied=12 written=12
  CTE c
    ->  Limit  (cost=195.42..195.55 rows=50 width=14) (actual time=5.001..5.402 rows=500 loops=1)
          Buffers: shared hit=402
          ->  LockRows  (cost=195.42..195.55 rows=50 width=14) (actual time=5.000..5.350 rows=500 loops=1)
                Buffers: shared hit=402
                ->  Sort  (cost=195.42..195.50 rows=50 width=14) (actual time=4.990..5.050 rows=500 loops=1)
                      Sort Key: inbox_records.due_at
                      Sort Method: top-N heapsort  Memory: 71kB
                      ->  Bitmap Heap Scan on inbox_records  (cost=4.67..194.71 rows=50 width=14) (actual time=0.410..3.010 rows=15000 loops=1)
                            Recheck Cond: (due_at <= now())
                            ->  Bitmap Index Scan on inbox_records_due_idx  (cost=0.00..4.66 rows=50 width=0) (actual time=0.390..0.390 rows=15000 loops=1)
                                  Index Cond: (due_at <= now())
  InitPlan 2 (returns $3)
    ->  CTE Scan on c  (cost=0.00..1.00 rows=50 width=6) (actual time=5.002..5.600 rows=500 loops=1)
          Buffers: shared hit=402
  ->  Tid Scan on inbox_records r  (cost=0.01..40.21 rows=10 width=74) (actual time=5.700..6.300 rows=500 loops=1)
        TID Cond: (ctid = ANY ($3))
        Buffers: shared hit=902
Planning:
  Buffers: shared hit=40
Planning Time: 0.412 ms
Execution Time: 9.651 ms`, "\n")

func TestPlanNodes(t *testing.T) {
	want := []string{
		"Update on inbox_records r",
		"[CTE c] Limit",
		"LockRows",
		"Sort",
		"Bitmap Heap Scan on inbox_records",
		"Bitmap Index Scan on inbox_records_due_idx",
		"[InitPlan 2 (returns $3)] CTE Scan on c",
		"Tid Scan on inbox_records r",
	}
	if got := planNodes(explainAnalyzed); !reflect.DeepEqual(got, want) {
		t.Fatalf("planNodes =\n%q\nwant\n%q", got, want)
	}
	if got := planNodes(nil); got != nil {
		t.Fatalf("planNodes(nil) = %q", got)
	}
}

func TestExplainTimes(t *testing.T) {
	p, e, err := explainTimes(explainAnalyzed)
	if err != nil || p != 0.412 || e != 9.651 {
		t.Fatalf("explainTimes = %v, %v, %v; want 0.412, 9.651, nil", p, e, err)
	}
	if _, _, err := explainTimes(explainAnalyzed[:3]); err == nil {
		t.Fatal("explainTimes accepted output without times")
	}
	if _, _, err := explainTimes([]string{"Planning Time: x ms", "Execution Time: 1 ms"}); err == nil {
		t.Fatal("explainTimes accepted a malformed time")
	}
}

func TestBuffersOf(t *testing.T) {
	if got, want := buffersOf(explainAnalyzed, ""), "shared hit=6006 dirtied=12 written=12"; got != want {
		t.Fatalf("top buffers = %q, want %q", got, want)
	}
	if got, want := buffersOf(explainAnalyzed, "CTE c"), "shared hit=402"; got != want {
		t.Fatalf("CTE buffers = %q, want %q", got, want)
	}
	if got := buffersOf(explainAnalyzed, "CTE nope"); got != "n/a" {
		t.Fatalf("buffers of a missing node = %q", got)
	}
}

func TestWithClause(t *testing.T) {
	got, err := withClause([]string{"fillfactor=80", "autovacuum_vacuum_scale_factor=0.02"})
	if err != nil || got != " WITH (fillfactor=80, autovacuum_vacuum_scale_factor=0.02)" {
		t.Fatalf("withClause = %q, %v", got, err)
	}
	if got, err := withClause(nil); err != nil || got != "" {
		t.Fatalf("withClause(nil) = %q, %v", got, err)
	}
	for _, bad := range []string{"fillfactor=80); DROP TABLE x; --", "fillfactor = 80", "toast.x=1"} {
		if _, err := withClause([]string{bad}); err == nil {
			t.Errorf("withClause accepted %q", bad)
		}
	}
}
