// Package testenv is the harness of this repository's own tests: a
// database of their own on a PostgreSQL server that [pgserver.Find]
// provides, a schema per test inside it, a check in TestMain that no
// goroutine outlives the tests, and waiting without sleeping.
//
// Only _test.go files import it. Users' tests have the public package
// inboxtest instead.
package testenv

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// Substrings of goroutine stacks for [Main] and [Leaked].
const (
	// InboxCode is in the stack of a goroutine running a method of the
	// inbox package.
	InboxCode = "github.com/pginbox/inbox.(*"
	// PgxPool is in the stack of a goroutine of a pgx pool.
	PgxPool = "pgxpool.(*Pool)"
	// HTTPServer is in the stack of a goroutine of an http.Server.
	HTTPServer = "net/http.(*Server)"
)

const (
	// findTimeout bounds finding PostgreSQL and creating the database.
	findTimeout = 3 * time.Minute
	// leakWait is how long Main lets goroutines end after the tests.
	leakWait = 5 * time.Second
	// pollEvery is how often Poll calls its condition.
	pollEvery = 10 * time.Millisecond
	// PoolMaxConns is the most connections a pool from [MigratedPool]
	// opens.
	PoolMaxConns = 10
)

// databaseURL is the database Main created.
var databaseURL string

// Main runs the tests of m in a database of their own, created on the
// server pgserver.Find gives and dropped when they end, and returns the
// exit code for os.Exit. name starts its messages ("name tests: ...").
//
// When the tests pass, Main waits up to five seconds for every goroutine
// whose stack contains one of leaks to end; if any remains, the run fails
// with their stacks.
func Main(m *testing.M, name string, leaks ...string) int {
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s tests need PostgreSQL: %v\n", name, err)
		return 1
	}
	defer srv.Close()
	fmt.Fprintf(os.Stderr, "%s tests: PostgreSQL from %s\n", name, srv.Source)
	url, drop, err := srv.CreateDatabase(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s tests: create database: %v\n", name, err)
		return 1
	}
	defer drop(context.Background())
	databaseURL = url
	code := m.Run()
	if code == 0 {
		if leaked := Leaked(leakWait, leaks...); leaked != "" {
			fmt.Fprintf(os.Stderr, "%s tests: goroutines still running after all tests:\n%s\n", name, leaked)
			return 1
		}
	}
	return code
}

// URL returns the URL of the database [Main] created. It panics when
// called before Main.
func URL() string {
	if databaseURL == "" {
		panic("testenv: URL called outside testenv.Main")
	}
	return databaseURL
}

// Leaked waits up to d for every goroutine but the caller's whose stack
// contains one of funcs to end, and returns the stacks of those that
// remain, or "" when none does.
func Leaked(d time.Duration, funcs ...string) string {
	var leaked []string
	_ = Poll(d, func() (bool, error) {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		leaked = leaked[:0]
		stacks := strings.Split(string(buf), "\n\n")
		for _, g := range stacks[1:] { // the first is the caller's
			for _, f := range funcs {
				if strings.Contains(g, f) {
					leaked = append(leaked, g)
					break
				}
			}
		}
		return len(leaked) == 0, nil
	})
	return strings.Join(leaked, "\n\n")
}

var schemaSeq atomic.Int64

// Schema creates an empty schema for t in the database of [Main] and
// returns its name. The schema stays until Main drops the database.
func Schema(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("t%d_%s", schemaSeq.Add(1), strings.ReplaceAll(uuid.NewString()[:8], "-", ""))
	conn, err := pgx.Connect(ctx, URL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	return name
}

// SchemaPool returns a pool of at most maxConns connections whose
// search_path is schema. It is closed when t ends.
func SchemaPool(t testing.TB, schema string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(URL())
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

// Pool returns a pool of at most maxConns connections working in a new,
// empty [Schema] of t's own. It is closed when t ends.
func Pool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	return SchemaPool(t, Schema(t), maxConns)
}

// MigratedPool is [Pool] of [PoolMaxConns] connections whose schema
// [inbox.Migrate] has migrated.
func MigratedPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool := Pool(t, PoolMaxConns)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return pool
}

// Fast returns options that make an inbox react in milliseconds and log
// its warnings and errors to t's log, followed by more (which may override
// them).
func Fast(t testing.TB, more ...inbox.Option) []inbox.Option {
	return append([]inbox.Option{
		inbox.WithIterationRate(20 * time.Millisecond),
		inbox.WithRetryBackoff(5*time.Millisecond, 20*time.Millisecond),
		inbox.WithLease(time.Second),
		inbox.WithLogger(Logger(t)),
	}, more...)
}

// Record returns the record [inbox.NewRecord] makes of its arguments, or
// fails t.
func Record(t testing.TB, id uuid.UUID, eventType, payload string) *inbox.Record {
	t.Helper()
	r, err := inbox.NewRecord(id, eventType, []byte(payload))
	if err != nil {
		t.Fatalf("NewRecord: %v", err)
	}
	return r
}

// Start creates an inbox with [inbox.New] and starts it with ctx; it is
// stopped, with ten seconds to drain, when t ends.
func Start(t testing.TB, ctx context.Context, pool *pgxpool.Pool, reg *inbox.Registry, opts ...inbox.Option) *inbox.Inbox {
	t.Helper()
	ib, err := inbox.New(pool, reg, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := ib.Start(ctx); err != nil {
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

// Poll calls cond every 10ms until it reports true or an error, or within
// has passed; it returns that error, or one saying it timed out.
func Poll(within time.Duration, cond func() (bool, error)) error {
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
		time.Sleep(pollEvery)
	}
}

// Eventually is [Poll] that fails t with "waiting for what: ..." when
// cond does not hold in time.
func Eventually(t testing.TB, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if err := Poll(within, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Logger returns a logger of warnings and errors only, to t's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter writes each line to a test's log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// LogLines collects log lines, for tests that check what was logged. Its
// zero value is ready to use; it is safe for concurrent use.
type LogLines struct {
	mu    sync.Mutex
	lines []string
}

// Write adds p as a line.
func (l *LogLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.lines = append(l.lines, string(p))
	l.mu.Unlock()
	return len(p), nil
}

// Logger returns a logger writing warnings and errors to l.
func (l *LogLines) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(l, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// Count returns how many lines contain every one of parts.
func (l *LogLines) Count(parts ...string) int {
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

// String returns the lines written so far, joined.
func (l *LogLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "")
}
