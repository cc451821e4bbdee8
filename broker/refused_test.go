package broker_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

func TestSplitRefused(t *testing.T) {
	e1, e3 := errors.New("bad 1"), errors.New("bad 3")
	re := &inbox.RecordsError{Indexes: []int{1, 3}, Errs: []error{e1, e3}}
	items := []string{"a", "b", "c", "d", "e"}

	var refused []string
	var errs []error
	kept, err := broker.SplitRefused(re, items, func(it string, err error) error {
		refused, errs = append(refused, it), append(errs, err)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "c", "e"}; !slices.Equal(kept, want) {
		t.Fatalf("kept = %q, want %q", kept, want)
	}
	if want := []string{"b", "d"}; !slices.Equal(refused, want) {
		t.Fatalf("refused = %q, want %q", refused, want)
	}
	if len(errs) != 2 || errs[0] != e1 || errs[1] != e3 {
		t.Fatalf("errs = %v, want each refused item's own error [%v %v]", errs, e1, e3)
	}
	kept[0] = "changed"
	if items[0] != "a" {
		t.Fatal("kept shares the items' backing array")
	}

	// A nil refuse only drops the refused items.
	if kept, err := broker.SplitRefused(re, []int{10, 11, 12, 13}, nil); err != nil || !slices.Equal(kept, []int{10, 12}) {
		t.Fatalf("nil refuse: kept = %v, err = %v, want [10 12], nil", kept, err)
	}

	// Everything refused: nothing kept.
	all := &inbox.RecordsError{Indexes: []int{0, 1}, Errs: []error{e1, e3}}
	if kept, err := broker.SplitRefused(all, []string{"x", "y"}, nil); err != nil || len(kept) != 0 {
		t.Fatalf("all refused: kept = %q, err = %v", kept, err)
	}
}

// An error from refuse stops the walk: the later refused items are not
// handed to refuse, and nothing is returned as kept.
func TestSplitRefusedStopsOnError(t *testing.T) {
	re := &inbox.RecordsError{Indexes: []int{0, 2}, Errs: []error{errors.New("x"), errors.New("y")}}
	lost := errors.New("channel lost")
	calls := 0
	kept, err := broker.SplitRefused(re, []int{0, 1, 2}, func(int, error) error {
		calls++
		return lost
	})
	if err != lost || kept != nil || calls != 1 {
		t.Fatalf("kept = %v, err = %v, calls = %d; want nil, %v, 1", kept, err, calls, lost)
	}
}

func TestBadInput(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("wrapped: %w", inbox.ErrInvalidRecord), true},
		{fmt.Errorf("wrapped: %w", inbox.ErrUnknownEventType), true},
		{&inbox.ConflictError{}, true},
		{&inbox.RecordsError{Errs: []error{fmt.Errorf("record 0: %w", inbox.ErrInvalidRecord)}}, true},
		{errors.New("connection refused"), false},
		{nil, false},
	} {
		if got := broker.BadInput(c.err); got != c.want {
			t.Errorf("BadInput(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
