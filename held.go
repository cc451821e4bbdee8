package inbox

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// rowID identifies a row.
type rowID struct {
	id  uuid.UUID
	key string
}

// jobState is where a held row is between its claim and its result's write.
//
//	claim ──▶ queued ──▶ running ──▶ returned ──▶ writing ──▶ (gone)
//	  │          │          │           │
//	  │          │          └─▶ lost ───┴──────────────────▶ (gone)
//	  │          └─ Stop: handed back (returned, unstarted) ─▶ writing
//	  └─▶ blocked ──the row before is done──▶ queued
//	         └──it is not: handed back, waiting (returned) ──▶ writing
//
// A lease lost while queued or blocked drops the row at once; while
// running it cancels the handler and the row goes when the handler
// returns; while returned it drops the unwritten result. A row being
// written is left to its write: the write's guard decides.
//
// A claim may lease, behind the first row of an ordering key it claims,
// the rows of that key that follow it (a chain, linked by next): each
// waits blocked until the row before it is done, its result written (or
// committed by a TxHandler), so that even after a crash no row of a key
// runs before the one before it has finished. A row before that leaves
// any other way (failed, dead, lost, handed back) hands the rest of the
// chain back unstarted, to wait again in the key's order.
type jobState uint8

const (
	// queued: claimed, waiting for a runner and a free slot of its
	// handler's concurrency.
	queued jobState = iota + 1
	// running: a runner is running its handler.
	running
	// returned: the handler returned (or the row was handed back
	// unstarted); its result waits to be written.
	returned
	// writing: the result is with the writer.
	writing
	// lost: the lease was lost while the handler ran; its context is
	// cancelled and its result will not be written.
	lost
	// blocked: claimed behind the row before it in its ordering key's
	// order, waiting for that row to be done.
	blocked
)

// resultKind is what a finished attempt asks to write.
type resultKind uint8

const (
	// resDone: the handler succeeded; mark the row done.
	resDone resultKind = iota + 1
	// resCommitted: a TxHandler's transaction marked the row done itself.
	resCommitted
	// resFailed: retry after the backoff, or dead at the row's limit.
	resFailed
	// resDiscard: dead now (Discard).
	resDiscard
	// resRetryAfter: due again after a pause, the attempt not counted.
	resRetryAfter
	// resReleased: never started; hand the row back, the attempt not
	// counted.
	resReleased
	// resWaiting: never started, blocked behind a row of its ordering key
	// that is not done; hand it back to wait in its key's order, the
	// attempt not counted.
	resWaiting
)

// result is the outcome of one attempt.
type result struct {
	kind resultKind
	// err is the failure, bounded by compact: the handler's own error
	// only when its text was short enough.
	err error
	// text is err's bounded text, as stored.
	text string
	// etype names the type of err's root cause, as stored (errorType).
	etype string
	after time.Duration // resRetryAfter
	// behind is the seq of the row a resWaiting row was blocked behind
	// (directly or not): the first of the chain that is not done.
	behind int64
}

// job is a held row. The owner goroutine alone reads and writes its
// mutable fields; runners read the immutable ones and ctx.
type job struct {
	rowID
	route       *route
	payload     []byte
	withheld    bool // the claim withheld the payload: read it before running
	attempt     int  // the attempt the claim counted
	claim       int  // the row's claims after this claim: names it in guards
	maxAttempts int
	storedAt    time.Time
	trace       string // the stored trace context, "" for none
	order       string // the row's ordering key, "" for none
	seq         int64  // the row's place in its key's order
	// next is the row of its chain claimed behind it (blocked), if any.
	// nextAtStart and nextAtWrite say whether it had one when a runner
	// took it (for a TxHandler's commit: read by the runner) and when its
	// result went to the writer: a done row then makes nothing due, the
	// next row is this worker's. (Should that row be lost meanwhile, it is
	// due once its lease ends, or handed back with a promotion: see
	// breakChain.)
	next                     *job
	nextAtStart, nextAtWrite bool
	follows                  bool // claimed behind the row before it: blocked until that is done
	// ctid is where the row was at its claim or latest renewal: the
	// writer reaches it there without an index lookup.
	ctid pgtype.TID
	// leaseUntil is when the lease ends, counted from when the claim or
	// the latest renewal was sent: no later than the database's count.
	// leaseEndsBy is no earlier: counted from when the answer came.
	leaseUntil, leaseEndsBy time.Time

	state    jobState
	deadline time.Time   // running: leases are renewed, and the handler waited for, until then
	lostAt   time.Time   // lost: when its handler was cancelled
	actx     *attemptCtx // the root of ctx, with the attempt
	ctx      context.Context
	cancel   context.CancelCauseFunc
	res      result
	// run is jobRunning until the handler returns or is abandoned; the
	// runner and the watchdogs race for it.
	run atomic.Int32
}

// held is the set of rows a worker holds, and the rules that move them
// between states. It does no I/O: the owner goroutine calls it and acts on
// what it returns.
type held struct {
	jobs map[rowID]*job
	// detached are jobs whose row this worker claimed again while they
	// were still being written or run (a retry due at once, or a row of
	// its own rescued after its lease ran out): they live on until their
	// write or their handler is over, but the row is the new job's.
	detached    map[*job]bool
	queues      [][]*job // queued jobs per route, oldest first
	running     []int    // running jobs per route
	queuedOrRun []int    // queued and running jobs per route
	runningAll  int
	toWrite     []*job // returned jobs, in order of return
	next        int    // route to look at first when starting a job
	concurrency int
	capacity    int
	grace       time.Duration
	routes      []*route
	stopping    bool // release was called: rows whose turn comes are handed back
	blockedN    int  // blocked jobs
}

func newHeld(routes []*route, concurrency, capacity int, grace time.Duration) *held {
	return &held{
		jobs:        make(map[rowID]*job, capacity),
		detached:    make(map[*job]bool),
		queues:      make([][]*job, len(routes)),
		running:     make([]int, len(routes)),
		queuedOrRun: make([]int, len(routes)),
		concurrency: concurrency,
		capacity:    capacity,
		grace:       grace,
		routes:      routes,
	}
}

// claimPlan is what the claimer may claim next.
type claimPlan struct {
	n           int
	types, keys []string
	caps        []int32
	capped      bool // some route is capped below n
	// limitKeys are the handler keys in the plan with a global limit,
	// each once, and limits their limits; nil for none.
	limitKeys []string
	limits    []int32
	// followers is how many rows the claim may lease behind the first
	// rows of ordering keys it claims, chainLength at most behind each.
	followers int
}

// chainLength is how many rows of an ordering key a claim leases behind
// the key's first row, to run one after the other: the next row of a key
// then needs neither a write to make it due nor a claim of its own.
const chainLength = 4

// plan returns the next claim's size and the routes it may take rows of,
// each with a cap, or false when there is no room: fewer than minClaim
// free slots, or every route at its limit. A row takes a slot while it is
// queued or running; once its handler returned, its slot frees and the
// next claim overlaps the writing of its result. Rows whose results wait
// to be written are bounded too: all held rows together at most twice the
// capacity. A route with a concurrency limit holds at most twice its limit
// of queued and running rows.
func (h *held) plan(batch, minClaim int) (claimPlan, bool) {
	active := 0
	for _, n := range h.queuedOrRun {
		active += n
	}
	free := min(h.capacity-active, 2*h.capacity-(len(h.jobs)-h.blockedN)-len(h.detached))
	if free < minClaim {
		return claimPlan{}, false
	}
	p := claimPlan{n: min(batch, free)}
	// Blocked rows take no slot, and have room of their own.
	p.followers = max(0, min(p.n*chainLength, chainLength*h.capacity-h.blockedN))
	for i, r := range h.routes {
		c := p.n
		if r.concurrency > 0 {
			c = min(c, 2*r.concurrency-h.queuedOrRun[i])
		}
		if c <= 0 {
			continue
		}
		p.capped = p.capped || c < p.n
		p.types, p.keys, p.caps = append(p.types, r.eventType), append(p.keys, r.key), append(p.caps, int32(c))
		if r.globalLimit > 0 {
			p.limit(r.key, r.globalLimit)
		}
	}
	return p, len(p.types) > 0
}

// limit notes a global limit of a handler key; of several, the smallest.
func (p *claimPlan) limit(key string, n int) {
	for i, k := range p.limitKeys {
		if k == key {
			p.limits[i] = min(p.limits[i], int32(n))
			return
		}
	}
	p.limitKeys, p.limits = append(p.limitKeys, key), append(p.limits, int32(n))
}

// add holds claimed rows as queued, or blocked if they follow another
// row of their chain. A job of an earlier claim of the same row is
// detached from it, and returned when its handler is running and must be
// cancelled: the row is not its any more.
func (h *held) add(jobs []*job) (cancel []*job) {
	for _, j := range jobs {
		if old, ok := h.jobs[j.rowID]; ok {
			switch old.state {
			case queued, blocked:
				h.leave(old)
			case returned:
				h.breakChain(old)
				h.drop(old) // takeWrites skips it
			case running:
				old.state = lost
				cancel = append(cancel, old)
				h.detached[old] = true
			case writing, lost:
				h.detached[old] = true
			}
		}
		h.jobs[j.rowID] = j
		if j.follows {
			j.state = blocked
			h.blockedN++
			continue
		}
		h.enqueue(j)
	}
	return cancel
}

// enqueue queues a job to run.
func (h *held) enqueue(j *job) {
	j.state = queued
	h.queues[j.route.index] = append(h.queues[j.route.index], j)
	h.queuedOrRun[j.route.index]++
}

// leave forgets a queued or blocked job that will not run: its lease is
// lost, or the row was claimed again. The rest of its chain is handed back.
func (h *held) leave(j *job) {
	switch j.state {
	case queued:
		h.unqueue(j)
		h.queuedOrRun[j.route.index]--
	case blocked:
		h.blockedN--
	}
	h.breakChain(j)
	h.drop(j)
}

// proceed lets the row after j in its chain run, now that j is done; if
// the worker is stopping, that row is handed back instead, due at once.
func (h *held) proceed(j *job) {
	n := j.next
	if n == nil {
		return
	}
	j.next = nil
	if n.state != blocked {
		return
	}
	h.blockedN--
	if h.stopping {
		n.state, n.res = returned, result{kind: resReleased}
		h.toWrite = append(h.toWrite, n)
		h.breakChain(n)
		return
	}
	h.enqueue(n)
}

// breakChain hands back the rows blocked behind j, which will not be
// done by this worker: each goes back to wait behind j's row in its key's
// order.
func (h *held) breakChain(j *job) {
	n := j.next
	j.next = nil
	for n != nil && n.state == blocked {
		h.blockedN--
		n.state, n.res = returned, result{kind: resWaiting, behind: j.seq}
		h.toWrite = append(h.toWrite, n)
		following := n.next
		n.next = nil
		n = following
	}
}

// start returns a queued job that may run now, marked running until
// deadline (now plus its timeout and the grace period), or nil. Routes
// take turns, so that one handler's backlog does not hold up another's.
func (h *held) start(now time.Time) *job {
	if h.runningAll >= h.concurrency {
		return nil
	}
	for range h.queues {
		i := h.next
		h.next = (h.next + 1) % len(h.queues)
		q := h.queues[i]
		if len(q) == 0 {
			continue
		}
		if lim := h.routes[i].concurrency; lim > 0 && h.running[i] >= lim {
			continue
		}
		j := q[0]
		q[0] = nil
		h.queues[i] = q[1:]
		j.state = running
		// Time.Add saturates, so the longest timeouts cannot overflow.
		j.deadline = now.Add(j.route.timeout).Add(h.grace)
		h.running[i]++
		h.runningAll++
		return j
	}
	return nil
}

// finish records the result of a running (or lost) job. It reports
// whether the result is to be written. The next row of its chain runs
// now if a TxHandler's transaction marked this one done; it waits for the
// write if the result is done; otherwise it is handed back.
func (h *held) finish(j *job, res result) bool {
	switch j.state {
	case running:
		h.stopRunning(j)
		j.state, j.res = returned, res
		h.toWrite = append(h.toWrite, j)
		switch res.kind {
		case resCommitted:
			h.proceed(j)
		case resDone:
		default:
			h.breakChain(j)
		}
		return true
	case lost:
		h.stopRunning(j)
		h.breakChain(j)
		h.drop(j)
	}
	return false
}

func (h *held) stopRunning(j *job) {
	h.running[j.route.index]--
	h.runningAll--
	h.queuedOrRun[j.route.index]--
}

// maxWriteBatch bounds the results one statement writes: with error texts
// of up to MaxErrorLength bytes, a batch stays well under PostgreSQL's
// 1 GiB message limit (about 16 MiB of texts at most).
const maxWriteBatch = 2000

// takeWrites returns the results waiting to be written, up to
// maxWriteBatch of them, now writing.
func (h *held) takeWrites() []*job {
	out := make([]*job, 0, min(len(h.toWrite), maxWriteBatch))
	n := 0
	for _, j := range h.toWrite {
		if len(out) == maxWriteBatch {
			break
		}
		n++
		if j.state == returned {
			j.state, j.nextAtWrite = writing, j.next != nil
			out = append(out, j)
		}
	}
	rest := copy(h.toWrite, h.toWrite[n:])
	clear(h.toWrite[rest:])
	h.toWrite = h.toWrite[:rest]
	return out
}

// written forgets jobs whose write finished, successful or not; ok
// holds the rows written. The next row of a chain runs once the row
// before it is written done.
func (h *held) written(jobs []*job, ok map[rowID]bool) {
	for _, j := range jobs {
		if j.state != writing {
			continue
		}
		if j.res.kind == resDone && ok[j.rowID] {
			h.proceed(j)
		} else {
			h.breakChain(j)
		}
		h.drop(j)
	}
}

// drop forgets a job.
func (h *held) drop(j *job) {
	if h.jobs[j.rowID] == j {
		delete(h.jobs, j.rowID)
	}
	delete(h.detached, j)
	j.state = 0
}

// each calls fn for every job, held or detached.
func (h *held) each(fn func(*job)) {
	for _, j := range h.jobs {
		fn(j)
	}
	for j := range h.detached {
		fn(j)
	}
}

// renewals returns the jobs whose leases are to be renewed: all but those
// lost, and those running past their deadline.
func (h *held) renewals(now time.Time) []*job {
	out := make([]*job, 0, len(h.jobs))
	for _, j := range h.jobs {
		switch j.state {
		case queued, blocked, returned, writing:
			out = append(out, j)
		case running:
			if now.Before(j.deadline) {
				out = append(out, j)
			}
		}
	}
	return out
}

// lose records that the worker no longer holds these rows for these
// claims, and returns the running jobs, whose handlers are to be
// cancelled, and how many rows were lost. A row held for another claim
// (claimed again since the renewal that reported it) is kept, and so is a
// row whose result is being written: the write's guard decides.
func (h *held) lose(items []renewItem) (cancel []*job, n int) {
	for _, it := range items {
		j, ok := h.jobs[it.rowID]
		if !ok || j.claim != it.claim || j.state == writing || j.state == lost {
			continue
		}
		n++
		switch j.state {
		case queued, blocked:
			h.leave(j)
		case running:
			j.state = lost
			cancel = append(cancel, j)
		case returned:
			h.breakChain(j)
			h.drop(j) // takeWrites skips it
		}
	}
	return cancel, n
}

// renewed records the renewal of rows: their leases last until until (by
// endsBy at the latest), and their new ctids. A row being written keeps
// the ctid the writer has.
func (h *held) renewed(rows []renewedRow, until, endsBy time.Time) {
	for _, r := range rows {
		if j, ok := h.jobs[r.rowID]; ok && j.claim == r.claim {
			j.leaseUntil, j.leaseEndsBy = until, endsBy
			if j.state != writing {
				j.ctid = r.ctid
			}
		}
	}
}

// expire is lose for the queued, blocked and running rows whose leases end before
// by, except those whose leases end at or after wait (zero: none waits).
// It also returns by when the last of those leases has ended.
func (h *held) expire(by, wait time.Time) (cancel []*job, n int, last time.Time) {
	var items []renewItem
	for id, j := range h.jobs {
		if (j.state == queued || j.state == running || j.state == blocked) && j.leaseUntil.Before(by) &&
			(wait.IsZero() || j.leaseUntil.Before(wait)) {
			items = append(items, renewItem{id, j.claim})
			if j.leaseEndsBy.After(last) {
				last = j.leaseEndsBy
			}
		}
	}
	cancel, n = h.lose(items)
	return cancel, n, last
}

func (h *held) unqueue(j *job) {
	q := h.queues[j.route.index]
	for i, x := range q {
		if x == j {
			h.queues[j.route.index] = append(q[:i:i], q[i+1:]...)
			return
		}
	}
}

// release hands every queued job back: its result is "never started",
// and the rows blocked behind it go back to wait. From now on, a row
// whose turn comes is handed back too.
func (h *held) release() {
	h.stopping = true
	for i, q := range h.queues {
		for _, j := range q {
			j.state, j.res = returned, result{kind: resReleased}
			h.toWrite = append(h.toWrite, j)
			h.queuedOrRun[i]--
			h.breakChain(j)
		}
		h.queues[i] = nil
	}
}

// idle reports that no row is held and no detached job is left.
func (h *held) idle() bool { return len(h.jobs) == 0 && len(h.detached) == 0 }
