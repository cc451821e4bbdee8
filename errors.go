package inbox

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/uuid"
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
	// registered with no handler, a handler timeout that is not positive, or
	// a [HandlerOption] with a bad value.
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

	// ErrConflictingDuplicate reports a record whose id is stored already
	// with another event type or payload: an upstream bug, such as ids
	// reused or regenerated on retry. With [RejectConflicting], Set fails
	// with a [*ConflictError], which wraps it, and writes nothing.
	ErrConflictingDuplicate = errors.New("inbox: conflicting duplicate: id stored with another payload")

	// ErrDiscarded marks the failure of an attempt whose handler returned
	// [Discard]: the row is dead at once. DeadRecord.Err wraps it.
	ErrDiscarded = errors.New("inbox: discarded by the handler")

	// ErrRetryAfter marks an attempt whose handler returned [RetryAfter].
	ErrRetryAfter = errors.New("inbox: handler asked to retry later")

	// ErrStopInHandler reports a call of [Inbox.Stop] from inside one of the
	// Inbox's own handlers, middleware or callbacks. Stop waits for those to
	// return, so the call could never finish. Stop the Inbox from outside,
	// for example from the code that started it.
	ErrStopInHandler = errors.New("inbox: Stop called from inside a handler or callback of the same Inbox")

	// ErrTxControl reports a [TxHandler] that committed, rolled back or
	// otherwise ended the transaction the inbox gave it. The inbox commits
	// that transaction itself, together with the row's completion; return
	// nil to commit and an error to roll back.
	ErrTxControl = errors.New("inbox: a TxHandler must not end the inbox's transaction")

	// ErrSchema reports that the inbox's tables are missing or older than
	// this version of the package expects. The message names what is
	// missing and what to run.
	ErrSchema = errors.New("inbox: schema missing or out of date")

	// ErrUnsupportedServer reports a PostgreSQL server older than version
	// 14, which the inbox's statements need.
	ErrUnsupportedServer = errors.New("inbox: unsupported PostgreSQL server")

	// ErrNotifyUnavailable is reported to the [ErrorCallback] when a
	// worker's LISTEN connection does not receive a probe notification sent
	// through the pool, as behind a transaction-mode pooler: the workers
	// then poll. Give a direct connection with [WithListenConfig], or pass
	// [WithoutNotify].
	ErrNotifyUnavailable = errors.New("inbox: notifications do not arrive on the LISTEN connection")

	// ErrInvalidFilter reports a bad argument to one of [Admin]'s methods:
	// a filter, limit, page token or target it cannot use. Nothing was
	// changed.
	ErrInvalidFilter = errors.New("inbox: invalid filter")

	// ErrNotFound reports that what an [Admin] method was asked about (an
	// event, a row, a pause) is not stored.
	ErrNotFound = errors.New("inbox: not found")

	// ErrPayloadErased reports rows that [Admin.Replay] could not replay
	// because retention erased their payloads ([WithPayloadRetention]);
	// the rows stay as they were.
	ErrPayloadErased = errors.New("inbox: payload erased")

	// ErrErrorsDropped is passed to the [ErrorCallback] when errors were
	// left out because the callback did not keep up; the message says how
	// many. Each of them was logged.
	ErrErrorsDropped = errors.New("inbox: errors not passed to the error callback")

	// ErrBacklogFull reports a Set refused because the backlog of one of
	// its records' event types reached its bound ([WithMaxBacklog]).
	// Nothing of the call was written. It is temporary: leave the message
	// unacknowledged and retry later (the broker adapters retry the batch
	// with a backoff and fetch nothing new meanwhile). Set returns it
	// wrapped in a [*BacklogFullError].
	ErrBacklogFull = errors.New("inbox: backlog full")
)

// BacklogFullError is the error of a Set refused by [WithMaxBacklog]: the
// backlog of EventType (its rows not finished, over all its handler keys)
// was at or over its limit. Nothing of the call was written. It wraps
// [ErrBacklogFull]. It is temporary: the Set succeeds again once the
// workers have brought the backlog under the limit.
type BacklogFullError struct {
	// EventType is the event type whose backlog is full: of several, the
	// first in the order of the call's records.
	EventType string
	// Backlog is the figure the check used: the rows not finished when
	// the backlog was last read, plus the rows this Client's Sets passed
	// since (see [WithMaxBacklog] for how exact it is).
	Backlog int64
	// Limit is the bound set with WithMaxBacklog.
	Limit int64
}

// Error says which event type is full and what to do.
func (e *BacklogFullError) Error() string {
	return fmt.Sprintf("%v: event type %q has %d rows not finished, the limit is %d; nothing was stored. "+
		"This is temporary: leave the message unacknowledged and retry later, or raise WithMaxBacklog",
		ErrBacklogFull, e.EventType, e.Backlog, e.Limit)
}

// Unwrap returns [ErrBacklogFull].
func (e *BacklogFullError) Unwrap() error { return ErrBacklogFull }

// ConflictError is the error of a Set that found conflicting duplicates
// while [RejectConflicting] is set: records whose ids are stored already
// with another event type or payload, or that appear twice in the call with
// different contents. Nothing of the call was written. It wraps
// [ErrConflictingDuplicate].
type ConflictError struct {
	// IDs are the conflicting event ids, each once, in the order of the
	// call.
	IDs []uuid.UUID
}

// maxConflictIDs bounds how many ids ConflictError's message lists.
const maxConflictIDs = 10

// Error lists the conflicting ids, the first ten of them.
func (e *ConflictError) Error() string {
	ids := make([]string, 0, min(len(e.IDs), maxConflictIDs))
	for _, id := range e.IDs[:min(len(e.IDs), maxConflictIDs)] {
		ids = append(ids, id.String())
	}
	more := ""
	if len(e.IDs) > maxConflictIDs {
		more = fmt.Sprintf(" and %d more", len(e.IDs)-maxConflictIDs)
	}
	return fmt.Sprintf("%v: %d records (%s%s); nothing was stored. The producer reuses event ids: fix it upstream, or pass WithConflictingDuplicates(IgnoreConflicting) to store the first version and ignore the others",
		ErrConflictingDuplicate, len(e.IDs), strings.Join(ids, ", "), more)
}

// Unwrap returns [ErrConflictingDuplicate].
func (e *ConflictError) Unwrap() error { return ErrConflictingDuplicate }

// RecordsError is the error of a Set that refused some of its records
// for what they are: invalid records (their errors wrap
// [ErrInvalidRecord]) and, under [RejectUnknown], records of event types
// with no handler ([ErrUnknownEventType]). Nothing of the call was
// written. A consumer can move the records at Indexes aside (to a
// dead-letter queue, say) and set the others again. errors.Is sees each
// record's error through it.
type RecordsError struct {
	// Indexes are the positions of the refused records in the call,
	// ascending.
	Indexes []int
	// Errs are the refused records' errors, in the order of Indexes.
	Errs []error

	msg string
}

// maxRecordErrors bounds how many invalid records RecordsError's message
// describes.
const maxRecordErrors = 5

// newRecordsError builds the error of refused records, whose invalid ones
// are at invalid (ascending) and whose records of unknown event types are
// at unknown (ascending), counted by type in unknownTypes. An invalid
// record's error is errs[i] for invalid[i].
func newRecordsError(records []*Record, invalid []int, errs []error, unknown []int, unknownTypes map[string]int) *RecordsError {
	e := &RecordsError{Indexes: make([]int, 0, len(invalid)+len(unknown)), Errs: make([]error, 0, len(invalid)+len(unknown))}
	var parts []string
	for k, i := range invalid[:min(len(invalid), maxRecordErrors)] {
		parts = append(parts, fmt.Sprintf("record %d: %v", i, errs[k]))
	}
	if len(invalid) > maxRecordErrors {
		parts = append(parts, fmt.Sprintf("and %d more invalid records", len(invalid)-maxRecordErrors))
	}
	if len(unknown) > 0 {
		parts = append(parts, fmt.Sprintf("%v: %s; nothing was stored. Register a handler with Registry.On, or pass WithUnknownEventTypes(SkipUnknown) to skip such records",
			ErrUnknownEventType, typeCounts(unknownTypes)))
	}
	e.msg = strings.Join(parts, "; ")
	// Merge the two ascending lists.
	for a, b := 0, 0; a < len(invalid) || b < len(unknown); {
		if b == len(unknown) || (a < len(invalid) && invalid[a] < unknown[b]) {
			e.Indexes, e.Errs = append(e.Indexes, invalid[a]), append(e.Errs, fmt.Errorf("record %d: %w", invalid[a], errs[a]))
			a++
			continue
		}
		i := unknown[b]
		e.Indexes, e.Errs = append(e.Indexes, i), append(e.Errs, fmt.Errorf("record %d: %w %q", i, ErrUnknownEventType, records[i].eventType))
		b++
	}
	return e
}

// typeCounts lists event types with their counts, sorted: "a" (2), "b" (1).
func typeCounts(counts map[string]int) string {
	names := make([]string, 0, len(counts))
	for t, n := range counts {
		names = append(names, fmt.Sprintf("%q (%d)", t, n))
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Error describes the first few invalid records and counts the records of
// each unknown event type.
func (e *RecordsError) Error() string { return e.msg }

// Unwrap returns the records' errors.
func (e *RecordsError) Unwrap() []error { return e.Errs }

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
