package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// The worker of one Inbox is a few goroutines around one owner:
//
//	claimer ──claimed──▶ ┌───────┐ ──jobs──────▶ runners (concurrency)
//	                     │ owner │ ◀─results────┘
//	writer ◀──writes──── │       │ ──renewals──▶ renewer
//	   └────written────▶ └───────┘ ◀──renewed────┘
//
// The owner goroutine alone holds the claimed rows, in held (held.go), a
// state machine with named states; every other goroutine sends it events
// and gets work from it, and the owner never waits for any of them: it
// hands a runner a job only when one is free, and the writer or the renewer
// a batch only when it is idle. So the path of a row reads in one place:
// own() below. The writer and the renewer are separate goroutines so that
// a slow result write never delays lease renewals; the renewer never waits
// for a row lock, so the two cannot deadlock. Callbacks (callbacks.go) run
// in goroutines of their own and cannot stall any of this.
type worker struct {
	ib     *Inbox
	cfg    *config
	db     db
	log    *slog.Logger
	routes *routes
	id     uuid.UUID
	// deadBy is the worker's id in dead_callback_by when a dead callback
	// is set, else NULL.
	deadBy pgtype.UUID

	// ctx lives until the worker has stopped: maintenance and the
	// listener run on it.
	ctx    context.Context
	cancel context.CancelFunc
	// ioCtx carries claims, result writes and renewals; it ends only on
	// a hard stop, so that a graceful Stop lets them finish.
	ioCtx    context.Context
	cancelIO context.CancelFunc
	// handlerCtx is the parent of every handler's context.
	handlerCtx     context.Context
	cancelHandlers context.CancelCauseFunc

	events   chan event       // to the owner
	jobs     chan *job        // owner → runners
	writes   chan []*job      // owner → writer
	renewals chan []renewItem // owner → renewer
	plans    chan claimPlan   // owner → claimer

	wake    chan struct{} // a notification arrived
	resched chan struct{} // the earliest retry time moved earlier
	retries retryTimes    // when rows this worker failed are due again

	stopClaims chan struct{} // closed by Stop: claim no more
	hardStop   chan struct{} // closed by Stop when its context ends
	ownerDone  chan struct{} // closed when the owner returns

	deadCalls *deadCallbacks
	errCalls  *errorCallbacks
	guests    sync.Map // goroutine id → struct{}: goroutines that run user code

	claimer, owner, runners, io, background sync.WaitGroup
}

// event is a message to the owner.
type event interface{ isEvent() }

type (
	// claimedEv: the claimer claimed jobs.
	claimedEv struct{ jobs []*job }
	// wantPlanEv: the claimer waits for a plan on w.plans.
	wantPlanEv struct{}
	// claimerDoneEv: the claimer has stopped for good.
	claimerDoneEv struct{}
	// resultEv: a handler returned, or was abandoned.
	resultEv struct {
		job       *job
		res       result
		abandoned bool
	}
	// writtenEv: the writer finished a batch.
	writtenEv struct{ jobs []*job }
	// renewedEv: the renewer finished; lost are rows no longer held.
	renewedEv struct {
		lost []renewItem
		err  error
	}
)

func (claimedEv) isEvent()     {}
func (wantPlanEv) isEvent()    {}
func (claimerDoneEv) isEvent() {}
func (resultEv) isEvent()      {}
func (writtenEv) isEvent()     {}
func (renewedEv) isEvent()     {}

// renewItem is a row whose lease to renew.
type renewItem struct {
	rowID
	attempt int
}

func newWorker(ib *Inbox) *worker {
	cfg := &ib.cfg
	w := &worker{
		ib:         ib,
		cfg:        cfg,
		db:         ib.db,
		log:        cfg.logger.With("worker", ib.id),
		routes:     ib.routes,
		id:         ib.id,
		events:     make(chan event, 2*cfg.concurrency+16),
		jobs:       make(chan *job, cfg.concurrency),
		writes:     make(chan []*job, 1),
		renewals:   make(chan []renewItem, 1),
		plans:      make(chan claimPlan, 1),
		wake:       make(chan struct{}, 1),
		resched:    make(chan struct{}, 1),
		stopClaims: make(chan struct{}),
		hardStop:   make(chan struct{}),
		ownerDone:  make(chan struct{}),
	}
	if cfg.hasDead {
		w.deadBy = pgUUID(ib.id)
	}
	return w
}

func (w *worker) start(ctx context.Context) error {
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	w.ioCtx, w.cancelIO = context.WithCancel(w.ctx)
	w.handlerCtx, w.cancelHandlers = context.WithCancelCause(w.ctx)
	if err := w.beat(ctx); err != nil {
		w.cancel()
		return err
	}
	w.deadCalls = newDeadCallbacks(w)
	w.errCalls = newErrorCallbacks(w)
	w.claimer.Add(1)
	go w.claimLoop()
	for range w.cfg.concurrency {
		w.runners.Add(1)
		go w.runLoop()
	}
	w.owner.Add(1)
	go w.own()
	w.io.Add(2)
	go w.writeLoop()
	go w.renewLoop()
	w.background.Add(1)
	go w.maintainLoop()
	if w.cfg.notify {
		w.background.Add(1)
		go w.listenLoop()
	}
	return nil
}

// stop implements Inbox.Stop. The sequence:
//
//  1. The claimer stops claiming. A claim in flight completes (cancelling
//     it could lose rows the database had already leased to this worker
//     until their leases ran out), is handed to the owner, and the claimer
//     tells the owner it is done.
//  2. The owner then hands back every queued row, unstarted and its
//     attempt not counted, keeps renewing the leases of the rows still
//     held, and waits for the running handlers; their results and the
//     handed-back rows are written. When nothing is held and no write is
//     in flight, the owner returns and the runners, the writer and the
//     renewer end.
//  3. Maintenance and the listener stop; the dead callbacks still owed
//     are delivered and the error callbacks queued are passed on; the
//     worker's heartbeat row is deleted.
//
// If ctx ends first (a hard stop), Stop cancels the running handlers'
// contexts and every statement in flight, abandons what is left and
// returns ctx's error. Rows still held are then left to their leases, and
// dead callbacks still owed to another Inbox's adoption (see DeadCallback).
func (w *worker) stop(ctx context.Context) error {
	close(w.stopClaims)
	err := waitCtx(ctx, &w.claimer, &w.owner, &w.runners)
	if err != nil {
		w.cancelHandlers(fmt.Errorf("inbox: Stop's context ended: %w", context.Cause(ctx)))
		w.cancelIO()
		close(w.hardStop)
		w.owner.Wait()
	}
	w.io.Wait()
	w.cancel()
	w.background.Wait()
	if cerr := w.deadCalls.stop(ctx); err == nil {
		err = cerr
	}
	if cerr := w.errCalls.stop(ctx); err == nil {
		err = cerr
	}
	if err == nil {
		// Leave the table as a stopped worker should: no live heartbeat.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, derr := w.db.exec(dctx, workerDeleteSQL, pgUUID(w.id)); derr != nil {
			w.log.Error("inbox: remove worker heartbeat", "error", derr)
		}
	}
	return err
}

// waitCtx waits for the groups in order, or until ctx ends.
func waitCtx(ctx context.Context, groups ...*sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		for _, g := range groups {
			g.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// send passes an event to the owner, unless the owner has returned.
func (w *worker) send(ev event) {
	select {
	case w.events <- ev:
	case <-w.ownerDone:
	}
}

// report sends an error of the machinery to the log and the error callback.
func (w *worker) report(err error) {
	err = bound(err)
	w.log.Error("inbox: worker error", "error", err)
	w.errCalls.add(err)
}

// grace is how long a runner waits for a handler whose context has ended
// before it records the attempt as failed and frees the slot.
func (w *worker) grace() time.Duration {
	return min(w.cfg.lease/3, time.Second)
}

// own is the owner goroutine: every change of a held row happens here.
func (w *worker) own() {
	defer w.owner.Done()
	defer close(w.ownerDone)
	defer close(w.jobs)
	defer close(w.writes)
	defer close(w.renewals)

	h := newHeld(w.routes.list, w.cfg.concurrency, w.cfg.concurrency+w.cfg.batchSize, w.grace())
	minClaim := max(1, w.cfg.batchSize/2)
	ticker := time.NewTicker(w.cfg.lease / 3)
	defer ticker.Stop()
	var planWanted, stopping, writing, renewing bool
	lastRenewed := time.Now()
	for {
		now := time.Now()
		for j := h.start(now); j != nil; j = h.start(now) {
			j.ctx, j.cancel = context.WithCancelCause(w.handlerCtx)
			w.jobs <- j // never blocks: at most concurrency jobs are out
		}
		if planWanted {
			if p, ok := h.plan(w.cfg.batchSize, minClaim); ok {
				w.plans <- p // never blocks: the claimer asked once
				planWanted = false
			}
		}
		if !writing {
			if batch := h.takeWrites(); len(batch) > 0 {
				w.writes <- batch // never blocks: the writer is idle
				writing = true
			}
		}
		if stopping && h.idle() && !writing {
			return
		}
		select {
		case ev := <-w.events:
			switch ev := ev.(type) {
			case claimedEv:
				h.add(ev.jobs)
			case wantPlanEv:
				planWanted = true
			case claimerDoneEv:
				stopping = true
				h.release()
			case resultEv:
				if ev.abandoned {
					// Its runner is stuck in the handler: another takes its place.
					w.runners.Add(1)
					go w.runLoop()
				}
				h.finish(ev.job, ev.res)
			case writtenEv:
				writing = false
				h.written(ev.jobs)
			case renewedEv:
				renewing = false
				if ev.err != nil {
					w.report(fmt.Errorf("inbox: renew leases: %w", ev.err))
					if time.Since(lastRenewed) >= w.cfg.lease*2/3 {
						cancel, n := h.loseAll()
						w.cancelLost(cancel, "renewals failed for too long")
						if n > 0 {
							w.report(fmt.Errorf("%w: leases of %d rows could not be renewed in time; they will be retried", ErrLeaseLost, n))
						}
					}
					continue
				}
				lastRenewed = now
				if cancel, n := h.lose(ev.lost); n > 0 {
					w.cancelLost(cancel, "taken over")
					w.report(fmt.Errorf("%w: %d rows were taken over by another worker or removed", ErrLeaseLost, n))
				}
			}
		case <-ticker.C:
			if renewing {
				continue // the last renewal is still running
			}
			jobs := h.renewals(now)
			if len(jobs) == 0 {
				lastRenewed = now
				continue
			}
			items := make([]renewItem, len(jobs))
			for i, j := range jobs {
				items[i] = renewItem{j.rowID, j.attempt}
			}
			w.renewals <- items // never blocks: the renewer is idle
			renewing = true
		case <-w.hardStop:
			return
		}
	}
}

// cancelLost cancels the handlers of rows whose leases were lost.
func (w *worker) cancelLost(jobs []*job, why string) {
	for _, j := range jobs {
		j.cancel(ErrLeaseLost)
		w.log.Warn("inbox: lease lost; cancelling the handler", "event_id", j.id, "handler_key", j.key,
			"attempt", j.attempt, "reason", why)
	}
}

// signal wakes whoever waits on ch, without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sleep waits for d or until done is closed, and reports which.
func sleep(d time.Duration, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// retry runs fn until it succeeds, ctx ends, or a lease has passed since
// the first failure: by then the rows are no longer the worker's to write.
func (w *worker) retry(ctx context.Context, what string, fn func() error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil {
			return nil
		}
		err = fmt.Errorf("inbox: %s: %w", what, err)
		if ctx.Err() != nil {
			return err
		}
		w.report(err)
		if time.Since(start) > w.cfg.lease {
			return err
		}
		if !sleep(retryDelay(attempt, 50*time.Millisecond, w.cfg.lease/4, rand.Float64()), ctx.Done()) {
			return err
		}
	}
}

var errStopped = errors.New("inbox: worker stopped")
