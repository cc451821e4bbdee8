package inbox

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
)

// The held-row state machine, without a database.

func heldFixture(concurrency, capacity int, limits ...int) (*held, []*route) {
	var routes []*route
	for i, lim := range limits {
		routes = append(routes, &route{eventType: "t", key: string(rune('a' + i)), timeout: time.Minute,
			concurrency: lim, index: i})
	}
	return newHeld(routes, concurrency, capacity, time.Second), routes
}

func jobsFor(r *route, n, attempt int) []*job {
	out := make([]*job, n)
	for i := range out {
		out[i] = &job{rowID: rowID{uuid.New(), r.key}, route: r, attempt: attempt, claim: attempt, cancel: func(error) {}}
	}
	return out
}

func TestHeldPlan(t *testing.T) {
	h, routes := heldFixture(4, 10, 0, 2)
	p, ok := h.plan(8, 5)
	if !ok || p.n != 8 || !slices.Equal(p.caps, []int32{8, 4}) {
		t.Fatalf("empty: plan %+v, %v; want 8 rows, caps 8 and 2×2", p, ok)
	}
	h.add(jobsFor(routes[1], 3, 1))
	p, ok = h.plan(8, 5)
	if !ok || p.n != 7 || !slices.Equal(p.keys, []string{"a", "b"}) || !slices.Equal(p.caps, []int32{7, 1}) {
		t.Fatalf("3 limited held: plan %+v, %v; want 7 rows, the limited route capped at 1", p, ok)
	}
	h.add(jobsFor(routes[1], 1, 1))
	p, ok = h.plan(8, 5)
	if !ok || !slices.Equal(p.keys, []string{"a"}) {
		t.Fatalf("limited route full: plan %+v, %v; want only the free route", p, ok)
	}
	h.add(jobsFor(routes[0], 2, 1))
	if p, ok := h.plan(8, 5); ok {
		t.Fatalf("4 of 10 free, min claim 5: plan %+v, want none", p)
	}
}

func TestHeldStartRespectsLimitsAndTakesTurns(t *testing.T) {
	h, routes := heldFixture(3, 100, 0, 1)
	now := time.Now()
	h.add(jobsFor(routes[0], 5, 1))
	h.add(jobsFor(routes[1], 5, 1))
	var keys []string
	for j := h.start(now); j != nil; j = h.start(now) {
		keys = append(keys, j.key)
		if j.state != running || !j.deadline.Equal(now.Add(time.Minute+time.Second)) {
			t.Fatalf("started job: state %d, deadline %v", j.state, j.deadline)
		}
	}
	// Three runners; route b allows one at a time; routes take turns.
	if got := slices.Sorted(slices.Values(keys)); !slices.Equal(got, []string{"a", "a", "b"}) {
		t.Fatalf("started %v, want two of a and one of b", keys)
	}
}

func TestHeldLifecycle(t *testing.T) {
	h, routes := heldFixture(10, 100, 0)
	now := time.Now()
	jobs := jobsFor(routes[0], 4, 2)
	h.add(jobs)
	a, b := h.start(now), h.start(now)
	h.finish(a, result{kind: resDone})
	if a.state != returned || len(h.renewals(now)) != 4 {
		t.Fatalf("after one result: state %d, %d renewals; want returned, all 4 renewed", a.state, len(h.renewals(now)))
	}
	batch := h.takeWrites()
	if len(batch) != 1 || batch[0] != a || a.state != writing {
		t.Fatalf("takeWrites = %v", batch)
	}
	if more := h.takeWrites(); len(more) != 0 {
		t.Fatalf("second takeWrites = %v, want none", more)
	}
	// A running job past its deadline is not renewed.
	if got := h.renewals(b.deadline.Add(time.Millisecond)); len(got) != 3 || slices.Contains(got, b) {
		t.Fatalf("renewals after b's deadline = %d jobs (b included: %v), want 3 without b", len(got), slices.Contains(got, b))
	}
	h.written(batch)
	if _, ok := h.jobs[a.rowID]; ok || len(h.jobs) != 3 {
		t.Fatalf("written job still held; %d held", len(h.jobs))
	}
	// Stop: queued jobs are handed back, the running one finishes.
	h.release()
	back := h.takeWrites()
	if len(back) != 2 || back[0].res.kind != resReleased {
		t.Fatalf("released %d jobs (%+v), want the 2 queued", len(back), back)
	}
	if h.start(now) != nil {
		t.Fatal("a job started after release")
	}
	h.written(back)
	h.finish(b, result{kind: resFailed})
	h.written(h.takeWrites())
	if !h.idle() || h.runningAll != 0 || h.queuedOrRun[0] != 0 {
		t.Fatalf("after everything: %d held, %d running, %d queued or running", len(h.jobs), h.runningAll, h.queuedOrRun[0])
	}
}

func TestHeldLose(t *testing.T) {
	h, routes := heldFixture(2, 100, 0)
	now := time.Now()
	jobs := jobsFor(routes[0], 5, 3)
	h.add(jobs)
	run1, run2 := h.start(now), h.start(now)
	h.finish(run2, result{kind: resDone})
	writingJob := jobs[0]
	if writingJob != run1 && writingJob != run2 {
		t.Fatal("fixture: the first jobs start first")
	}
	var cancelled []*job
	run1.cancel = func(error) { cancelled = append(cancelled, run1) }
	batch := h.takeWrites() // run2 is now being written
	queuedJob := jobs[2]
	stale := renewItem{jobs[3].rowID, jobs[3].claim - 1} // an older attempt of a held row
	cancel, n := h.lose([]renewItem{
		{run1.rowID, run1.claim}, {run2.rowID, run2.claim}, {queuedJob.rowID, queuedJob.claim}, stale,
		{rowID{uuid.New(), "a"}, 1}, // not held at all
	})
	if n != 2 || len(cancel) != 1 || cancel[0] != run1 || run1.state != lost {
		t.Fatalf("lose: %d lost, cancel %v; want the running and the queued job lost, the running one cancelled", n, cancel)
	}
	if _, ok := h.jobs[queuedJob.rowID]; ok {
		t.Fatal("a lost queued job is still held")
	}
	if run2.state != writing || jobs[3].state != queued {
		t.Fatalf("a job being written (%d) or held at another attempt (%d) was touched", run2.state, jobs[3].state)
	}
	if got := h.renewals(now); slices.Contains(got, run1) {
		t.Fatal("a lost job is renewed")
	}
	// The lost job's result is dropped, not written.
	if h.finish(run1, result{kind: resDone}) {
		t.Fatal("a lost job's result is to be written")
	}
	if _, ok := h.jobs[run1.rowID]; ok {
		t.Fatal("a lost job is still held after its handler returned")
	}
	h.written(batch)
	// Leases not renewed: the two queued rows' leases (zero here, as
	// never renewed) end before any deadline.
	jobs[3].leaseUntil = now.Add(time.Hour) // renewed: kept
	h.renewed([]renewedRow{{renewItem{jobs[3].rowID, jobs[3].claim}, jobs[3].ctid}}, now.Add(time.Hour), now.Add(time.Hour))
	cancel, n, _ = h.expire(now.Add(time.Minute), time.Time{})
	if n != 1 || len(cancel) != 0 || len(h.jobs) != 1 || h.jobs[jobs[3].rowID] != jobs[3] {
		t.Fatalf("expire: %d lost, %d cancelled, %d still held; want the unrenewed queued row lost, the renewed kept", n, len(cancel), len(h.jobs))
	}
}

// A row claimed again while its earlier job is still being written, or
// still running after its lease ran out, belongs to the new job: the old
// one is detached, cancelled if running, and forgotten when it is over,
// without taking the new job with it.
func TestHeldClaimedAgain(t *testing.T) {
	h, routes := heldFixture(4, 100, 0)
	now := time.Now()
	first := jobsFor(routes[0], 1, 1)[0]
	h.add([]*job{first})
	h.start(now)
	h.finish(first, result{kind: resRetryAfter})
	batch := h.takeWrites() // written meanwhile, and due again at once
	again := &job{rowID: first.rowID, route: routes[0], attempt: 1, claim: 2, cancel: func(error) {}}
	if cancel := h.add([]*job{again}); len(cancel) != 0 {
		t.Fatalf("a job being written was cancelled: %v", cancel)
	}
	h.written(batch)
	if h.jobs[again.rowID] != again || h.idle() || len(h.renewals(now)) != 1 {
		t.Fatalf("the write of the earlier claim took the new job with it: held %v, idle %v", h.jobs, h.idle())
	}

	// The new job runs; its lease runs out and this worker rescues the row.
	h.start(now)
	rescued := &job{rowID: again.rowID, route: routes[0], attempt: 2, claim: 3, cancel: func(error) {}}
	cancel := h.add([]*job{rescued})
	if len(cancel) != 1 || cancel[0] != again || again.state != lost {
		t.Fatalf("add while the earlier job runs: cancel %v, state %d; want the earlier job cancelled", cancel, again.state)
	}
	if h.finish(again, result{kind: resDone}) {
		t.Fatal("the detached job's result is to be written")
	}
	if h.jobs[rescued.rowID] != rescued || len(h.detached) != 0 || h.runningAll != 0 || h.queuedOrRun[0] != 1 {
		t.Fatalf("after the detached job returned: held %v, detached %d, running %d, queued or running %d",
			h.jobs, len(h.detached), h.runningAll, h.queuedOrRun[0])
	}
}

// Leases that end too soon are given up for queued and running rows only:
// a returned row's result is still written (its write is guarded by the
// claim), and a row that an unanswered renewal would leave long enough
// waits for it.
func TestHeldExpire(t *testing.T) {
	h, routes := heldFixture(2, 100, 0)
	now := time.Now()
	jobs := jobsFor(routes[0], 5, 1)
	h.add(jobs)
	running, returning := h.start(now), h.start(now)
	h.finish(returning, result{kind: resDone})
	var waiting []*job
	for _, j := range jobs {
		if j.state == queued {
			waiting = append(waiting, j)
		}
	}
	if len(waiting) != 3 {
		t.Fatalf("%d queued jobs, want 3", len(waiting))
	}
	soon, later := now.Add(time.Second), now.Add(3*time.Second)
	running.leaseUntil, returning.leaseUntil = soon, soon
	waiting[0].leaseUntil, waiting[1].leaseUntil, waiting[2].leaseUntil = soon, later, now.Add(time.Hour)
	// By when the database has ended the leases: the latest of the lost
	// rows' bounds is when to look for them again.
	running.leaseEndsBy, waiting[0].leaseEndsBy = soon.Add(time.Second), soon.Add(time.Millisecond)
	by, wait := now.Add(5*time.Second), now.Add(2*time.Second)
	cancel, n, last := h.expire(by, wait)
	if n != 2 || !slices.Equal(cancel, []*job{running}) || running.state != lost {
		t.Fatalf("expire with a renewal under way: %d lost, cancelled %d; want the running and one queued row lost, the running one cancelled", n, len(cancel))
	}
	if !last.Equal(soon.Add(time.Second)) {
		t.Fatalf("expire: the lost leases have ended by %v, want %v", last, soon.Add(time.Second))
	}
	if _, ok := h.jobs[waiting[0].rowID]; ok {
		t.Fatal("a queued row whose lease ends before the renewal could save it is still held")
	}
	if _, ok := h.jobs[waiting[1].rowID]; !ok {
		t.Fatal("a queued row that waits for the renewal was given up")
	}
	if returning.state != returned || !slices.Contains(h.takeWrites(), returning) {
		t.Fatal("a returned row with an ending lease is not written")
	}
	if _, n, _ := h.expire(by, time.Time{}); n != 1 {
		t.Fatalf("expire with no renewal under way: %d lost, want the queued row ending before by", n)
	}
}
