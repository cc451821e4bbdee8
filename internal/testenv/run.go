package testenv

import (
	"context"
	"sync"
	"testing"
	"time"
)

// runStopWait is how long [Background]'s stop waits for run to return.
const runStopWait = 30 * time.Second

// Background calls run (a consumer's Run, say) in a goroutine with a
// context that stop cancels; stop then waits for run to return and fails
// t if it returned an error or took more than 30 seconds. stop runs when
// t ends, if not before; it may be called more than once.
func Background(t testing.TB, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(runStopWait):
				t.Errorf("Run did not return within %v of its context ending", runStopWait)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
