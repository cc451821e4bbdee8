package inbox

import (
	"errors"
	"fmt"
	"time"
)

// MaxRetryAfter is the longest pause [RetryAfter] accepts; a longer one is
// shortened to it.
const MaxRetryAfter = 366 * 24 * time.Hour

// Discard returns an error that makes the row dead at once, whatever
// attempts it has left: for an event that can never succeed, such as a
// payload that does not parse. err says why; it may be nil. The row's
// last_error reads "discarded: " followed by err's text, and the dead
// callback's DeadRecord.Err wraps both err and [ErrDiscarded].
//
// A [TxHandler] that returns Discard has its writes rolled back, as for any
// error.
func Discard(err error) error {
	return &outcomeError{discard: true, err: err}
}

// RetryAfter returns an error that makes the row's next attempt due d from
// now, for a downstream that asked to be called later (a rate limit, a
// maintenance window). err says why; it may be nil. The row's last_error
// reads "retry after <d>: " followed by err's text.
//
// The attempt does not count towards the row's attempt limit: a handler
// that keeps returning RetryAfter retries for ever, so bound it yourself
// (for example by returning a plain error after some time). d below zero
// counts as zero, and d above [MaxRetryAfter] as MaxRetryAfter.
func RetryAfter(d time.Duration, err error) error {
	return &outcomeError{after: min(max(d, 0), MaxRetryAfter), err: err}
}

// outcomeError carries a handler's choice of outcome.
type outcomeError struct {
	discard bool
	after   time.Duration
	err     error
}

func (e *outcomeError) Error() string {
	prefix := "discarded"
	if !e.discard {
		prefix = fmt.Sprintf("retry after %v", e.after)
	}
	if e.err == nil {
		return prefix
	}
	return prefix + ": " + e.err.Error()
}

func (e *outcomeError) Unwrap() []error {
	mark := ErrRetryAfter
	if e.discard {
		mark = ErrDiscarded
	}
	if e.err == nil {
		return []error{mark}
	}
	return []error{e.err, mark}
}

// outcomeOf returns the outcome err asks for, if any: a handler may wrap the
// value Discard or RetryAfter returned.
func outcomeOf(err error) (*outcomeError, bool) {
	var o *outcomeError
	ok := errors.As(err, &o)
	return o, ok
}
