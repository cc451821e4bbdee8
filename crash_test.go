package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv, when set, makes the test binary a crash-test child: it claims
// rows of event type "crash" in the schema it names and hangs in the
// handler until it is killed.
const childEnv = "INBOX_CRASH_CHILD"

// runCrashChild is the crash-test child's whole life: TestMain runs it
// instead of the tests when childEnv is set. It returns only on error.
func runCrashChild(spec string) error {
	url, schema, _ := strings.Cut(spec, " ")
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return err
	}
	reg := inbox.NewRegistry()
	reg.On("crash", inbox.HandlerFunc("h", func(ctx context.Context, _ []byte) error {
		<-ctx.Done() // hang until killed
		return ctx.Err()
	}))
	ib, err := inbox.New(pool, reg, inbox.WithLease(time.Second), inbox.WithHandlerTimeout(time.Hour),
		inbox.WithIterationRate(20*time.Millisecond), inbox.WithoutMigrations())
	if err != nil {
		return err
	}
	if err := ib.Start(context.Background()); err != nil {
		return err
	}
	select {} // until SIGKILL
}

// crashChild starts a child process that claims every "crash" row, waits
// until it holds them all with the given attempt count, and kills it with
// SIGKILL.
func crashChild(t *testing.T, pool *pgxpool.Pool, schema string, n, attempt int) {
	t.Helper()
	cmd := exec.Command(os.Args[0]) // TestMain sees childEnv and runs runCrashChild
	cmd.Env = append(os.Environ(), childEnv+"="+testenv.URL()+" "+schema)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	err := testenv.Poll(30*time.Second, func() (bool, error) {
		select {
		case err := <-exited:
			return false, fmt.Errorf("child exited early: %v\n%s", err, out.String())
		default:
		}
		var held int
		err := pool.QueryRow(context.Background(),
			`SELECT count(*) FROM inbox_records WHERE status = 'progress' AND attempts = $1`, attempt).Scan(&held)
		return held == n, err
	})
	if err != nil {
		_ = cmd.Process.Kill()
		t.Fatalf("child did not claim all %d rows for attempt %d: %v", n, attempt, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("child exit = %v, want killed", err)
	}
}

// crashSetup gives a crash test a migrated schema, a pool in it, a
// counting handler for "crash" events and an inbox (not started) to store
// them with.
func crashSetup(t *testing.T) (string, *pgxpool.Pool, *runs, *inbox.Registry, *inbox.Inbox) {
	t.Helper()
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, 10)
	if err := inbox.Migrate(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	r := newRuns()
	reg := inbox.NewRegistry()
	reg.On("crash", r.handler("h"))
	writer, err := inbox.New(pool, reg)
	if err != nil {
		t.Fatal(err)
	}
	return schema, pool, r, reg, writer
}

// A worker process killed mid-handler loses no row: once the lease runs
// out another instance claims the rows and runs them, the dead attempt
// counted and recorded.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema, pool, r, reg, writer := crashSetup(t)
	const n = 50
	var ids []uuid.UUID
	var recs []*inbox.Record
	for i := range n {
		ids = append(ids, uuid.New())
		recs = append(recs, testenv.Record(t, ids[i], "crash", fmt.Sprint(i)))
	}
	if err := writer.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}

	crashChild(t, pool, schema, n, 1)
	c, err := writer.Counts(ctx)
	if err != nil || c[inbox.Progress] != n {
		t.Fatalf("after the kill: %v, %v; want all %d rows still in progress", c, err, n)
	}

	ib := start(t, pool, reg, testenv.Fast(t)...)
	waitCounts(t, ib, 30*time.Second, map[inbox.Status]int{inbox.Done: n})
	got := r.snapshot()
	for i := range n {
		if got[fmt.Sprint("h/", i)] != 1 {
			t.Fatalf("event %d ran %d times after recovery, want once", i, got[fmt.Sprint("h/", i)])
		}
	}
	states, err := ib.Lookup(ctx, ids[0])
	if err != nil || len(states) != 1 {
		t.Fatalf("Lookup = %v, %v", states, err)
	}
	if s := states[0]; s.Attempts != 2 || !strings.Contains(s.LastError, "attempt 1: lease expired") {
		t.Fatalf("recovered row: %d attempts, last error %q; want 2 attempts and the lost attempt recorded", s.Attempts, s.LastError)
	}
}

// A row whose attempts keep dying with their worker ends dead, not in a
// loop, and the dead callback says why. The limit is the row's own, set by
// the inbox that stored it (2), not the claiming inbox's (the default, 5).
func TestPoisonRowDies(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	schema, pool, r, reg, _ := crashSetup(t)
	writer, err := inbox.New(pool, reg, inbox.WithMaxRetryAttempt(2))
	if err != nil {
		t.Fatal(err)
	}
	id := uuid.New()
	if err := writer.Client().Set(ctx, testenv.Record(t, id, "crash", "poison")); err != nil {
		t.Fatal(err)
	}
	crashChild(t, pool, schema, 1, 1)
	crashChild(t, pool, schema, 1, 2)

	dead := make(chan inbox.DeadRecord, 1)
	ib := start(t, pool, reg, testenv.Fast(t,
		inbox.OnDeadCallback(func(_ context.Context, rec inbox.DeadRecord) { dead <- rec }))...)
	var rec inbox.DeadRecord
	select {
	case rec = <-dead:
	case <-time.After(30 * time.Second):
		t.Fatal("no dead callback for the poison row")
	}
	if rec.EventID != id || rec.Attempts != 2 || !errors.Is(rec.Err, inbox.ErrLeaseExpired) {
		t.Fatalf("dead record = %+v, want event %s after 2 attempts wrapping ErrLeaseExpired", rec, id)
	}
	if got := r.snapshot(); len(got) != 0 {
		t.Fatalf("the poison row ran again: %v", got)
	}
	states, err := ib.Lookup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 1 || states[0].Status != inbox.Dead || states[0].MaxAttempts != 2 ||
		!strings.Contains(states[0].LastError, "attempt 2: lease expired") {
		t.Fatalf("states = %+v, want dead with the lost attempt recorded", states)
	}
}
