package pgserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cluster is a throwaway PostgreSQL cluster in a temporary directory, run
// with PostgreSQL server binaries installed on this machine. Unlike a
// [Server], its owner controls its lifecycle: the chaos test stops and
// restarts it.
type Cluster struct {
	// Dir is the temporary directory holding the data directory ("data"),
	// the server log ("postgres.log") and the Unix-domain socket.
	Dir string
	// Port is the TCP port the server listens on at 127.0.0.1.
	Port int
	// URL is a connection URL to the "postgres" database as superuser "postgres".
	URL string
	// BinDir is the directory holding the initdb and pg_ctl that run the cluster.
	BinDir string

	cred      *syscall.Credential // user to run PostgreSQL programs as; nil to keep the current one
	guard     *exec.Cmd           // cleans up if this process dies without Close; see startGuard
	guardPipe *os.File            // the only write end of the guard's stdin
	closeOnce sync.Once
	closeErr  error
}

// pgConfig is appended to the cluster's postgresql.conf. fsync stays on so
// that benchmark numbers mean something. The port is passed on the command
// line by Start.
const pgConfig = `
# Added by pgserver.
listen_addresses = '127.0.0.1'
unix_socket_directories = '%s'
max_connections = 200
shared_buffers = 128MB
fsync = on
`

// pgCtlTimeout bounds how long pg_ctl waits for a start or stop, in seconds.
const pgCtlTimeout = "60"

// StartCluster creates a cluster in a new temporary directory with initdb
// (trust authentication, superuser "postgres", UTF8) and starts it on a free
// port of 127.0.0.1. initdb and pg_ctl are taken from PATH or else from
// /usr/lib/postgresql/*/bin, highest version first. When running as root,
// which PostgreSQL refuses, they run as user "postgres" (or "nobody").
// The caller must call [Cluster.Close] when done.
func StartCluster(ctx context.Context) (*Cluster, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := UnprivilegedCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgserver-")
	if err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	c := &Cluster{Dir: dir, BinDir: bin, cred: cred}
	if err := c.init(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	if err := c.startGuard(); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	if err := c.startOnFreePort(ctx); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// init creates the data directory and configures it.
func (c *Cluster) init(ctx context.Context) error {
	if c.cred != nil {
		if err := os.Chown(c.Dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("give cluster directory to uid %d: %w", c.cred.Uid, err)
		}
	}
	cmd := c.command(ctx, "initdb",
		"--pgdata="+c.dataDir(), "--username=postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb in %s: %w\n%s", c.Dir, err, out)
	}

	conf, err := os.OpenFile(filepath.Join(c.dataDir(), "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = fmt.Fprintf(conf, pgConfig, strings.ReplaceAll(c.Dir, "'", "''"))
	if err := errors.Join(err, conf.Close()); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	return nil
}

// startOnFreePort starts the server on a free port, trying another port if
// some other process took the chosen one in the meantime.
func (c *Cluster) startOnFreePort(ctx context.Context) error {
	var err error
	for range 3 {
		if c.Port, err = FreePort(); err != nil {
			return err
		}
		c.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
		if err = c.Start(ctx); err == nil || !strings.Contains(err.Error(), "could not bind") {
			return err
		}
	}
	return err
}

// Start starts the cluster's server, e.g. again after [Cluster.Stop], on the
// same port and data directory, and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	err := c.pgCtl(ctx, "start", "--wait", "--timeout="+pgCtlTimeout,
		"--log="+c.logPath(), "--options=-p "+strconv.Itoa(c.Port))
	if err == nil {
		err = ping(ctx, c.URL)
	}
	if err != nil {
		return fmt.Errorf("start PostgreSQL in %s: %w\n%s", c.Dir, err, c.logTail())
	}
	return nil
}

// Stop stops the cluster's server with pg_ctl stop mode "fast" (disconnect
// clients, shut down cleanly) or "immediate" (abort, like a crash; the next
// Start runs crash recovery).
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	if mode != "fast" && mode != "immediate" {
		return fmt.Errorf("stop PostgreSQL: mode %q is not \"fast\" or \"immediate\"", mode)
	}
	if err := c.pgCtl(ctx, "stop", "--wait", "--timeout="+pgCtlTimeout, "--mode="+mode); err != nil {
		return fmt.Errorf("stop PostgreSQL in %s (%s): %w\n%s", c.Dir, mode, err, c.logTail())
	}
	return nil
}

// guardScript waits for end of file on its standard input, then stops the
// cluster ($0: bin dir, $1: cluster dir) in immediate mode and removes it.
const guardScript = `read _; "$0/pg_ctl" stop --pgdata="$1/data" --mode=immediate >/dev/null 2>&1; rm -rf "$1"`

// startGuard starts a shell that stops and removes the cluster if this
// process dies without calling Close (killed, or a test binary's timeout):
// pg_ctl detaches the server, so nothing else would. The shell reads from
// a pipe whose write end only this process holds, so it sees end of file
// when this process exits. It runs in a process group of its own, so a
// Ctrl-C aimed at this process does not kill it first.
func (c *Cluster) startGuard() error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start cleanup guard: %w", err)
	}
	defer r.Close()
	cmd := exec.Command("/bin/sh", "-c", guardScript, c.BinDir, c.Dir)
	cmd.Stdin = r
	cmd.Dir = c.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: c.cred}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start cleanup guard: %w", err)
	}
	c.guard, c.guardPipe = cmd, w
	return nil
}

// Close stops the server, if running, in immediate mode and removes the
// cluster's directory. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		if c.guard != nil { // Close cleans up itself: retire the guard first
			_ = c.guard.Process.Kill()
			_ = c.guard.Wait()
			c.guardPipe.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var stopErr error
		if c.running(ctx) {
			stopErr = c.Stop(ctx, "immediate")
		}
		c.closeErr = errors.Join(stopErr, os.RemoveAll(c.Dir))
	})
	return c.closeErr
}

// running reports whether pg_ctl status finds a live server.
func (c *Cluster) running(ctx context.Context) bool {
	if _, err := os.Stat(filepath.Join(c.dataDir(), "postmaster.pid")); err != nil {
		return false
	}
	return c.pgCtl(ctx, "status") == nil // exits with 3 if no server runs
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }
func (c *Cluster) logPath() string { return filepath.Join(c.Dir, "postgres.log") }

// pgCtl runs pg_ctl on the data directory with its output appended to the
// server log. Because pg_ctl and the server it starts write to a file, not
// to pipes, the server does not keep the caller's (e.g. go test's) output
// open.
func (c *Cluster) pgCtl(ctx context.Context, args ...string) error {
	log, err := os.OpenFile(c.logPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	defer log.Close()
	if c.cred != nil {
		if err := log.Chown(int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return fmt.Errorf("give server log to uid %d: %w", c.cred.Uid, err)
		}
	}
	cmd := c.command(ctx, "pg_ctl", append([]string{"--pgdata=" + c.dataDir()}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("pg_ctl %s: %w", args[0], err)
	}
	return nil
}

// command prepares to run the PostgreSQL program name from c.BinDir as the
// cluster's user.
func (c *Cluster) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, name), args...)
	cmd.Dir = c.Dir // the current directory may not be accessible to c.cred
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd
}

// logTail returns the last lines of the server log, for error messages.
func (c *Cluster) logTail() string {
	b, err := os.ReadFile(c.logPath())
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "last lines of " + c.logPath() + ":\n" + strings.Join(lines, "\n")
}

// findBinDir returns the directory holding initdb and pg_ctl: the one of
// initdb on PATH, else the highest version under /usr/lib/postgresql.
func findBinDir() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(p))
		}
	}
	versioned, _ := filepath.Glob("/usr/lib/postgresql/*/bin") // the pattern is valid
	slices.SortFunc(versioned, func(a, b string) int { return compareVersions(b, a) })
	dirs = append(dirs, versioned...)

	for _, dir := range dirs {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", errors.New("found no initdb and pg_ctl on PATH or under /usr/lib/postgresql/*/bin")
}

// compareVersions compares the version directories of two
// /usr/lib/postgresql/VERSION/bin paths numerically, e.g. 9.6 < 15.
func compareVersions(a, b string) int {
	version := func(p string) []int {
		var v []int
		for f := range strings.SplitSeq(filepath.Base(filepath.Dir(p)), ".") {
			n, _ := strconv.Atoi(f) // a non-number sorts as 0
			v = append(v, n)
		}
		return v
	}
	return slices.Compare(version(a), version(b))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// UnprivilegedCredential returns the user to run programs that refuse to
// run as root (PostgreSQL, PgBouncer) as: nil when not running as root,
// else user "postgres" or, failing that, "nobody".
func UnprivilegedCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse uid of user %s: %w", name, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse gid of user %s: %w", name, err)
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New(`running as root, which PostgreSQL and PgBouncer refuse, and found no user "postgres" or "nobody" to run them as`)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago;
// another process may take it before the caller binds it.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
