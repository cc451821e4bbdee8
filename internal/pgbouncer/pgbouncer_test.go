package pgbouncer_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pginbox/inbox/internal/pgbouncer"
	"github.com/pginbox/inbox/internal/testenv"
)

// childEnv makes the test binary a child that starts PgBouncer in front
// of the URL in this variable, prints "PID DIR" and waits to be killed.
const childEnv = "PGBOUNCER_TEST_CHILD"

func TestMain(m *testing.M) {
	if u := os.Getenv(childEnv); u != "" {
		b, err := pgbouncer.Start(context.Background(), u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(1)
		}
		fmt.Println(b.PID, b.Dir)
		select {} // until killed: Close never runs
	}
	// A goroutine of startProcess that remains owns a PgBouncer process: a
	// Bouncer was never closed, or Close did not reap it.
	os.Exit(testenv.Main(m, "pgbouncer", "internal/pgbouncer.startProcess"))
}

// database returns the name of the test database.
func database(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimPrefix(u.Path, "/")
}

// startBouncer starts PgBouncer in front of the test database and closes
// it when the test ends.
func startBouncer(t *testing.T) *pgbouncer.Bouncer {
	t.Helper()
	b, err := pgbouncer.Start(t.Context(), testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Error(err)
		}
	})
	return b
}

// connect opens a connection to url in QueryExecModeExec, which works
// through PgBouncer in transaction mode, and closes it when the test ends.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// backendPID runs one transaction on conn and returns the process id of
// the server backend that ran it.
func backendPID(ctx context.Context, conn *pgx.Conn) (int, error) {
	var pid int
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	})
	return pid, err
}

func TestQueries(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	b := startBouncer(t)
	name := database(t)
	conn := connect(t, b.URL(name))

	if got := conn.PgConn().Conn().RemoteAddr().String(); got != net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port)) {
		t.Fatalf("connected to %s, not to PgBouncer on port %d", got, b.Port)
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	if db != name {
		t.Fatalf("current_database() = %q through PgBouncer, want %q", db, name)
	}

	if _, err := conn.Exec(ctx, "CREATE TABLE queries (k int PRIMARY KEY, v text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before conn closes
		if _, err := conn.Exec(context.Background(), "DROP TABLE queries"); err != nil {
			t.Error(err)
		}
	})
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for k, v := range []string{"zero", "one", "two"} {
			if _, err := tx.Exec(ctx, "INSERT INTO queries (k, v) VALUES ($1, $2)", k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rolledBack := errors.New("roll back")
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "DELETE FROM queries"); err != nil {
			return err
		}
		return rolledBack
	})
	if !errors.Is(err, rolledBack) {
		t.Fatalf("rolled-back transaction: %v", err)
	}
	rows, err := conn.Query(ctx, "SELECT v FROM queries WHERE k >= $1 ORDER BY k", 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "one,two" {
		t.Fatalf("got %q, want [one two]", got)
	}
}

// Ten clients, all connected at once, each running transactions
// concurrently, are served by at most PoolSize server backends. In session
// mode the fifth client would wait for a server until the test times out;
// without the pool limit up to ten backends would answer.
func TestClientsShareThePool(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	b := startBouncer(t)
	const clients, rounds = 10, 20
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = connect(t, b.URL(database(t)))
	}

	var (
		mu   sync.Mutex
		pids = map[int]int{} // backend pid -> transactions it ran
		wg   sync.WaitGroup
		errs = make(chan error, clients)
	)
	for _, conn := range conns {
		wg.Go(func() {
			for range rounds {
				pid, err := backendPID(ctx, conn)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				pids[pid]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d transactions of %d clients ran on backends %v", clients*rounds, clients, pids)
	if len(pids) > pgbouncer.PoolSize {
		t.Fatalf("%d clients used %d server backends, more than the pool size %d", clients, len(pids), pgbouncer.PoolSize)
	}
}

// With every server connection in a transaction, a further client waits;
// the server connection that one client's COMMIT frees serves it.
func TestCommitHandsTheServerToAWaitingClient(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	b := startBouncer(t)
	name := database(t)

	busy := make([]pgx.Tx, pgbouncer.PoolSize)
	busyPIDs := make([]int, pgbouncer.PoolSize) // backends running busy
	for i := range busy {
		tx, err := connect(t, b.URL(name)).Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		busy[i] = tx
		if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&busyPIDs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if distinct := len(slices.Compact(slices.Sorted(slices.Values(busyPIDs)))); distinct != pgbouncer.PoolSize {
		t.Fatalf("%d open transactions run on %d backends: %v", pgbouncer.PoolSize, distinct, busyPIDs)
	}

	// The waiting client's goroutine ends when the test's context does,
	// at the latest.
	waiter := connect(t, b.URL(name))
	got := make(chan int, 1)
	failed := make(chan error, 1)
	done := make(chan struct{})
	t.Cleanup(func() { <-done })
	go func() {
		defer close(done)
		pid, err := backendPID(ctx, waiter)
		if err != nil {
			failed <- err
			return
		}
		got <- pid
	}()

	// The client waits, and PgBouncer opens no further server connection
	// for it. Without the limit, PgBouncer would start one at the end of
	// the event-loop round that queued the client, before it reads the
	// next SHOW POOLS, which would then see it logging in (sv_login), idle
	// or serving the client (no longer waiting).
	admin := connectAdmin(t, b)
	err := testenv.Poll(10*time.Second, func() (bool, error) {
		pool, err := showPool(ctx, admin, name)
		return pool["cl_waiting"] == "1", err
	})
	if err != nil {
		t.Fatalf("no client waiting while %d transactions hold the servers: %v", pgbouncer.PoolSize, err)
	}
	pool, err := showPool(ctx, admin, name)
	if err != nil {
		t.Fatal(err)
	}
	if pool["cl_waiting"] != "1" || pool["sv_active"] != strconv.Itoa(pgbouncer.PoolSize) || pool["sv_login"] != "0" || pool["sv_idle"] != "0" || pool["sv_used"] != "0" {
		t.Fatalf("a client waits, but the servers are not exactly the %d busy ones: %v", pgbouncer.PoolSize, pool)
	}

	if err := busy[0].Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case pid := <-got:
		if pid != busyPIDs[0] {
			t.Fatalf("waiting client ran on backend %d, not on %d that COMMIT freed (busy: %v)", pid, busyPIDs[0], busyPIDs)
		}
	case err := <-failed:
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatal("waiting client got no server 10s after a COMMIT freed one")
	}
	for _, tx := range busy[1:] {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// connectAdmin connects to PgBouncer's admin console, which speaks only
// the simple protocol.
func connectAdmin(t *testing.T, b *pgbouncer.Bouncer) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(b.URL("pgbouncer"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// showPool returns the SHOW POOLS row of database as column -> value text.
func showPool(ctx context.Context, admin *pgx.Conn, database string) (map[string]string, error) {
	rows, err := admin.Query(ctx, "SHOW POOLS")
	if err != nil {
		return nil, err
	}
	pools, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		return nil, err
	}
	for _, p := range pools {
		if p["database"] == database {
			row := make(map[string]string, len(p))
			for k, v := range p {
				row[k] = fmt.Sprint(v)
			}
			return row, nil
		}
	}
	return nil, nil
}

// PgBouncer 1.18 refuses startup parameters it does not track, such as
// search_path, and accepts those it does, such as application_name.
func TestStartupParameters(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	b := startBouncer(t)

	cfg, err := pgx.ParseConfig(b.URL(database(t)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["application_name"] = "pgbouncer_test"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("with application_name: %v", err)
	}
	conn.Close(ctx)

	cfg, err = pgx.ParseConfig(b.URL(database(t)))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = "public"
	conn, err = pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		conn.Close(ctx)
		t.Fatal("PgBouncer accepted startup parameter search_path")
	}
	t.Log(err)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || pgErr.Message != "unsupported startup parameter: search_path" {
		t.Fatalf("with search_path: %v; want 08P01 unsupported startup parameter: search_path", err)
	}
}

func TestCloseStopsPgBouncer(t *testing.T) {
	t.Parallel()
	b, err := pgbouncer.Start(t.Context(), testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	if !alive(b.PID) {
		t.Fatalf("PgBouncer (pid %d) is not running after Start", b.PID)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if alive(b.PID) {
		t.Fatalf("PgBouncer (pid %d) still runs after Close", b.PID)
	}
	if _, err := os.Stat(b.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s not removed: %v", b.Dir, err)
	}
}

// A process that dies without Close leaves no PgBouncer running.
func TestKilledOwnerLeavesNoPgBouncer(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^$") // TestMain sees childEnv
	cmd.Env = append(os.Environ(), childEnv+"="+testenv.URL())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("child started no PgBouncer: %v", err)
	}
	var (
		pid int
		dir string
	)
	if _, err := fmt.Sscan(line, &pid, &dir); err != nil {
		t.Fatalf("child printed %q: %v", line, err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) }) // only Close removes it
	if !alive(pid) {
		t.Fatalf("child's PgBouncer (pid %d) is not running", pid)
	}

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := testenv.Poll(10*time.Second, func() (bool, error) { return !alive(pid), nil }); err != nil {
		t.Fatalf("PgBouncer (pid %d) still runs after its owner was killed: %v", pid, err)
	}
}

// alive reports whether process pid runs pgbouncer and has not exited. A
// process that has exited but that its parent has not yet reaped (a
// zombie, state Z) holds no port and counts as gone. (The tests do not
// check that PgBouncer's port refuses connections: once free, another
// test's server may take it.)
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// "PID (COMM) STATE ...", where COMM may contain spaces and parentheses.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return false
	}
	state := strings.Fields(string(stat[end+1:]))
	return string(stat[open+1:end]) == "pgbouncer" && len(state) > 0 && state[0] != "Z" && state[0] != "X"
}

// When nothing answers through PgBouncer, Start gives up when its context
// ends, with PgBouncer's log in the error, and leaves nothing behind.
func TestStartFailureReportsLog(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()

	b, err := pgbouncer.Start(ctx, "postgres://postgres:it's%20secret@"+closed+"/postgres?sslmode=disable")
	if err == nil {
		b.Close()
		t.Fatalf("Start succeeded in front of %s, where nothing listens", closed)
	}
	t.Log(err)
	msg := err.Error()
	if !strings.Contains(msg, "closing because: connect failed") || strings.Contains(msg, "secret") {
		t.Fatalf("error should hold PgBouncer's log, without the password: %v", err)
	}
	_, rest, _ := strings.Cut(msg, "last lines of ")
	log, _, _ := strings.Cut(rest, ":\n")
	if _, err := os.Stat(filepath.Dir(log)); !os.IsNotExist(err) || !strings.HasSuffix(log, "pgbouncer.log") {
		t.Fatalf("PgBouncer's directory %q not removed: %v", filepath.Dir(log), err)
	}
}

// Without pgbouncer, Start says how to install it.
func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	defer pgbouncer.SetFallbackBinary(filepath.Join(t.TempDir(), "pgbouncer"))()

	b, err := pgbouncer.Start(t.Context(), testenv.URL())
	if err == nil {
		b.Close()
		t.Fatal("Start succeeded without a pgbouncer binary")
	}
	t.Log(err)
	if !strings.Contains(err.Error(), "install Debian's pgbouncer package (apt-get install pgbouncer)") {
		t.Fatalf("error does not say how to install pgbouncer: %v", err)
	}
}
