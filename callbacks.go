package inbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// Callbacks are guests: they run in goroutines of their own, where a slow
// or blocked callback delays only later callbacks, and a panic is recovered
// and logged.

// deadPage is how many owed dead callbacks one statement takes.
const deadPage = 100

// maxRememberedDead bounds the dead records kept in memory with their
// handler's own error; beyond it, a callback gets the stored text.
const maxRememberedDead = 1000

// deadCallbacks delivers the dead callbacks this worker owes. The table is
// the queue: a row that dies records the worker in dead_callback_by, and
// the dispatcher reads such rows a page at a time, calls the callback for
// each, and clears the mark once the callback has returned: a callback is
// delivered at least once, also when the process dies during it (another
// Inbox adopts the marks of workers that are gone). Memory holds at most a
// page, plus up to maxRememberedDead records with the handler's original
// error.
type deadCallbacks struct {
	w      *worker
	on     bool
	wake   chan struct{}
	quit   chan struct{}
	done   chan struct{}
	ctx    context.Context // passed to the callback; ends on a hard stop
	cancel context.CancelFunc
	mu     sync.Mutex
	kept   map[rowID]keptDead
}

// keptDead is a dead record kept with its handler's own error, for the
// death of the row at one claim: an operator may have replayed the row
// since, and a later death of it is another.
type keptDead struct {
	rec    DeadRecord
	claims int
}

func newDeadCallbacks(w *worker) *deadCallbacks {
	d := &deadCallbacks{w: w, on: w.cfg.hasDead, wake: make(chan struct{}, 1), quit: make(chan struct{}),
		done: make(chan struct{}), kept: make(map[rowID]keptDead)}
	d.ctx, d.cancel = context.WithCancel(context.WithoutCancel(w.ctx))
	if !d.on {
		close(d.done)
		return d
	}
	go d.loop()
	return d
}

// remember keeps rec, with its original error, for the callback of the
// row's death at claim claims. When maxRememberedDead records are kept,
// one of them (whose callback may never come: an operator replayed or
// deleted its row) makes room; its callback gets the stored text.
func (d *deadCallbacks) remember(k rowID, claims int, rec DeadRecord) {
	if !d.on {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.kept[k]; !ok && len(d.kept) >= maxRememberedDead {
		for old := range d.kept {
			delete(d.kept, old)
			break
		}
	}
	d.kept[k] = keptDead{rec: rec, claims: claims}
}

// forget drops a record whose row did not die after all.
func (d *deadCallbacks) forget(k rowID) {
	d.mu.Lock()
	delete(d.kept, k)
	d.mu.Unlock()
}

// take returns the record kept for the row's death at claim claims.
func (d *deadCallbacks) take(k rowID, claims int) (DeadRecord, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	kd, ok := d.kept[k]
	delete(d.kept, k)
	return kd.rec, ok && kd.claims == claims
}

// signal says that callbacks may be owed.
func (d *deadCallbacks) signal() {
	if d.on {
		signal(d.wake)
	}
}

// stop delivers what is owed, waiting until ctx ends.
func (d *deadCallbacks) stop(ctx context.Context) error {
	if d.on {
		close(d.quit)
	}
	select {
	case <-d.done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		return ctx.Err()
	}
}

func (d *deadCallbacks) loop() {
	defer close(d.done)
	d.w.markGuest()
	defer d.w.unmarkGuest()
	failures := 0
	for {
		quitting := false
		var retry <-chan time.Time
		if failures > 0 {
			retry = time.After(retryDelay(failures, 100*time.Millisecond, 5*time.Second, rand.Float64()))
		}
		select {
		case <-d.wake:
		case <-retry:
		case <-d.quit:
			quitting = true
		case <-d.ctx.Done():
			return
		}
		for {
			n, err := d.deliverPage()
			if err != nil {
				if d.ctx.Err() == nil {
					d.w.report(fmt.Errorf("inbox: dead callbacks: %w", err))
				}
				failures++
				break
			}
			failures = 0
			if n < deadPage {
				break
			}
		}
		if quitting || d.ctx.Err() != nil {
			return
		}
	}
}

// deliverPage reads up to a page of owed callbacks and calls the callback
// for each; then it clears the marks of those delivered. A crash in between
// delivers them again: at least once. It returns how many it delivered.
func (d *deadCallbacks) deliverPage() (int, error) {
	rows, err := d.w.db.query(d.ctx, deadCallbacksSQL, pgUUID(d.w.id), deadPage)
	if err != nil {
		return 0, err
	}
	var recs []DeadRecord
	var ctids []pgtype.TID
	var ctid pgtype.TID
	var id pgtype.UUID
	var rec DeadRecord
	var text string
	var claims int
	_, err = pgx.ForEachRow(rows, []any{&ctid, &id, &rec.EventType, &rec.HandlerKey, &rec.Attempts, &text, &claims}, func() error {
		rec.EventID = id.Bytes
		if kept, ok := d.take(rowID{rec.EventID, rec.HandlerKey}, claims); ok {
			recs = append(recs, kept)
		} else {
			rec.Err = errorFromText(text)
			recs = append(recs, rec)
		}
		ctids = append(ctids, ctid)
		return nil
	})
	if err != nil {
		return 0, err
	}
	delivered := 0
	for _, rec := range recs {
		if d.ctx.Err() != nil {
			break
		}
		if err := guest(func() error { d.w.cfg.onDead(d.ctx, rec); return nil }); err != nil {
			var pe *PanicError
			errors.As(err, &pe)
			d.w.log.Error("inbox: dead callback panicked; going on with the next", "event_id", rec.EventID,
				"handler_key", rec.HandlerKey, "panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
		}
		delivered++
	}
	if delivered == 0 {
		return 0, d.ctx.Err()
	}
	ids := make([]pgtype.UUID, delivered)
	keys := make([]string, delivered)
	for i, rec := range recs[:delivered] {
		ids[i], keys[i] = pgUUID(rec.EventID), rec.HandlerKey
	}
	// The marks are cleared even after a hard stop: the callbacks ran.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(d.ctx), 5*time.Second)
	defer cancel()
	err = d.w.db.tidOnly(ctx, func(pgx.Rows) error { return nil }, deadCallbacksDoneSQL,
		[]any{ctids[:delivered], ids, keys, pgUUID(d.w.id)}, nil, nil)
	if err != nil {
		return delivered, fmt.Errorf("clear the marks of delivered callbacks (they will be delivered again): %w", err)
	}
	return delivered, d.ctx.Err()
}

// errorFromText rebuilds a failure from its stored text, wrapping the
// package's errors the text shows.
func errorFromText(text string) error {
	te := &textError{text: text}
	switch {
	case strings.HasPrefix(text, "attempt ") && strings.Contains(text, lostAttemptText):
		te.is = append(te.is, ErrLeaseExpired)
	case strings.HasPrefix(text, "discarded") || strings.Contains(text, ": discarded"):
		te.is = append(te.is, ErrDiscarded)
	}
	for _, s := range []error{ErrHandlerTimeout, ErrLeaseLost, ErrTxControl} {
		if strings.Contains(text, s.Error()) {
			te.is = append(te.is, s)
		}
	}
	return te
}

// errorBacklog bounds the errors waiting for the error callback.
const errorBacklog = 1000

// errorCallbacks passes machinery errors to the error callback, in order,
// from a goroutine of its own.
type errorCallbacks struct {
	w       *worker
	on      bool
	mu      sync.Mutex
	closed  bool
	ch      chan error
	dropped atomic.Int64
	done    chan struct{}
}

func newErrorCallbacks(w *worker) *errorCallbacks {
	e := &errorCallbacks{w: w, on: w.cfg.hasError, ch: make(chan error, errorBacklog), done: make(chan struct{})}
	if !e.on {
		close(e.done)
		return e
	}
	go e.loop()
	return e
}

// add queues err for the callback, counting it as dropped when the
// callback is too far behind.
func (e *errorCallbacks) add(err error) {
	if !e.on {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	select {
	case e.ch <- err:
	default:
		e.dropped.Add(1)
	}
}

func (e *errorCallbacks) loop() {
	defer close(e.done)
	e.w.markGuest()
	defer e.w.unmarkGuest()
	for err := range e.ch {
		e.call(err)
		if n := e.dropped.Swap(0); n > 0 {
			e.call(fmt.Errorf("%w: %d errors left out because the error callback fell behind; each was logged", ErrErrorsDropped, n))
		}
	}
}

func (e *errorCallbacks) call(err error) {
	if perr := guest(func() error { e.w.cfg.onError(err); return nil }); perr != nil {
		var pe *PanicError
		errors.As(perr, &pe)
		e.w.log.Error("inbox: error callback panicked; going on with the next", "panic", fmt.Sprint(pe.Value),
			"stack", string(pe.Stack))
	}
}

// stop passes on what is queued, waiting until ctx ends.
func (e *errorCallbacks) stop(ctx context.Context) error {
	e.mu.Lock()
	if !e.closed && e.on {
		e.closed = true
		close(e.ch)
	}
	e.mu.Unlock()
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
