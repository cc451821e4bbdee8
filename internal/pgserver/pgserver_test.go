package pgserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestFindCreateDatabase(t *testing.T) {
	ctx := t.Context()
	s, err := Find(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("server from %s", s.Source)

	dbURL, drop, err := s.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "inbox_test_") || !strings.Contains(dbURL, "/"+name) {
		t.Fatalf("connected to database %q via %q", name, dbURL)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Fatalf("SELECT v = %d, %v; want 42", v, err)
	}

	// conn is still open: drop must force it out.
	if err := drop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := drop(ctx); err != nil {
		t.Fatalf("second drop: %v", err)
	}
	if exists := databaseExists(t, s.URL, name); exists {
		t.Fatalf("database %s still exists after drop", name)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestFindUnreachableEnvURL(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv(EnvURL, fmt.Sprintf("postgres://postgres:secret@%s/postgres?sslmode=disable", addr))

	start := time.Now()
	s, err := Find(t.Context())
	if err == nil {
		s.Close()
		t.Fatal("Find succeeded with an unreachable INBOX_TEST_DATABASE_URL")
	}
	t.Log(err)
	if msg := err.Error(); !strings.Contains(msg, EnvURL) || !strings.Contains(msg, addr) || strings.Contains(msg, "secret") {
		t.Errorf("error should name %s and %s without the password: %v", EnvURL, addr, err)
	}
	if d := time.Since(start); d > 2*pingTimeout {
		t.Errorf("Find took %v", d)
	}
}

func TestClusterStopStart(t *testing.T) {
	ctx := t.Context()
	c, err := StartCluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("cluster in %s on port %d, binaries from %s", c.Dir, c.Port, c.BinDir)

	if err := ping(ctx, c.URL); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := ping(ctx, c.URL); err == nil {
		t.Fatal("server answers after Stop")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ping(ctx, c.URL); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("%s not removed: %v", c.Dir, err)
	}
	if err := ping(ctx, c.URL); err == nil {
		t.Fatal("server answers after Close")
	}
}

// databaseExists reports whether the server at adminURL has database name.
func databaseExists(t *testing.T, adminURL, name string) bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var exists bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	return exists
}

// guardChildEnv makes the test binary a child that starts a cluster,
// prints its directory and waits to be killed.
const guardChildEnv = "PGSERVER_GUARD_CHILD"

// TestMain runs the guard child's role instead of the tests when
// guardChildEnv is set.
func TestMain(m *testing.M) {
	if os.Getenv(guardChildEnv) != "" {
		c, err := StartCluster(context.Background())
		if err != nil {
			fmt.Fprintln(os.Stderr, "guard child:", err)
			os.Exit(1)
		}
		fmt.Println(c.Dir)
		select {} // until killed: Close never runs
	}
	os.Exit(m.Run())
}

// A process that dies without Close leaves no server and no directory.
func TestClusterGuard(t *testing.T) {
	cmd := exec.Command(os.Args[0]) // TestMain sees guardChildEnv
	cmd.Env = append(os.Environ(), guardChildEnv+"=1")
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
		t.Fatalf("child gave no cluster directory: %v", err)
	}
	dir := strings.TrimSpace(line)
	if _, err := os.Stat(filepath.Join(dir, "data", "postmaster.pid")); err != nil {
		t.Fatalf("child's cluster is not running: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists 30s after its owner was killed", dir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
