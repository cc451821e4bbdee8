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
	h.written(batch, nil)
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
	h.written(back, nil)
	h.finish(b, result{kind: resFailed})
	h.written(h.takeWrites(), nil)
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
	h.written(batch, nil)
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
	h.written(batch, nil)
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

// chainFor returns a head and n rows following it in one ordering key,
// linked as a claim links them.
func chainFor(r *route, n int) []*job {
	jobs := jobsFor(r, n+1, 1)
	for i, j := range jobs {
		j.order, j.seq = "k", int64(10*(i+1))
	}
	// A claim returns rows in no particular order.
	rev := slices.Clone(jobs)
	slices.Reverse(rev)
	linkChains(rev)
	return jobs
}

// The rows of a chain run one at a time: each once the one before it is
// written done (or committed by its TxHandler); when one before fails,
// is lost or is handed back, the rest go back to wait, unstarted, behind
// it; they take no slot while blocked, only room of their own.
func TestHeldChain(t *testing.T) {
	now := time.Now()
	started := func(h *held) []*job {
		var out []*job
		for j := h.start(now); j != nil; j = h.start(now) {
			out = append(out, j)
		}
		return out
	}
	// writes writes what waits to be written, done rows successfully.
	writes := func(h *held) map[resultKind]int {
		got, ok := map[resultKind]int{}, map[rowID]bool{}
		batch := h.takeWrites()
		for _, j := range batch {
			got[j.res.kind]++
			ok[j.rowID] = j.res.kind == resDone
		}
		h.written(batch, ok)
		return got
	}

	h, routes := heldFixture(10, 20, 0)
	c := chainFor(routes[0], 3)
	h.add(c)
	if got := started(h); len(got) != 1 || got[0] != c[0] {
		t.Fatalf("started %d jobs, want only the head", len(got))
	}
	if p, _ := h.plan(10, 1); p.n != 10 || h.blockedN != 3 || len(h.renewals(now)) != 4 {
		t.Fatalf("plan %+v with %d blocked, %d renewed: blocked rows take no slot and are renewed", p, h.blockedN, len(h.renewals(now)))
	}
	// Done, but not written yet: the next waits for the write.
	h.finish(c[0], result{kind: resDone})
	if len(started(h)) != 0 {
		t.Fatal("a row started before the row before it was written")
	}
	batch := h.takeWrites()
	if !batch[0].nextAtWrite {
		t.Fatal("a done row with a row behind it would make the next row due")
	}
	h.written(batch, map[rowID]bool{c[0].rowID: true})
	if got := started(h); len(got) != 1 || got[0] != c[1] {
		t.Fatalf("after the head was written: started %v, want the second row", got)
	}
	// A TxHandler committed it: the next runs at once.
	h.finish(c[1], result{kind: resCommitted})
	if got := started(h); len(got) != 1 || got[0] != c[2] {
		t.Fatalf("after a commit: started %v, want the third row", got)
	}
	// It fails: the last goes back to wait behind it, unstarted.
	h.finish(c[2], result{kind: resFailed})
	if got := writes(h); got[resFailed] != 1 || got[resWaiting] != 1 || c[3].res.behind != c[2].seq || h.blockedN != 0 {
		t.Fatalf("after a failure: writes %v, waiting behind %d; want the failure and the last row waiting behind it", got, c[3].res.behind)
	}

	// A done row whose write did not happen (lease lost) breaks the chain.
	h, routes = heldFixture(10, 20, 0)
	c = chainFor(routes[0], 2)
	h.add(c)
	started(h)
	h.finish(c[0], result{kind: resDone})
	h.written(h.takeWrites(), map[rowID]bool{})
	if got := writes(h); got[resWaiting] != 2 || len(started(h)) != 0 {
		t.Fatalf("after an unwritten done row: writes %v, want both rows behind it waiting again", got)
	}

	// A blocked row whose lease is lost takes the rows behind it along;
	// the row before it runs on.
	h, routes = heldFixture(10, 20, 0)
	c = chainFor(routes[0], 3)
	h.add(c)
	started(h)
	if _, n := h.lose([]renewItem{{c[2].rowID, c[2].claim}}); n != 1 {
		t.Fatalf("lost %d rows, want the blocked one", n)
	}
	if got := writes(h); got[resWaiting] != 1 || c[3].res.behind != c[2].seq || c[1].state != blocked {
		t.Fatalf("after a blocked row was lost: writes %v; want only the row behind it handed back", got)
	}
	h.finish(c[0], result{kind: resDone})
	h.written(h.takeWrites(), map[rowID]bool{c[0].rowID: true})
	h.finish(started(h)[0], result{kind: resDone})
	h.written(h.takeWrites(), map[rowID]bool{c[1].rowID: true})
	if !h.idle() || h.blockedN != 0 {
		t.Fatalf("after the chain ended: %d held, %d blocked", len(h.jobs), h.blockedN)
	}

	// Stop: the queued head is handed back due, the rows behind it wait;
	// a row whose turn comes while stopping is handed back due.
	h, routes = heldFixture(1, 20, 0)
	other := jobsFor(routes[0], 1, 1)[0]
	h.add([]*job{other})
	c = chainFor(routes[0], 1)
	d := chainFor(routes[0], 2)
	h.add(append(c, d...))
	started(h) // other runs; both heads wait for the one runner
	h.release()
	if got := writes(h); got[resReleased] != 2 || got[resWaiting] != 3 {
		t.Fatalf("release: writes %v, want the 2 heads handed back and the 3 rows behind them waiting", got)
	}
	h.finish(other, result{kind: resDone})
	h.written(h.takeWrites(), map[rowID]bool{other.rowID: true})
	if !h.idle() {
		t.Fatalf("after stop: %d held", len(h.jobs))
	}
}
