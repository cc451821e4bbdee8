package inbox

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error the package returns for bad input wraps one of
// these, so callers can test with [errors.Is].
var (
	// ErrInvalidRecord reports a record that cannot be stored: a nil record,
	// a nil id, or an event type that is blank, too long or not valid text.
	ErrInvalidRecord = errors.New("inbox: invalid record")

	// ErrNoRecords reports a Set or SetTx call with no records.
	ErrNoRecords = errors.New("inbox: no records to set")

	// ErrNilTx reports a SetTx call with a nil transaction.
	ErrNilTx = errors.New("inbox: transaction is nil")

	// ErrUnknownEventType reports a record whose event type has no handler in
	// the registry. Nothing of the call was written. Register a handler with
	// [Registry.On], or pass [WithUnknownEventTypes]([SkipUnknown]) to New to
	// skip such records instead.
	ErrUnknownEventType = errors.New("inbox: no handler registered for event type")

	// ErrInvalidRegistry reports a registry that New cannot use: nil, empty,
	// or with a nil handler, an empty or duplicate handler key, an event type
	// registered with no handler, or a handler timeout that is not positive.
	ErrInvalidRegistry = errors.New("inbox: invalid registry")

	// ErrInvalidConfig reports a bad argument to New: a nil pool or an option
	// whose value is out of range.
	ErrInvalidConfig = errors.New("inbox: invalid configuration")

	// ErrAlreadyStarted reports a second call to [Inbox.Start]. An Inbox
	// starts once; create a new one to start again.
	ErrAlreadyStarted = errors.New("inbox: already started")

	// ErrHandlerTimeout is the failure recorded when a handler runs past its
	// timeout.
	ErrHandlerTimeout = errors.New("inbox: handler timed out")

	// ErrLeaseExpired is the failure recorded for an attempt whose lease
	// expired before its worker wrote a result: the worker crashed, was
	// killed or lost the database. DeadRecord.Err wraps it when such
	// attempts used up a row's attempts.
	ErrLeaseExpired = errors.New("inbox: lease expired before a result was written")

	// ErrLeaseLost reports, through the error callback and as the cause of a
	// handler's cancelled context, that this worker no longer holds a row's
	// lease: it could not renew it in time, or another worker took the row
	// over. The row's result is not written by this worker.
	ErrLeaseLost = errors.New("inbox: lease lost")
)

// PanicError is the failure recorded when a handler panics. The worker
// recovers the panic, records this error as the attempt's failure and goes on.
type PanicError struct {
	// Value is the value passed to panic.
	Value any
	// Stack is the goroutine's stack at the panic.
	Stack []byte
}

// Error returns the panic value as text.
func (e *PanicError) Error() string {
	return fmt.Sprintf("inbox: handler panicked: %v", e.Value)
}

// Unwrap returns the panic value if it is an error, so errors.Is and
// errors.As see through the panic.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
