package inbox

import (
	"context"
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
	// ioCtx carries claims and renewals; it ends only on a hard stop, so
	// that a graceful Stop lets them finish.
	ioCtx    context.Context
	cancelIO context.CancelFunc
	// writeCtx carries result writes; it ends a grace period after a hard
	// stop, so that results of handlers that returned are still written.
	writeCtx    context.Context
	cancelWrite context.CancelFunc
	// handlerCtx is the parent of every handler's context: the values of
	// Start's context, without its cancellation. Each handler's context is
	// cancelled by the owner (a lost lease, a hard stop) or its timeout;
	// none is registered with a shared parent, which every runner would
	// contend for.
	handlerCtx context.Context
	// stopCause is why handlers were cancelled by a hard stop; set before
	// hardStop is closed.
	stopCause error

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

	// txSlots bounds the TxHandler transactions open at once, so that
	// they leave the pool connections for claims, writes and renewals.
	txSlots chan struct{}

	deadCalls *deadCallbacks
	errCalls  *errorCallbacks
	guests    sync.Map // goroutine id → struct{}: goroutines that run user code

	claimer, owner, runners, io, background sync.WaitGroup
}

// event is a message to the owner: one struct, not an interface, so that
// sending one allocates nothing.
type event struct {
	kind    eventKind
	jobs    []*job         // claimed, written
	written map[rowID]bool // written: the rows whose results were written
	job     *job           // result
	res     result         // result
	renewed []renewedRow   // renewed
	lost    []renewItem    // renewed: rows no longer held
	err     error          // renewed: the renewal failed
}

type eventKind uint8

const (
	evClaimed     eventKind = iota + 1 // the claimer claimed jobs
	evWantPlan                         // the claimer waits for a plan on w.plans
	evClaimerDone                      // the claimer has stopped for good
	evResult                           // a handler returned, or was abandoned
	evWritten                          // the writer finished a batch
	evRenewed                          // the renewer finished
)

// renewItem is a row whose lease to renew, and the claim it is held for.
type renewItem struct {
	rowID
	claim int
}

// renewedRow is a row whose lease was renewed, and where it is now.
type renewedRow struct {
	renewItem
	ctid pgtype.TID
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
		txSlots:    make(chan struct{}, txSlotsFor(ib.db.pool.Config().MaxConns)),
	}
	if cfg.hasDead {
		w.deadBy = pgUUID(ib.id)
	}
	return w
}

func (w *worker) start(ctx context.Context) error {
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	w.ioCtx, w.cancelIO = context.WithCancel(w.ctx)
	w.writeCtx, w.cancelWrite = context.WithCancel(context.WithoutCancel(w.ctx))
	w.handlerCtx = context.WithoutCancel(ctx)
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
		w.stopCause = fmt.Errorf("inbox: Stop's context ended: %w", context.Cause(ctx))
		w.cancelIO()
		time.AfterFunc(w.grace(), w.cancelWrite)
		close(w.hardStop) // the owner cancels the running handlers
		w.owner.Wait()
	}
	w.io.Wait()
	w.cancelWrite()
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

// reservedConns is how many of the pool's connections TxHandler
// transactions leave free: for the claimer, the writer and the renewer.
const reservedConns = 3

// txSlotsFor is how many TxHandler transactions a worker opens at once on
// a pool of maxConns connections.
func txSlotsFor(maxConns int32) int { return int(max(1, maxConns-reservedConns)) }

// grace is how long a runner waits for a handler whose context has ended
// before it records the attempt as failed and frees the slot.
func (w *worker) grace() time.Duration {
	return min(w.cfg.lease/3, time.Second)
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
