package testenv

import (
	"context"
	"slices"
	"sync"

	"github.com/pginbox/inbox"
)

// SetCalls records the Sets of an inbox created with its [SetCalls.Option]
// (the inbox's OnSet hook), for tests of what a consumer sets.
type SetCalls struct {
	mu    sync.Mutex
	calls []inbox.SetEvent
}

// Option is the inbox option that records its Sets in s.
func (s *SetCalls) Option() inbox.Option {
	return inbox.WithHooks(inbox.Hooks{OnSet: func(_ context.Context, e inbox.SetEvent) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.calls = append(s.calls, e)
	}})
}

// All returns the Sets recorded so far, in order.
func (s *SetCalls) All() []inbox.SetEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}
