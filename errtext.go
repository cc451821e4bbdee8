package inbox

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxErrorLength is the most bytes of an error's text that the inbox
// stores in a row's last_error, logs, and passes to the dead callback. A
// longer text keeps its first and its last part, around a marker saying how
// many bytes were left out: the start usually says what failed, the end
// often holds the root cause.
const MaxErrorLength = 8 << 10

// errorTail is how many bytes of a long text are kept from its end.
const errorTail = 2 << 10

// boundText returns s as text PostgreSQL can store, at most MaxErrorLength
// bytes long: invalid UTF-8 becomes U+FFFD, NUL bytes (which a text column
// cannot hold) become the four characters \x00, and a long text keeps its
// start and end.
func boundText(s string) string {
	s = sanitize(truncate(s))
	if len(s) > MaxErrorLength { // sanitizing can lengthen a text a little
		s = truncate(s)
	}
	return s
}

// truncate keeps the start and the end of a text longer than
// MaxErrorLength, cutting only at the start of UTF-8 sequences.
func truncate(s string) string {
	if len(s) <= MaxErrorLength {
		return s
	}
	cut := len(s) - errorTail
	for cut < len(s) && !utf8.RuneStart(s[cut]) {
		cut++
	}
	tail := s[cut:]
	marker := fmt.Sprintf(" … [%d bytes left out] … ", len(s)) // sized for the longest count
	keep := MaxErrorLength - len(tail) - len(marker)
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + fmt.Sprintf(" … [%d bytes left out] … ", cut-keep) + tail
}

// sanitize makes s storable in a text column.
func sanitize(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", `\x00`)
	}
	return s
}

// boundedError is an error whose text is bounded by boundText; it still
// wraps the original error, so errors.Is and errors.As see through it.
type boundedError struct {
	text string
	err  error
}

func (e *boundedError) Error() string { return e.text }
func (e *boundedError) Unwrap() error { return e.err }

// bound returns err with its text bounded. An error whose text is within
// bounds comes back as it is.
func bound(err error) error {
	if err == nil {
		return nil
	}
	text := err.Error()
	if b := boundText(text); b != text {
		return &boundedError{text: b, err: err}
	}
	return err
}

// textError is a failure known only by its (bounded) text: one read back
// from the table, or one whose original was too long to keep in memory. It
// still matches the package's own sentinels it was built with.
type textError struct {
	text  string
	is    []error
	etype string // ErrorType of the original error, "" if unknown
}

func (e *textError) Error() string   { return e.text }
func (e *textError) Unwrap() []error { return e.is }

// sentinels are the package's errors a failure may wrap, kept when a
// failure is reduced to its text.
var sentinels = []error{ErrHandlerTimeout, ErrLeaseExpired, ErrLeaseLost, ErrDiscarded, ErrTxControl}

// compact returns err with bounded text, holding on to the original error
// only when its text was within bounds: a failure waiting to be written or
// passed to the dead callback then holds at most MaxErrorLength bytes
// however large the handler's error was.
func compact(err error) (error, string) {
	text := err.Error()
	b := boundText(text)
	if b == text {
		return err, b
	}
	te := &textError{text: b, etype: ErrorType(err)}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			te.is = append(te.is, s)
		}
	}
	return te, b
}

// leaseExpiredType is the error type stored for an attempt whose lease
// expired.
const leaseExpiredType = "inbox.ErrLeaseExpired"

// sentinelNames name the package's own failures in a row's error type.
var sentinelNames = map[error]string{
	ErrHandlerTimeout: "inbox.ErrHandlerTimeout",
	ErrLeaseExpired:   leaseExpiredType,
	ErrLeaseLost:      "inbox.ErrLeaseLost",
	ErrDiscarded:      "inbox.ErrDiscarded",
	ErrTxControl:      "inbox.ErrTxControl",
	ErrRetryAfter:     "inbox.ErrRetryAfter",
	ErrBacklogFull:    "inbox.ErrBacklogFull",
}

// ErrorType names the type of err's root cause, as the inbox stores it
// with a failed row ([RecordState].ErrorType) and groups dead rows by it
// ([Admin.DeadGroups]): one of the package's sentinels by name (such as
// "inbox.ErrHandlerTimeout"), else the Go type of the innermost error of
// the chain (the first of each joined list), such as "*net.OpError" or
// "*inbox.PanicError". A failure the inbox keeps only as text (one longer
// than [MaxErrorLength]) keeps the type of the error it was made from. ""
// for nil.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	var te *textError
	if errors.As(err, &te) && te.etype != "" {
		return te.etype
	}
	for _, s := range []error{ErrHandlerTimeout, ErrLeaseLost, ErrTxControl, ErrDiscarded, ErrBacklogFull} {
		if errors.Is(err, s) {
			return sentinelNames[s]
		}
	}
	for {
		var next error
		switch e := err.(type) {
		case interface{ Unwrap() error }:
			next = e.Unwrap()
		case interface{ Unwrap() []error }:
			if errs := e.Unwrap(); len(errs) > 0 {
				next = errs[0]
			}
		}
		if next == nil {
			break
		}
		err = next
	}
	if name, ok := sentinelNames[err]; ok {
		return name
	}
	return fmt.Sprintf("%T", err)
}
