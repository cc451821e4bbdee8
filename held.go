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
//	             │          │           │
//	             │          └─▶ lost ───┴──────────────────▶ (gone)
//	             └─ Stop: handed back (returned, unstarted) ─▶ writing
//
// A lease lost while queued drops the row at once; while running it
// cancels the handler and the row goes when the handler returns; while
// returned it drops the unwritten result. A row being written is left to
// its write: the write's guard decides.
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
}

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
	free := min(h.capacity-active, 2*h.capacity-len(h.jobs)-len(h.detached))
	if free < minClaim {
		return claimPlan{}, false
	}
	p := claimPlan{n: min(batch, free)}
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

// add holds claimed rows as queued. A job of an earlier claim of the same
// row is detached from it, and returned when its handler is running and
// must be cancelled: the row is not its any more.
func (h *held) add(jobs []*job) (cancel []*job) {
	for _, j := range jobs {
		if old, ok := h.jobs[j.rowID]; ok {
			switch old.state {
			case queued:
				h.unqueue(old)
				h.queuedOrRun[old.route.index]--
				h.drop(old)
			case returned:
				h.drop(old) // takeWrites skips it
			case running:
				old.state = lost
				cancel = append(cancel, old)
				h.detached[old] = true
			case writing, lost:
				h.detached[old] = true
			}
		}
		j.state = queued
		h.jobs[j.rowID] = j
		h.queues[j.route.index] = append(h.queues[j.route.index], j)
		h.queuedOrRun[j.route.index]++
	}
	return cancel
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
// whether the result is to be written.
func (h *held) finish(j *job, res result) bool {
	switch j.state {
	case running:
		h.stopRunning(j)
		j.state, j.res = returned, res
		h.toWrite = append(h.toWrite, j)
		return true
	case lost:
		h.stopRunning(j)
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
			j.state = writing
			out = append(out, j)
		}
	}
	rest := copy(h.toWrite, h.toWrite[n:])
	clear(h.toWrite[rest:])
	h.toWrite = h.toWrite[:rest]
	return out
}

// written forgets jobs whose write finished, successful or not.
func (h *held) written(jobs []*job) {
	for _, j := range jobs {
		if j.state == writing {
			h.drop(j)
		}
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
		case queued, returned, writing:
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
		case queued:
			h.unqueue(j)
			h.queuedOrRun[j.route.index]--
			h.drop(j)
		case running:
			j.state = lost
			cancel = append(cancel, j)
		case returned:
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

// expire is lose for the queued and running rows whose leases end before
// by, except those whose leases end at or after wait (zero: none waits).
// It also returns by when the last of those leases has ended.
func (h *held) expire(by, wait time.Time) (cancel []*job, n int, last time.Time) {
	var items []renewItem
	for id, j := range h.jobs {
		if (j.state == queued || j.state == running) && j.leaseUntil.Before(by) &&
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

// release hands every queued job back: its result is "never started".
func (h *held) release() {
	for i, q := range h.queues {
		for _, j := range q {
			j.state, j.res = returned, result{kind: resReleased}
			h.toWrite = append(h.toWrite, j)
			h.queuedOrRun[i]--
		}
		h.queues[i] = nil
	}
}

// idle reports that no row is held and no detached job is left.
func (h *held) idle() bool { return len(h.jobs) == 0 && len(h.detached) == 0 }
