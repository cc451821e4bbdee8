package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The worker of one Inbox is a pipeline:
//
//	claimer ──jobs──▶ runners (concurrency) ──results──▶ completer
//
// The claimer takes due rows in batches, leasing them; runners run the
// handlers; the completer writes results in set-based statements and
// renews the leases of every row the worker holds. A worker holds at most
// concurrency + batch size rows. A runner's slot frees when its handler
// returns, not when the result is written.

// rowKey identifies a row.
type rowKey struct {
	id  uuid.UUID
	key string
}

// job is a claimed row. Fields below mu are guarded by worker.mu.
type job struct {
	rowKey
	eventType string
	payload   []byte
	attempts  int
	handler   Handler
	timeout   time.Duration

	// guarded by worker.mu
	started  bool
	finished bool
	lost     bool
	// committing: a TxHandler's transaction has marked the row done and
	// holds its lock, so no other worker can take the row over; a renewal
	// that misses the row saw that commit, not a lost lease.
	committing bool
	renewUntil time.Time
	cancel     context.CancelCauseFunc
}

// result is what a runner hands the completer.
type result struct {
	job *job
	err error
	// written: a TxHandler marked the row done in its own transaction.
	written bool
	// released: the handler never started; give the row back.
	released bool
	// lost: the worker no longer held the row when it tried to write.
	lost bool
}

type worker struct {
	ib     *Inbox
	cfg    *config
	log    *slog.Logger
	routes *routes
	id     uuid.UUID

	ctx    context.Context // lives until the worker has stopped
	cancel context.CancelFunc

	callbackCtx    context.Context // passed to the dead callback; ends after the last call
	cancelCallback context.CancelFunc

	claimCtx    context.Context // ends when stop begins: claim no more
	cancelClaim context.CancelFunc

	writeCtx    context.Context // for the completer's writes; ends on a hard stop
	cancelWrite context.CancelFunc

	handlerCtx    context.Context // parent of handler contexts
	cancelHandler context.CancelCauseFunc

	capacity int
	inflight atomic.Int64 // claimed rows whose handler has not returned

	jobs      chan *job
	results   chan result
	wake      chan struct{} // a notification arrived
	resched   chan struct{} // nextDue moved earlier
	nextDue   atomic.Int64  // unix nanos of the earliest retry this worker wrote, or 0
	slotFreed chan struct{} // a handler returned
	dead      chan DeadRecord

	stopRun chan struct{} // closed once the claimer is gone: start no more handlers

	mu   sync.Mutex
	held map[rowKey]*job // claimed rows whose result is not yet written

	claimer, runners, completer, background, callbacks sync.WaitGroup
}

func newWorker(ib *Inbox) *worker {
	capacity := ib.cfg.concurrency + ib.cfg.batchSize
	return &worker{
		ib:        ib,
		cfg:       &ib.cfg,
		log:       ib.cfg.logger.With("worker", ib.id),
		routes:    ib.routes,
		id:        ib.id,
		capacity:  capacity,
		jobs:      make(chan *job, capacity),
		results:   make(chan result, capacity),
		wake:      make(chan struct{}, 1),
		resched:   make(chan struct{}, 1),
		slotFreed: make(chan struct{}, 1),
		dead:      make(chan DeadRecord, 1024),
		stopRun:   make(chan struct{}),
		held:      make(map[rowKey]*job, capacity),
	}
}

func (w *worker) start(ctx context.Context) error {
	w.ctx, w.cancel = context.WithCancel(context.WithoutCancel(ctx))
	w.handlerCtx, w.cancelHandler = context.WithCancelCause(w.ctx)
	w.claimCtx, w.cancelClaim = context.WithCancel(w.ctx)
	w.writeCtx, w.cancelWrite = context.WithCancel(w.ctx)
	w.callbackCtx, w.cancelCallback = context.WithCancel(context.WithoutCancel(ctx))
	if err := w.beat(ctx); err != nil {
		w.cancel()
		w.cancelClaim()
		w.cancelWrite()
		w.cancelCallback()
		return err
	}
	w.claimer.Add(1)
	go w.claimLoop()
	for range w.cfg.concurrency {
		w.runners.Add(1)
		go w.runLoop()
	}
	w.completer.Add(1)
	go w.completeLoop()
	w.callbacks.Add(1)
	go w.deadLoop()
	w.background.Add(1)
	go w.maintainLoop()
	if w.cfg.notify {
		w.background.Add(1)
		go w.listenLoop()
	}
	return nil
}

// stop implements Inbox.Stop.
func (w *worker) stop(ctx context.Context) error {
	w.cancelClaim()
	w.claimer.Wait()
	close(w.stopRun)
	// Hand back what is queued now, even if every runner is busy.
	w.releaseQueued()

	err := waitCtx(ctx, &w.runners)
	if err != nil {
		// Hard stop: abandon running handlers to their leases.
		w.cancelHandler(fmt.Errorf("inbox: Stop's context ended: %w", context.Cause(ctx)))
		w.cancelCallback()
		w.cancelWrite()
	} else {
		close(w.results) // runners are gone; the completer flushes and returns
	}
	w.completer.Wait()
	w.cancel()
	w.background.Wait()
	close(w.dead)
	w.callbacks.Wait()
	w.cancelCallback()
	if err == nil {
		// Leave the table as a stopped worker should: no live heartbeat.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, derr := w.ib.pool.Exec(dctx, workerDeleteSQL, w.id); derr != nil {
			w.report(fmt.Errorf("inbox: remove worker heartbeat: %w", derr))
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

// report sends an error of the machinery to the log and the error callback.
func (w *worker) report(err error) {
	w.log.Error("inbox: worker error", "error", err)
	w.cfg.onError(err)
}

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

// claimLoop claims rows while there is room, polling when idle.
func (w *worker) claimLoop() {
	defer w.claimer.Done()
	minClaim := max(1, w.cfg.batchSize/2)
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		free := w.capacity - int(w.inflight.Load())
		if free < minClaim {
			select {
			case <-w.slotFreed:
				continue
			case <-w.claimCtx.Done():
				return
			}
		}
		n := min(w.cfg.batchSize, free)
		got, err := w.claim(n)
		if err != nil {
			if w.claimCtx.Err() != nil {
				return
			}
			failures++
			w.report(fmt.Errorf("inbox: claim: %w", err))
			if !sleep(retryDelay(failures, 100*time.Millisecond, 5*time.Second, rand.Float64()), w.claimCtx.Done()) {
				return
			}
			continue
		}
		failures = 0
		if got == n {
			continue // more may be due: claim again at once
		}
		if !w.idle(timer) {
			return
		}
	}
}

// idle waits for a notification, the poll delay, or the earliest retry
// this worker scheduled, whichever comes first. It returns false on stop.
func (w *worker) idle(timer *time.Timer) bool {
	poll := pollDelay(w.cfg.iterationRate, w.cfg.iterationSeed, rand.Float64())
	for {
		d := poll
		if next := w.nextDue.Load(); next != 0 {
			d = max(0, min(d, time.Until(time.Unix(0, next))))
		}
		timer.Reset(d)
		select {
		case <-w.wake:
		case <-timer.C:
			w.nextDue.Store(0) // the claim that follows takes what is due
			return true
		case <-w.resched:
			timer.Stop()
			continue
		case <-w.claimCtx.Done():
			return false
		}
		timer.Stop()
		return true
	}
}

// scheduleRetry makes the claimer wake by at.
func (w *worker) scheduleRetry(at time.Time) {
	for {
		cur := w.nextDue.Load()
		if cur != 0 && cur <= at.UnixNano() {
			return
		}
		if w.nextDue.CompareAndSwap(cur, at.UnixNano()) {
			signal(w.resched)
			return
		}
	}
}

// claim claims up to n rows and queues them for the runners. It returns
// how many rows the statement returned.
func (w *worker) claim(n int) (int, error) {
	type claimed struct {
		j                 *job
		status, lastError string
		rescued           bool
	}
	var list []claimed
	err := w.queryNoFlush(w.claimCtx, func(rows pgx.Rows) (err error) {
		list, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (claimed, error) {
			c := claimed{j: &job{}}
			err := row.Scan((*[16]byte)(&c.j.id), &c.j.eventType, &c.j.key, &c.j.payload, &c.j.attempts,
				&c.status, &c.rescued, &c.lastError)
			return c, err
		})
		return err
	}, claimSQL, w.routes.pairTypes, w.routes.pairKeys, n, w.cfg.maxAttempts, [16]byte(w.id),
		w.cfg.lease.Milliseconds(), "lease expired before a result was written (worker stopped or lost the database)")
	if err != nil {
		return 0, err
	}
	w.mu.Lock()
	runnable := 0
	for _, c := range list {
		if Status(c.status) == Progress {
			c.j.handler = w.routes.handlers[[2]string{c.j.eventType, c.j.key}]
			c.j.timeout = w.cfg.handlerTimeout
			if t, ok := c.j.handler.(timeouter); ok {
				c.j.timeout = t.Timeout()
			}
			w.held[c.j.rowKey] = c.j
			runnable++
		}
	}
	w.mu.Unlock()
	w.inflight.Add(int64(runnable))
	for _, c := range list {
		if c.rescued {
			w.log.Warn("inbox: claimed a row whose lease had expired", "event_id", c.j.id,
				"handler_key", c.j.key, "attempt", c.j.attempts, "status", c.status)
		}
		if Status(c.status) == Dead {
			w.sendDead(DeadRecord{EventID: c.j.id, EventType: c.j.eventType, HandlerKey: c.j.key,
				Attempts: c.j.attempts, Err: fmt.Errorf("%w: %s", ErrLeaseExpired, c.lastError)})
			continue
		}
		w.jobs <- c.j // never blocks: at most capacity rows are in flight
	}
	return len(list), nil
}

// queryNoFlush runs a statement whose commit does not wait for the WAL to
// reach disk (synchronous_commit off for its transaction only), passing its
// rows to scan. Only claims and lease renewals use it: if a database crash
// loses one, rows merely go back to their previous state and are claimed
// again, which the guarded result writes already allow for.
func (w *worker) queryNoFlush(ctx context.Context, scan func(pgx.Rows) error, sql string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(`SET LOCAL synchronous_commit = off`)
	b.Queue(sql, args...).Query(scan)
	return w.ib.pool.SendBatch(ctx, b).Close()
}

// runLoop runs handlers until stop.
func (w *worker) runLoop() {
	defer w.runners.Done()
	for {
		select {
		case <-w.stopRun:
			w.releaseQueued()
			return
		case j := <-w.jobs:
			if w.claimCtx.Err() != nil { // stopping: hand it back
				w.finish(result{job: j, released: true})
				continue
			}
			if !w.execute(j) {
				return // abandoned: another runner has taken this one's place
			}
		}
	}
}

// releaseQueued hands back the jobs still queued when stop began. Stop and
// the runners may call it at once: each job is taken by one of them.
func (w *worker) releaseQueued() {
	for {
		select {
		case j := <-w.jobs:
			w.finish(result{job: j, released: true})
		default:
			return
		}
	}
}

// finish frees the job's slot and passes its result to the completer.
func (w *worker) finish(r result) {
	w.mu.Lock()
	r.job.finished = true
	w.mu.Unlock()
	w.inflight.Add(-1)
	signal(w.slotFreed)
	select {
	case w.results <- r:
	case <-w.writeCtx.Done(): // hard stop: the row is left to its lease
	}
}

// grace is how long a runner waits for a handler whose context has ended
// before it records the attempt as failed and frees the slot.
func (w *worker) grace() time.Duration {
	return min(w.cfg.lease/3, time.Second)
}

// execute runs one handler in the calling runner, with its timeout,
// recovering panics. A handler that has not returned a grace period after
// its context ended is abandoned: its attempt is recorded as failed, a new
// runner takes this one's place, and execute reports false when the handler
// finally returns, so that this runner exits.
func (w *worker) execute(j *job) bool {
	ctx, cancel := context.WithCancelCause(w.handlerCtx)
	tctx, cancelTimeout := context.WithTimeoutCause(ctx, j.timeout, ErrHandlerTimeout)
	defer cancelTimeout()
	defer cancel(nil)
	w.mu.Lock()
	lost := j.lost
	j.started, j.cancel = true, cancel
	// Time.Add saturates; j.timeout + w.grace() overflows for the longest timeouts.
	j.renewUntil = time.Now().Add(j.timeout).Add(w.grace())
	w.mu.Unlock()
	if lost {
		w.finish(result{job: j, lost: true})
		return true
	}

	var state atomic.Int32 // running, then returned or abandoned
	const running, returned, abandoned = 0, 1, 2
	stopWatch := context.AfterFunc(tctx, func() {
		time.AfterFunc(w.grace(), func() {
			if !state.CompareAndSwap(running, abandoned) {
				return
			}
			w.log.Warn("inbox: handler ignores its context; abandoning it", "event_id", j.id, "handler_key", j.key)
			w.runners.Add(1)
			go w.runLoop()
			w.finish(result{job: j, err: w.failure(tctx, j, fmt.Errorf("handler did not return within %v of its context ending", w.grace()))})
		})
	})
	written, err := w.call(tctx, j)
	stopWatch()
	if !state.CompareAndSwap(running, returned) {
		return false
	}
	r := result{job: j, written: written}
	switch {
	case err == nil:
	case errors.Is(err, ErrLeaseLost):
		r.lost = true
	default:
		r.err = w.failure(tctx, j, err)
	}
	w.finish(r)
	return true
}

// failure is the error recorded for a failed attempt: when the handler's
// context ended, it says why.
func (w *worker) failure(ctx context.Context, j *job, err error) error {
	if ctx.Err() == nil {
		return err
	}
	cause := context.Cause(ctx)
	switch {
	case errors.Is(cause, ErrHandlerTimeout):
		return fmt.Errorf("%w after %v: %w", ErrHandlerTimeout, j.timeout, err)
	case errors.Is(err, cause):
		return err
	default:
		return fmt.Errorf("%w: %w", cause, err)
	}
}

// call runs the handler, turning a panic into a PanicError.
func (w *worker) call(ctx context.Context, j *job) (written bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			written, err = false, &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	if th, ok := j.handler.(TxHandler); ok {
		return w.callTx(ctx, th, j)
	}
	return false, j.handler.Process(ctx, j.payload)
}

// callTx runs a TxHandler in a transaction that also marks its row done.
func (w *worker) callTx(ctx context.Context, th TxHandler, j *job) (bool, error) {
	tx, err := w.ib.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // no-op after a commit
	}()
	if err := th.ProcessTx(ctx, tx, j.payload); err != nil {
		return false, err
	}
	tag, err := tx.Exec(ctx, completeTxSQL, [16]byte(j.id), j.key, [16]byte(w.id), j.attempts)
	if err != nil {
		return false, fmt.Errorf("mark done: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return false, fmt.Errorf("%w: row was taken over before the transaction committed; its writes were rolled back", ErrLeaseLost)
	}
	w.mu.Lock()
	j.committing = true
	w.mu.Unlock()
	// The row is locked by tx and cannot be taken over: finish the commit
	// even if the handler's context ends meanwhile, so that a commit that
	// happened is not reported as failed.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := tx.Commit(cctx); err != nil {
		w.mu.Lock()
		j.committing = false
		w.mu.Unlock()
		return false, fmt.Errorf("commit: %w", err)
	}
	return true, nil
}

func (w *worker) sendDead(rec DeadRecord) {
	w.log.Warn("inbox: row is dead", "event_id", rec.EventID, "event_type", rec.EventType,
		"handler_key", rec.HandlerKey, "attempts", rec.Attempts, "error", rec.Err)
	w.dead <- rec
}

// deadLoop calls the dead callback, one record at a time.
func (w *worker) deadLoop() {
	defer w.callbacks.Done()
	for rec := range w.dead {
		w.cfg.onDead(w.callbackCtx, rec)
	}
}
