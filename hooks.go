package inbox

import (
	"context"
	"log/slog"
	"runtime/debug"
	"time"
)

// Hooks observe an Inbox, for metrics and tracing; pass them with
// [WithHooks]. Every field is optional: an Inbox without hooks pays one nil
// check per event it would report.
//
// Hooks are called synchronously, from the goroutine that did the work:
// OnSet from the caller of Set, OnClaim from the claimer, OnRun from the
// handler's runner once the run's result is on its way, OnWrite from the
// result writer, OnDead from the result writer or (for rows a claim found
// dead) the claimer, OnRetention from the maintenance goroutine. None is
// called from the goroutine that renews leases, so a slow hook delays only
// later work of its own kind; still, hooks must return quickly (record a
// metric, end a span) and must not call the Inbox. A hook that panics is
// recovered and the panic logged.
type Hooks struct {
	// OnSet is called after each Set, SetTx and their WithResult forms,
	// with the caller's context: those that stored, and those refused
	// (bad input, a full backlog) or failed, with their error.
	OnSet func(ctx context.Context, e SetEvent)
	// OnClaim is called after each claim statement.
	OnClaim func(e ClaimEvent)
	// OnRun is called after each handler run, with the context the
	// handler got (its values include the [Attempt], the stored trace and
	// what middleware added, such as a span; it may be cancelled already).
	OnRun func(ctx context.Context, e RunEvent)
	// OnWrite is called after each batch of results is written (one
	// statement, or two when some rows moved since they were claimed).
	OnWrite func(e WriteEvent)
	// OnDead is called for each row that died, once its death is written:
	// its attempts used up, discarded, or its last lease expired. It is
	// called whether or not a dead callback is set.
	OnDead func(rec DeadRecord)
	// OnRetention is called after each retention run of this Inbox.
	OnRetention func(e RetentionEvent)
}

// SetEvent describes one Set.
type SetEvent struct {
	// Result is what Set did; zero when it failed.
	Result SetResult
	// Records is the number of records given.
	Records int
	// Tx reports SetTx: the rows are stored only if the caller's
	// transaction commits.
	Tx       bool
	Duration time.Duration
	// Err is the error Set returned, nil on success.
	Err error
}

// ClaimEvent describes one claim statement.
type ClaimEvent struct {
	// Rows is the number of rows claimed to run.
	Rows int
	// Rescued counts the rows among them whose lease had expired (their
	// worker died or lost the database).
	Rescued int
	// Died counts rows the claim found dead: their last lease expired at
	// their attempt limit.
	Died     int
	Duration time.Duration
	Err      error
}

// Outcome is how a handler run ended, as [RunEvent] reports it.
type Outcome string

const (
	// OutcomeDone: the handler succeeded (a TxHandler's transaction
	// committed).
	OutcomeDone Outcome = "done"
	// OutcomeFailed: the run failed and the row will be retried.
	OutcomeFailed Outcome = "failed"
	// OutcomeDead: the run failed at the row's attempt limit; the row dies.
	OutcomeDead Outcome = "dead"
	// OutcomeDiscarded: the handler returned [Discard]; the row dies.
	OutcomeDiscarded Outcome = "discarded"
	// OutcomeRetryLater: the handler returned [RetryAfter]; the attempt is
	// not counted.
	OutcomeRetryLater Outcome = "retry_later"
)

// RunEvent describes one handler run.
type RunEvent struct {
	// Attempt is the run's attempt; its Payload is shared with the handler
	// and must not be modified.
	Attempt Attempt
	Outcome Outcome
	// Err is the run's failure (bounded to [MaxErrorLength] bytes), nil
	// when done.
	Err error
	// Duration is how long the middleware and handler ran.
	Duration time.Duration
	// Lag is the time from the row being stored to this run starting.
	Lag time.Duration
}

// WriteEvent describes one statement writing results.
type WriteEvent struct {
	// Rows is the number of results written.
	Rows int
	// Lost counts results not written because the worker no longer held
	// the row's lease ([ErrLeaseLost]); those rows run again.
	Lost     int
	Duration time.Duration
	Err      error
}

// RetentionEvent describes one retention run.
type RetentionEvent struct {
	RowsDeleted    int64
	PayloadsErased int64
	Duration       time.Duration
	Err            error
}

// WithHooks adds hooks that observe the Inbox (see [Hooks]). Each call
// adds a set; the sets are called in the order given.
func WithHooks(h Hooks) Option {
	return func(c *config) error {
		c.hooks = append(c.hooks, h)
		return nil
	}
}

// hooks are the sets of hooks of an Inbox, nil when none was given.
type hooks []Hooks

// recovered logs a panic of the hook named name; deferred by each call of
// a hook, it recovers the panic itself.
func recovered(log *slog.Logger, name string) {
	if p := recover(); p != nil {
		log.Error("inbox: hook panicked; recovered", "hook", name, "panic", p, "stack", string(debug.Stack()))
	}
}

// Each method calls one kind of hook of every set, recovering panics,
// without allocating: a call is a deferred function and an indirect call.

func (hs hooks) set(log *slog.Logger, ctx context.Context, e SetEvent) {
	for i := range hs {
		callCtx(log, "OnSet", hs[i].OnSet, ctx, &e)
	}
}

func (hs hooks) claim(log *slog.Logger, e ClaimEvent) {
	for i := range hs {
		call(log, "OnClaim", hs[i].OnClaim, &e)
	}
}

func (hs hooks) run(log *slog.Logger, ctx context.Context, e RunEvent) {
	for i := range hs {
		callCtx(log, "OnRun", hs[i].OnRun, ctx, &e)
	}
}

func (hs hooks) write(log *slog.Logger, e WriteEvent) {
	for i := range hs {
		call(log, "OnWrite", hs[i].OnWrite, &e)
	}
}

func (hs hooks) dead(log *slog.Logger, rec DeadRecord) {
	for i := range hs {
		call(log, "OnDead", hs[i].OnDead, &rec)
	}
}

func (hs hooks) retention(log *slog.Logger, e RetentionEvent) {
	for i := range hs {
		call(log, "OnRetention", hs[i].OnRetention, &e)
	}
}

// call calls hook f, if set, with *e.
func call[E any](log *slog.Logger, name string, f func(E), e *E) {
	if f == nil {
		return
	}
	defer recovered(log, name)
	f(*e)
}

// callCtx calls hook f, if set, with ctx and *e.
func callCtx[E any](log *slog.Logger, name string, f func(context.Context, E), ctx context.Context, e *E) {
	if f == nil {
		return
	}
	defer recovered(log, name)
	f(ctx, *e)
}

// OutcomeOf returns how a run of attempt a that returned err ends, as the
// inbox records it: for middleware, which returns before the outcome is
// known. A middleware further out may still change err.
func OutcomeOf(a Attempt, err error) Outcome {
	if err == nil {
		return OutcomeDone
	}
	if o, ok := outcomeOf(err); ok {
		if o.discard {
			return OutcomeDiscarded
		}
		return OutcomeRetryLater
	}
	if a.Number >= a.MaxAttempts {
		return OutcomeDead
	}
	return OutcomeFailed
}

// outcome is how a run with result r ended, for a job at attempt of max.
func (r result) outcome(attempt, maxAttempts int) Outcome {
	switch r.kind {
	case resDone, resCommitted:
		return OutcomeDone
	case resDiscard:
		return OutcomeDiscarded
	case resRetryAfter:
		return OutcomeRetryLater
	}
	if attempt >= maxAttempts {
		return OutcomeDead
	}
	return OutcomeFailed
}
