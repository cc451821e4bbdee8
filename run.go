package inbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// runLoop runs the jobs the owner hands it until the owner closes jobs.
func (w *worker) runLoop() {
	defer w.runners.Done()
	w.markGuest()
	defer w.unmarkGuest()
	for j := range w.jobs {
		if !w.execute(j) {
			return // abandoned: another runner has taken this one's place
		}
	}
}

// execute runs one job with its timeout and reports the result to the
// owner, unless the owner abandoned the handler meanwhile (it ignored its
// context past the grace period, see owner.watch): then execute reports
// false once the handler returns, so that this runner exits, another
// having taken its place.
func (w *worker) execute(j *job) bool {
	tctx, cancel := context.WithTimeoutCause(j.ctx, j.route.timeout, ErrHandlerTimeout)
	defer cancel()
	defer j.cancel(nil)
	var res result
	started := time.Now()
	hctx := tctx // the context the handler got, for the hooks
	if j.ctx.Err() != nil {
		// Cancelled before it started (a lost lease, a hard stop): the
		// handler is not called.
		res = w.failed(tctx, j, context.Cause(j.ctx))
	} else {
		hctx = w.traced(tctx, j)
		res = w.run(hctx, j, &hctx)
	}
	took := time.Since(started)
	returned := j.run.CompareAndSwap(jobRunning, jobReturned)
	if returned {
		w.send(event{kind: evResult, job: j, res: res})
	} else {
		// The owner abandoned the run past its timeout and recorded that.
		res = result{kind: resFailed, err: ErrHandlerTimeout}
	}
	if w.cfg.hooks != nil {
		// After the result is on its way: a slow hook delays this runner's
		// next job, not this row's result.
		w.cfg.hooks.run(w.log, hctx, RunEvent{Attempt: j.actx.a, Outcome: res.outcome(j.attempt, j.maxAttempts), Err: res.err,
			Duration: took, Lag: started.Sub(j.storedAt)})
	}
	return returned
}

// Where a running job's handler is, for its runner and the owner.
const (
	jobRunning int32 = iota
	jobReturned
	jobAbandoned
)

// run runs the middleware chain and the handler, and turns what they
// returned into the attempt's result. It sets *hctx to the context the
// middleware passed to the handler.
func (w *worker) run(ctx context.Context, j *job, hctx *context.Context) result {
	payload := j.payload
	if j.withheld {
		err := w.db.queryRow(ctx, payloadSQL, pgUUID(j.id), j.key, pgUUID(w.id), j.claim).Scan(&payload)
		if err != nil {
			return w.failed(ctx, j, fmt.Errorf("inbox: read the payload: %w", err))
		}
		j.actx.a.Payload = payload
	}
	if len(w.cfg.middleware) == 0 {
		var err error
		if j.route.tx != nil {
			var committed bool
			if committed, err = w.runTx(ctx, j, payload); committed {
				return result{kind: resCommitted}
			}
		} else {
			err = process(ctx, j.route.handler, payload)
		}
		if err == nil {
			return result{kind: resDone}
		}
		return w.failed(ctx, j, err)
	}

	var called, committed bool
	var innerErr error
	next := func(ctx context.Context) error {
		if called {
			return errors.New("inbox: middleware called next more than once")
		}
		called = true
		*hctx = ctx
		if j.route.tx != nil {
			committed, innerErr = w.runTx(ctx, j, payload)
		} else {
			innerErr = process(ctx, j.route.handler, payload)
		}
		return innerErr
	}
	err := w.chain(ctx, j.actx.a, next)
	switch {
	case committed:
		if err != nil {
			w.log.Warn("inbox: middleware returned an error after the TxHandler's transaction committed; the row is done",
				"event_id", j.id, "handler_key", j.key, "error", bound(err))
		}
		return result{kind: resCommitted}
	case err == nil && j.route.tx != nil && called && innerErr != nil:
		err = innerErr // a TxHandler whose writes rolled back cannot be done
	case err == nil:
		return result{kind: resDone}
	}
	return w.failed(ctx, j, err)
}

// process calls a plain handler, turning a panic into a *PanicError. It is
// guest without the closure, for the common case.
func process(ctx context.Context, h Handler, payload []byte) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return h.Process(ctx, payload)
}

// chain runs the middleware around next, the first outermost.
func (w *worker) chain(ctx context.Context, a Attempt, next func(context.Context) error) error {
	for i := len(w.cfg.middleware) - 1; i >= 0; i-- {
		mw, inner := w.cfg.middleware[i], next
		next = func(ctx context.Context) error {
			return guest(func() error { return mw(ctx, a, inner) })
		}
	}
	return next(ctx)
}

// failed is the result of a failed attempt: the outcome the error asks
// for, with the reason the context ended when it did.
func (w *worker) failed(ctx context.Context, j *job, err error) result {
	if o, ok := outcomeOf(err); ok {
		kind := resDiscard
		if !o.discard {
			kind = resRetryAfter
		}
		e, text := compact(err)
		return result{kind: kind, err: e, text: text, etype: ErrorType(err), after: o.after}
	}
	if ctx.Err() != nil {
		switch cause := context.Cause(ctx); {
		case errors.Is(cause, ErrHandlerTimeout):
			err = fmt.Errorf("%w after %v: %w", ErrHandlerTimeout, j.route.timeout, err)
		case errors.Is(err, cause):
		default:
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	e, text := compact(err)
	return result{kind: resFailed, err: e, text: text, etype: ErrorType(err)}
}

// guest calls user code, turning a panic into a *PanicError.
//
//go:noinline
func guest(fn func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
	}()
	return fn()
}

// runTx runs a TxHandler in a transaction that also marks its row done,
// and reports whether that transaction committed. At most txSlotsFor(pool
// size) of a worker's TxHandlers hold a transaction at once; the others
// wait, within their timeouts, as they would for the pool.
func (w *worker) runTx(ctx context.Context, j *job, payload []byte) (bool, error) {
	select {
	case w.txSlots <- struct{}{}:
		defer func() { <-w.txSlots }()
	case <-ctx.Done():
		return false, fmt.Errorf("wait for a connection: %w", context.Cause(ctx))
	}
	tx, err := w.db.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("begin transaction: %w", err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = tx.Rollback(rctx) // no-op after a commit
	}()
	htx := &handlerTx{Tx: tx}
	err = guest(func() error { return j.route.tx.ProcessTx(ctx, htx, payload) })
	if htx.misused != "" {
		return false, fmt.Errorf("%w: ProcessTx called %s; return nil to commit, an error to roll back", ErrTxControl, htx.misused)
	}
	if err != nil {
		return false, err
	}
	switch tx.Conn().PgConn().TxStatus() {
	case 'T':
	case 'E':
		return false, errors.New("inbox: a statement of the TxHandler failed, but ProcessTx returned nil; its writes were rolled back")
	default:
		return false, fmt.Errorf("%w: the transaction was ended by a statement of ProcessTx (COMMIT or ROLLBACK); return nil to commit, an error to roll back", ErrTxControl)
	}
	// The key's lock comes before the row's, as in every other writer.
	var next promotions
	if !j.nextAtStart { // else the next row is this worker's, blocked behind this one
		next.add(j, string(Done))
	}
	lock, promote := next.stmts(w.cfg.notify)
	if err := execAll(ctx, tx, w.db, lock); err != nil {
		return false, fmt.Errorf("lock ordering key %q: %w", j.order, err)
	}
	tag, err := tx.Exec(ctx, completeTxSQL, w.db.args([]any{pgUUID(j.id), j.key, pgUUID(w.id), j.claim})...)
	if err != nil {
		return false, fmt.Errorf("mark done: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return false, fmt.Errorf("%w: row was taken over before the transaction committed; its writes were rolled back", ErrLeaseLost)
	}
	if err := execAll(ctx, tx, w.db, promote); err != nil {
		return false, fmt.Errorf("make the next row of ordering key %q due: %w", j.order, err)
	}
	// The row is locked by tx and cannot be taken over: finish the commit
	// even if the handler's context ends meanwhile, so that a commit that
	// happened is not reported as failed.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := tx.Commit(cctx); err != nil {
		return false, fmt.Errorf("commit: %w", err)
	}
	return true, nil
}

// handlerTx is the transaction a TxHandler gets: Commit and Rollback are
// refused, and recorded, so that the attempt fails with a message that
// says what went wrong.
type handlerTx struct {
	pgx.Tx
	misused string
}

// Commit does not commit: the inbox commits the transaction.
func (t *handlerTx) Commit(context.Context) error {
	t.misused = "Commit"
	return fmt.Errorf("%w: the inbox commits it when ProcessTx returns nil", ErrTxControl)
}

// Rollback does not roll back: the inbox rolls the transaction back when
// ProcessTx returns an error.
func (t *handlerTx) Rollback(context.Context) error {
	t.misused = "Rollback"
	return fmt.Errorf("%w: return an error from ProcessTx to roll back", ErrTxControl)
}

// markGuest records that the calling goroutine runs user code of this
// worker, so that Stop called from it can be refused.
func (w *worker) markGuest()   { w.guests.Store(goid(), struct{}{}) }
func (w *worker) unmarkGuest() { w.guests.Delete(goid()) }

// inGuest reports whether the calling goroutine runs this worker's user
// code, or ctx belongs to one of its handler runs.
func (w *worker) inGuest(ctx context.Context) bool {
	if v, ok := ctx.Value(attemptKey{}).(*attemptCtx); ok && v.owner == w {
		return true
	}
	_, ok := w.guests.Load(goid())
	return ok
}

// goid returns the calling goroutine's id, from the first line of its
// stack trace ("goroutine 123 [running]:"). It is called once per
// long-lived goroutine and by Stop, never per row.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, _ := strconv.ParseUint(string(b), 10, 64)
	return id
}

// execAll runs the statements in tx.
func execAll(ctx context.Context, q querier, d db, stmts []stmt) error {
	for _, s := range stmts {
		if _, err := q.Exec(ctx, s.sql, d.args(s.args)...); err != nil {
			return err
		}
	}
	return nil
}
