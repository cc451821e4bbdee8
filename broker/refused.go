package broker

import (
	"errors"

	"github.com/pginbox/inbox"
)

// SplitRefused walks items, the batch whose records a Set refused with re,
// in order. It calls refuse for each item at one of re.Indexes, with that
// record's own error (re.Errs in the same place), and returns the other
// items, in their order, to store again. What refusing an item means
// (dead-lettering it, terminating it, ...) is the adapter's: refuse does
// it. A nil refuse only drops the refused items, for a slice kept parallel
// to one already split.
//
// When refuse returns an error the walk stops there: SplitRefused returns
// nil and that error, and the items after it were neither refused nor
// kept. The returned slice never shares items' backing array. Indexes out
// of range are ignored.
func SplitRefused[T any](re *inbox.RecordsError, items []T, refuse func(item T, err error) error) (kept []T, err error) {
	k := 0
	for i, it := range items {
		if k < len(re.Indexes) && re.Indexes[k] == i {
			if refuse != nil {
				if err := refuse(it, re.Errs[k]); err != nil {
					return nil, err
				}
			}
			k++
			continue
		}
		kept = append(kept, it)
	}
	return kept, nil
}

// BadInput reports whether a Set failed for its records themselves
// (invalid records, records of unknown event types under
// [inbox.RejectUnknown], conflicting duplicates under
// [inbox.RejectConflicting]): no retry of the same records can succeed.
func BadInput(err error) bool {
	return errors.Is(err, inbox.ErrInvalidRecord) || errors.Is(err, inbox.ErrUnknownEventType) ||
		errors.Is(err, inbox.ErrConflictingDuplicate)
}
