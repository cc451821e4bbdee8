package inbox

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// Attempt describes one run of a handler for one event. [Middleware] gets
// it, and a handler finds it in its context with [AttemptFromContext] (for
// example to use the event id as an idempotency key downstream).
type Attempt struct {
	EventID    uuid.UUID
	EventType  string
	HandlerKey string
	// Number is the attempt's number, from 1. Attempts that ended with
	// [RetryAfter] or were handed back unstarted are not counted.
	Number int
	// MaxAttempts is the row's attempt limit.
	MaxAttempts int
	// Payload is the event body. It is shared with the handler: do not
	// modify it.
	Payload []byte
	// StoredAt is when Set stored the row; the time from StoredAt to the
	// run is the event's lag in the inbox.
	StoredAt time.Time
	// Transactional reports a [TxHandler], which runs inside the
	// transaction that marks its row done.
	Transactional bool
	// TraceContext is the trace context stored with the row by
	// [WithPropagator], "" for none.
	TraceContext string
}

// Middleware wraps every handler run of an Inbox, for logging, metrics,
// tracing or policies: it gets the attempt and next, which runs the rest of
// the chain and the handler, and returns the attempt's outcome. It may pass
// next a derived context, and may return an error of its own, including
// [Discard] or [RetryAfter]; what it returns is recorded as the attempt's
// result. It must call next at most once.
//
// Middleware cannot break a [TxHandler]'s guarantee: the handler's writes
// commit together with the row's completion. When next returned nil, the
// transaction has committed and the row is done whatever the middleware
// returns (an error it returns then is logged, not recorded); when next
// returned an error, the writes were rolled back and the row cannot be
// marked done, so a middleware that returns nil then records next's error.
// A middleware that returns nil without calling next marks the row done
// without running the handler.
type Middleware func(ctx context.Context, a Attempt, next func(context.Context) error) error

type attemptKey struct{}

// attemptCtx is the root of a handler's context: the values of Start's
// context, with the attempt. It is never cancelled itself, so the
// cancellable context derived from it registers with no parent.
type attemptCtx struct {
	context.Context
	a     Attempt
	owner *worker
}

func (c *attemptCtx) Value(key any) any {
	if key == (attemptKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// AttemptFromContext returns the attempt a handler's (or middleware's)
// context belongs to.
func AttemptFromContext(ctx context.Context) (Attempt, bool) {
	v, ok := ctx.Value(attemptKey{}).(*attemptCtx)
	if !ok {
		return Attempt{}, false
	}
	return v.a, true
}
