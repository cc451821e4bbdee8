package inbox_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" { // a crash test's child process
		fmt.Fprintln(os.Stderr, "crash child:", runCrashChild(spec))
		os.Exit(1)
	}
	os.Exit(testenv.Main(m, "inbox", testenv.InboxCode, testenv.PgxPool))
}

// start is [testenv.Start] with context.Background().
func start(t testing.TB, pool *pgxpool.Pool, reg *inbox.Registry, opts ...inbox.Option) *inbox.Inbox {
	t.Helper()
	return testenv.Start(t, context.Background(), pool, reg, opts...)
}

// waitCounts waits until Counts equals want for every status in want.
func waitCounts(t testing.TB, ib *inbox.Inbox, within time.Duration, want map[inbox.Status]int) {
	t.Helper()
	var last map[inbox.Status]int
	err := testenv.Poll(within, func() (bool, error) {
		c, err := ib.Counts(context.Background())
		if err != nil {
			return false, err
		}
		last = c
		for s, n := range want {
			if c[s] != n {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("waiting for counts %v: %v; last counts %v", want, err, last)
	}
}

// runs counts handler runs per (event, handler key).
type runs struct {
	mu sync.Mutex
	n  map[string]int
}

func newRuns() *runs { return &runs{n: make(map[string]int)} }

func (r *runs) add(key string, payload []byte) {
	r.mu.Lock()
	r.n[key+"/"+string(payload)]++
	r.mu.Unlock()
}

func (r *runs) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]int, len(r.n))
	for k, v := range r.n {
		out[k] = v
	}
	return out
}

// counting returns a handler that counts its runs by payload.
func (r *runs) handler(key string) inbox.Handler {
	return inbox.HandlerFunc(key, func(_ context.Context, p []byte) error {
		r.add(key, p)
		return nil
	})
}
