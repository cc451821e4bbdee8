package inbox

import (
	"context"
	"fmt"
	"time"
)

// owner is the state of the owner goroutine: the held rows and what the
// goroutines around it are doing. Only the owner goroutine touches it.
type owner struct {
	w          *worker
	h          *held
	minClaim   int
	planWanted bool      // the claimer waits for a plan
	stopping   bool      // the claimer has stopped: hand back, drain, return
	writing    bool      // the writer has a batch
	renewing   bool      // the renewer has a batch
	renewSent  time.Time // when the renewer's batch was handed out
	// renewFailedAt is when the latest failed renewal gave up: it may have
	// extended leases until a lease after.
	renewFailedAt time.Time
}

// maxEventsPerTurn bounds how many events the owner handles before it
// starts jobs and hands out work again.
const maxEventsPerTurn = 64

// The owner's clock, in fractions of the lease L. It ticks every L/16,
// renews the held leases every L/4 (so at a renewal they end at least
// 11L/16 later), gives a renewal 3L/8 to answer (renewTimeout), and
// cancels a handler whose lease has less than L/4 left (expireWithin),
// unless an unanswered renewal would still leave it L/4 when it times
// out. Checked every tick, this leaves a cancelled handler at least 3L/16
// to stop before another worker may claim its row, whatever the renewals
// do.
const (
	tickDivisor  = 16
	renewEvery   = 4 // L/4
	expireWithin = 4 // L/4
)

// later returns the later of two times.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// renewTimeout is how long a renewal may take: longer, and the owner has
// given its rows up (see owner.expire).
func renewTimeout(lease time.Duration) time.Duration { return lease * 3 / 8 }

// own is the owner goroutine: every change of a held row happens here.
// Each turn it hands out what can be handed out (jobs to free runners, a
// plan to the claimer, results to an idle writer), then waits for events
// and handles those waiting, up to maxEventsPerTurn.
func (w *worker) own() {
	defer w.owner.Done()
	defer close(w.ownerDone)
	defer close(w.jobs)
	defer close(w.writes)
	defer close(w.renewals)

	o := &owner{
		w:        w,
		h:        newHeld(w.routes.list, w.cfg.concurrency, w.cfg.concurrency+w.cfg.batchSize, w.grace()),
		minClaim: max(1, w.cfg.batchSize/2),
	}
	ticker := time.NewTicker(w.cfg.lease / tickDivisor)
	defer ticker.Stop()
	for {
		o.handOut()
		if o.stopping && o.h.idle() && !o.writing {
			return
		}
		select {
		case ev := <-w.events:
			o.handle(ev)
			for range maxEventsPerTurn - 1 {
				select {
				case ev := <-w.events:
					o.handle(ev)
					continue
				default:
				}
				break
			}
		case <-ticker.C:
			o.watch()
			o.expire()
			o.renew()
		case <-w.hardStop:
			o.h.each(func(j *job) {
				if j.state == running || j.state == lost {
					j.cancel(w.stopCause)
				}
			})
			return // Stop waits for nothing more
		}
	}
}

// handOut starts what can start: jobs on free runners, a claim when there
// is room, a write when the writer is idle. None of the sends blocks.
func (o *owner) handOut() {
	w, h := o.w, o.h
	now := time.Now()
	for j := h.start(now); j != nil; j = h.start(now) {
		j.actx = &attemptCtx{Context: w.handlerCtx, owner: w, a: Attempt{
			EventID: j.id, EventType: j.route.eventType, HandlerKey: j.key, Number: j.attempt,
			MaxAttempts: j.maxAttempts, Payload: j.payload, StoredAt: j.storedAt, TraceContext: j.trace, Transactional: j.route.tx != nil}}
		j.ctx, j.cancel = context.WithCancelCause(j.actx) // registers with no parent
		j.nextAtStart = j.next != nil                     // a TxHandler's commit makes nothing due then
		w.jobs <- j                                       // at most concurrency jobs are out
	}
	if o.planWanted {
		if p, ok := h.plan(w.cfg.batchSize, o.minClaim); ok {
			w.plans <- p // the claimer asked once
			o.planWanted = false
		}
	}
	if !o.writing {
		if batch := h.takeWrites(); len(batch) > 0 {
			w.writes <- batch // the writer is idle
			o.writing = true
		}
	}
}

// handle applies one event to the held rows.
func (o *owner) handle(ev event) {
	w, h := o.w, o.h
	switch ev.kind {
	case evClaimed:
		w.cancelLost(h.add(ev.jobs), "claimed again")
	case evWantPlan:
		o.planWanted = true
	case evClaimerDone:
		o.stopping = true
		h.release()
	case evResult:
		h.finish(ev.job, ev.res)
	case evWritten:
		o.writing = false
		h.written(ev.jobs, ev.written)
	case evRenewed:
		o.renewing = false
		if ev.err != nil {
			// It may have renewed some leases all the same, until now+L.
			o.renewFailedAt = time.Now()
			w.report(fmt.Errorf("inbox: renew leases: %w", ev.err))
			o.expire()
			return
		}
		// A renewed lease lasts from when the renewal was sent, as this
		// worker counts; the database counted from some time before now.
		h.renewed(ev.renewed, o.renewSent.Add(w.cfg.lease), time.Now().Add(w.cfg.lease))
		if cancel, n := h.lose(ev.lost); n > 0 {
			w.cancelLost(cancel, "taken over")
			w.report(fmt.Errorf("%w: %d rows were taken over by another worker or removed", ErrLeaseLost, n))
		}
	}
}

// watch abandons the handlers that ignore their contexts: those running a
// grace period past their timeout, or past the moment the owner cancelled
// them. Each such attempt fails, and a new runner takes the place of the
// one stuck in the handler; that one exits when the handler returns.
func (o *owner) watch() {
	w := o.w
	now := time.Now()
	var abandon []*job
	var errs []error
	o.h.each(func(j *job) {
		var err error
		switch {
		case j.state == running && now.After(j.deadline):
			err = fmt.Errorf("%w after %v: handler did not return within %v of its context ending",
				ErrHandlerTimeout, j.route.timeout, w.grace())
		case j.state == lost && now.After(j.lostAt.Add(w.grace())):
			err = fmt.Errorf("%w: handler did not return within %v of its context ending", ErrLeaseLost, w.grace())
		default:
			return
		}
		if j.run.CompareAndSwap(jobRunning, jobAbandoned) { // else it returned: its result is on its way
			abandon, errs = append(abandon, j), append(errs, err)
		}
	})
	for i, j := range abandon {
		w.log.Warn("inbox: handler ignores its context; abandoning it", "event_id", j.id, "handler_key", j.key)
		w.runners.Add(1)
		go w.runLoop()
		e, text := compact(errs[i])
		o.h.finish(j, result{kind: resFailed, err: e, text: text, etype: ErrorType(errs[i])})
	}
}

// expire gives up the queued and running rows whose leases were not
// renewed in time: those with less than a quarter of a lease left. Their
// handlers are cancelled before another worker may claim the rows. While a
// renewal is under way (for less than renewTimeout) a row it will leave
// with a quarter of a lease, should it fail, waits for it. Leases are
// counted from when the claim or renewal was sent, which is earlier than
// the database's own count. A row whose handler has returned is left to
// the writer: its write is guarded by the claim. The claimer wakes when
// the given-up leases have ended, to claim the rows again.
func (o *owner) expire() {
	w := o.w
	now := time.Now()
	wait := time.Time{}
	if o.renewing && now.Sub(o.renewSent) < renewTimeout(w.cfg.lease) {
		wait = o.renewSent.Add(renewTimeout(w.cfg.lease) + w.cfg.lease/expireWithin)
	}
	cancel, n, last := o.h.expire(now.Add(w.cfg.lease/expireWithin), wait)
	if n > 0 {
		w.cancelLost(cancel, "lease not renewed in time")
		w.report(fmt.Errorf("%w: leases of %d rows could not be renewed in time; they will be retried", ErrLeaseLost, n))
		// No notification tells when the leases end: wake the claimer by
		// then, counting with renewals that may have extended them.
		if o.renewing {
			last = later(last, o.renewSent.Add(renewTimeout(w.cfg.lease)+w.cfg.lease))
		}
		last = later(last, o.renewFailedAt.Add(w.cfg.lease))
		w.scheduleRetries([]time.Time{last.Add(w.cfg.lease / tickDivisor)})
	}
}

// renew hands the renewer the leases to renew every quarter of a lease,
// unless it is still busy with the last ones.
func (o *owner) renew() {
	now := time.Now()
	if o.renewing || now.Sub(o.renewSent) < o.w.cfg.lease/renewEvery {
		return
	}
	jobs := o.h.renewals(now)
	if len(jobs) == 0 {
		return
	}
	o.renewSent = now
	items := make([]renewItem, len(jobs))
	for i, j := range jobs {
		items[i] = renewItem{j.rowID, j.claim}
	}
	o.w.renewals <- items // the renewer is idle
	o.renewing = true
}

// cancelLost cancels the handlers of rows whose leases were lost; watch
// abandons those that do not return within the grace period.
func (w *worker) cancelLost(jobs []*job, why string) {
	now := time.Now()
	for _, j := range jobs {
		j.cancel(ErrLeaseLost)
		j.lostAt = now
		w.log.Warn("inbox: lease lost; cancelling the handler", "event_id", j.id, "handler_key", j.key,
			"attempt", j.attempt, "reason", why)
	}
}
