package inbox_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// testDatabaseURL is the database this test run created; each test works in
// a schema of its own inside it.
var testDatabaseURL string

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" { // a crash test's child process
		fmt.Fprintln(os.Stderr, "crash child:", runCrashChild(spec))
		os.Exit(1)
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inbox tests need PostgreSQL: %v\n", err)
		return 1
	}
	defer srv.Close()
	fmt.Fprintf(os.Stderr, "inbox tests: PostgreSQL from %s\n", srv.Source)
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "inbox tests: create database: %v\n", err)
		return 1
	}
	defer drop(context.Background())
	testDatabaseURL = url
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "inbox tests: goroutines still running after all tests:\n%s\n", leaked)
			return 1
		}
	}
	return code
}

// leakedGoroutines waits up to d for every goroutine running the package's
// code or a pgx pool to end, and returns the stacks of those that remain.
func leakedGoroutines(d time.Duration) string {
	var leaked []string
	_ = poll(d, func() (bool, error) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "leakedGoroutines") {
				continue
			}
			if strings.Contains(g, "github.com/pginbox/inbox.(*") || strings.Contains(g, "pgxpool.(*Pool)") {
				leaked = append(leaked, g)
			}
		}
		return len(leaked) == 0, nil
	})
	return strings.Join(leaked, "\n\n")
}

var schemaSeq atomic.Int64

// newSchema creates a schema for one test and returns its name.
func newSchema(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", schemaSeq.Add(1), strings.ReplaceAll(uuid.NewString()[:8], "-", ""))
	pool, err := pgxpool.New(context.Background(), testDatabaseURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(context.Background(), "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	return name
}

// schemaPool returns a pool whose connections work in schema.
func schemaPool(t testing.TB, schema string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testDatabaseURL)
	if err != nil {
		t.Fatalf("parse url: %v", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// newPool gives a test its own migrated schema and a pool working in it.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := schemaPool(t, newSchema(t), 10)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return pool
}

// quiet is a logger for tests: warnings and errors only, to the test log.
func quiet(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}

// fast are options that make a test's inbox react in milliseconds.
func fast(t testing.TB, more ...inbox.Option) []inbox.Option {
	return append([]inbox.Option{
		inbox.WithIterationRate(20 * time.Millisecond),
		inbox.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond),
		inbox.WithLease(time.Second),
		inbox.WithLogger(quiet(t)),
	}, more...)
}

// start starts an inbox and stops it when the test ends.
func start(t testing.TB, pool *pgxpool.Pool, reg *inbox.Registry, opts ...inbox.Option) *inbox.Inbox {
	t.Helper()
	ib, err := inbox.New(pool, reg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := ib.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ib.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return ib
}

// eventually polls cond every 10ms until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := poll(within, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func poll(within time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(within)
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitCounts waits until Counts equals want for every status in want.
func waitCounts(t testing.TB, ib *inbox.Inbox, within time.Duration, want map[inbox.Status]int) {
	t.Helper()
	var last map[inbox.Status]int
	err := poll(within, func() (bool, error) {
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

func record(t testing.TB, id uuid.UUID, eventType string, payload string) *inbox.Record {
	t.Helper()
	r, err := inbox.NewRecord(id, eventType, []byte(payload))
	if err != nil {
		t.Fatalf("NewRecord: %v", err)
	}
	return r
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

// logLines collects log lines, for tests that check what was logged.
type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

// logger returns a logger writing to l, warnings and errors only.
func (l *logLines) logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// count returns how many lines contain every one of parts.
func (l *logLines) count(parts ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}
