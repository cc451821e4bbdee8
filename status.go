package inbox

import "fmt"

// Status is the processing state of one (event, handler) row.
//
// A row starts as [Null], becomes [Progress] while a worker holds its lease,
// and ends as [Done] or [Dead]. A failed attempt leaves it [Failed] until its
// next attempt is due.
type Status string

const (
	// Null means the row is stored and has not been attempted yet.
	Null Status = ""
	// Progress means a worker has claimed the row and holds its lease.
	Progress Status = "progress"
	// Failed means the last attempt failed; the row is retried when its next
	// attempt is due.
	Failed Status = "failed"
	// Done means the handler succeeded. The row is kept, for deduplication,
	// until retention erases it.
	Done Status = "done"
	// Dead means the row used up its attempts and is no longer processed.
	Dead Status = "dead"
)

// Statuses returns every Status, in lifecycle order.
func Statuses() []Status {
	return []Status{Null, Progress, Failed, Done, Dead}
}

// String returns the status as stored, or "null" for [Null].
func (s Status) String() string {
	if s == Null {
		return "null"
	}
	return string(s)
}

// MarshalText returns [Status.String]: JSON shows [Null] as "null".
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a status as [Status.String] writes it; "" and
// "pending" are read as [Null] too.
func (s *Status) UnmarshalText(b []byte) error {
	switch t := Status(b); t {
	case "null", "pending", Null:
		*s = Null
	case Progress, Failed, Done, Dead:
		*s = t
	default:
		return fmt.Errorf("%w: unknown status %q; use one of null, progress, failed, done, dead", ErrInvalidFilter, string(b))
	}
	return nil
}
