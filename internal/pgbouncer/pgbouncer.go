// Package pgbouncer starts a real PgBouncer in front of a PostgreSQL server,
// for tests: transaction pooling with a small pool, so that clients share
// server connections the way they do behind a production pooler.
//
// It runs the pgbouncer program from Debian's pgbouncer package (PgBouncer
// 1.18), found on PATH or at /usr/sbin/pgbouncer. Through PgBouncer 1.18 in
// transaction mode, clients must cope with the following:
//
//   - PgBouncer refuses a connection whose startup packet sets any
//     parameter but client_encoding, DateStyle, TimeZone,
//     standard_conforming_strings and application_name, which it tracks,
//     and extra_float_digits, which it is told to ignore. A pgx
//     RuntimeParams["search_path"] fails with "FATAL: unsupported startup
//     parameter: search_path" (SQLSTATE 08P01); options (-csearch_path=...),
//     statement_timeout and IntervalStyle fail the same way. Set such
//     settings inside each transaction (SET LOCAL) or qualify names.
//   - Session state does not survive a transaction: the next one may run on
//     another server connection, so a named prepared statement (pgx's
//     default QueryExecModeCacheStatement) may be missing where it is used:
//     "prepared statement "stmtcache_..." does not exist" (SQLSTATE 26000).
//     Use [pgx.QueryExecModeExec] or [pgx.QueryExecModeSimpleProtocol].
//   - With auth_type = any, any user name may connect, and the admin console
//     (database "pgbouncer", simple protocol only) answers SHOW POOLS, SHOW
//     SERVERS and the like for anyone.
package pgbouncer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pginbox/inbox/internal/pgserver"
)

// PoolSize is PgBouncer's default_pool_size here: the most server
// connections it opens to one database, however many clients it serves.
const PoolSize = 4

const (
	// maxClientConn is PgBouncer's max_client_conn.
	maxClientConn = 500
	// startTimeout bounds how long Start waits for SELECT 1 to be answered
	// through PgBouncer.
	startTimeout = 30 * time.Second
	// probeTimeout bounds one attempt to connect and run SELECT 1.
	probeTimeout = 5 * time.Second
	// probeInterval is the pause between attempts.
	probeInterval = 50 * time.Millisecond
	// stopTimeout is how long Close waits after SIGTERM before SIGKILL.
	stopTimeout = 10 * time.Second
)

// fallbackBinary is where Debian's package installs pgbouncer; /usr/sbin is
// often not on an unprivileged user's PATH. Tests may change it.
var fallbackBinary = "/usr/sbin/pgbouncer"

// config is written to pgbouncer.ini. PgBouncer runs in the foreground and
// logs to its standard error, which Start sends to pgbouncer.log: a logfile
// setting would miss errors in this file, which PgBouncer reports before it
// opens its log file, and would repeat every other line.
const config = `; Written by github.com/pginbox/inbox/internal/pgbouncer.
[databases]
* = %s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
pidfile = %s
auth_type = any
pool_mode = transaction
default_pool_size = %d
max_client_conn = %d
server_reset_query =
ignore_startup_parameters = extra_float_digits
`

// Bouncer is a PgBouncer process serving every database of one PostgreSQL
// server under the same name.
type Bouncer struct {
	// Dir is the temporary directory holding pgbouncer.ini, pgbouncer.log
	// and pgbouncer.pid. Close removes it.
	Dir string
	// Port is the TCP port PgBouncer listens on at 127.0.0.1.
	Port int
	// PID is the process id of PgBouncer.
	PID int

	user      string // upstream user: PgBouncer connects as this user, whatever the client's name
	proc      *process
	closeOnce sync.Once
	closeErr  error
}

// Start starts PgBouncer in front of the PostgreSQL server at upstreamURL
// and returns once a SELECT 1 has been answered through it. upstreamURL is
// a postgres:// URL (or key=value string) of the server; its host, port,
// user and password are what PgBouncer connects with, without TLS. Any
// database name a client asks PgBouncer for is the same-named database of
// that server, and clients need no password.
//
// PgBouncer listens on a free port of 127.0.0.1, in transaction pooling
// mode with at most [PoolSize] server connections per database. When this
// process runs as root, PgBouncer runs as user "postgres" (or "nobody").
// ctx bounds the start only. The caller must call [Bouncer.Close]; if this
// process dies first, the kernel kills PgBouncer, and only its small
// temporary directory remains.
func Start(ctx context.Context, upstreamURL string) (*Bouncer, error) {
	up, err := pgconn.ParseConfig(upstreamURL)
	if err != nil {
		return nil, fmt.Errorf("start PgBouncer: %w", err)
	}
	databases, err := databasesLine(up)
	if err != nil {
		return nil, fmt.Errorf("start PgBouncer: %w", err)
	}
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	cred, err := pgserver.UnprivilegedCredential()
	if err != nil {
		return nil, fmt.Errorf("start PgBouncer: %w", err)
	}
	dir, err := os.MkdirTemp("", "pgbouncer-")
	if err != nil {
		return nil, fmt.Errorf("start PgBouncer: create directory: %w", err)
	}
	b := &Bouncer{Dir: dir, user: up.User}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, errors.Join(fmt.Errorf("start PgBouncer: give %s to uid %d: %w", dir, cred.Uid, err), b.Close())
		}
	}

	probeDB := cmp.Or(up.Database, up.User) // PostgreSQL's default database is the user's name
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for range 3 { // another process may take the free port first
		if err = b.start(ctx, bin, cred, databases, probeDB); err == nil {
			return b, nil
		}
		if !strings.Contains(err.Error(), "Address already in use") {
			break
		}
	}
	return nil, errors.Join(err, b.Close())
}

// databasesLine returns the connection string of the wildcard [databases]
// entry: host, port, user and, if set, password of up, quoted for PgBouncer.
func databasesLine(up *pgconn.Config) (string, error) {
	quote := func(key, value string) (string, error) {
		if strings.ContainsAny(value, "\x00\r\n") {
			return "", fmt.Errorf("upstream %s contains a line break or NUL", key)
		}
		return key + "='" + strings.ReplaceAll(value, "'", "''") + "'", nil
	}
	var parts []string
	for _, kv := range [][2]string{{"host", up.Host}, {"port", strconv.Itoa(int(up.Port))}, {"user", up.User}, {"password", up.Password}} {
		if kv[1] == "" {
			continue // PgBouncer rejects empty values
		}
		part, err := quote(kv[0], kv[1])
		if err != nil {
			return "", err
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, " "), nil
}

// findBinary returns the path of pgbouncer: on PATH, else fallbackBinary.
func findBinary() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if fi, err := os.Stat(fallbackBinary); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return fallbackBinary, nil
	}
	return "", fmt.Errorf("start PgBouncer: found no pgbouncer on PATH or at %s: "+
		"install Debian's pgbouncer package (apt-get install pgbouncer)", fallbackBinary)
}

// start writes the configuration for a free port, starts PgBouncer and
// waits until SELECT 1 is answered through it in database probeDB. If that
// fails, PgBouncer is stopped and the error ends with its log's last lines.
func (b *Bouncer) start(ctx context.Context, bin string, cred *syscall.Credential, databases, probeDB string) error {
	port, err := pgserver.FreePort()
	if err != nil {
		return fmt.Errorf("start PgBouncer: %w", err)
	}
	b.Port = port
	ini := filepath.Join(b.Dir, "pgbouncer.ini")
	content := fmt.Sprintf(config, databases, port, filepath.Join(b.Dir, "pgbouncer.pid"), PoolSize, maxClientConn)
	if err := os.WriteFile(ini, []byte(content), 0o600); err != nil {
		return fmt.Errorf("start PgBouncer: write %s: %w", ini, err)
	}
	if cred != nil {
		if err := os.Chown(ini, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("start PgBouncer: give %s to uid %d: %w", ini, cred.Uid, err)
		}
	}

	log, err := os.OpenFile(b.logPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("start PgBouncer: open log: %w", err)
	}
	defer log.Close() // PgBouncer has its own descriptor
	cmd := exec.Command(bin, ini)
	cmd.Dir = b.Dir // the current directory may not be accessible to cred
	cmd.Stdout, cmd.Stderr = log, log
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	b.proc, err = startProcess(cmd)
	if err != nil {
		b.proc = nil
		return fmt.Errorf("start PgBouncer: %w", err)
	}
	b.PID = b.proc.pid()

	if err := b.waitReady(ctx, probeDB); err != nil {
		_ = b.proc.stop(stopTimeout) // its exit status adds nothing to err
		b.proc = nil
		return fmt.Errorf("start PgBouncer on port %d: %w\n%s", port, err, b.logTail())
	}
	return nil
}

// waitReady probes PgBouncer until SELECT 1 in database succeeds through
// it, PgBouncer exits or ctx ends.
func (b *Bouncer) waitReady(ctx context.Context, database string) error {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("no answer to SELECT 1 through it: %w", context.Cause(ctx))
		case <-b.proc.done:
			return fmt.Errorf("pgbouncer exited: %v", b.proc.err)
		case <-t.C:
		}
		err := probe(ctx, b.URL(database))
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("no answer to SELECT 1 through it (%w): %w", context.Cause(ctx), err)
		}
		t.Reset(probeInterval)
	}
}

// probe connects to url and runs SELECT 1 with the simple protocol, which
// the admin console and every pooling mode accept.
func probe(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var one int
	return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// URL returns the URL of database through PgBouncer, as the upstream user
// without a password, e.g.
// postgres://postgres@127.0.0.1:41234/inbox_test_1?sslmode=disable.
func (b *Bouncer) URL(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(b.user),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(b.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Close stops PgBouncer (SIGTERM, which makes PgBouncer 1.18 close all
// connections at once, and SIGKILL if it still runs ten seconds later),
// waits for it to exit and removes its directory. It returns an error if PgBouncer had
// exited on its own before. It is safe to call more than once.
func (b *Bouncer) Close() error {
	b.closeOnce.Do(func() {
		var stopErr error
		if b.proc != nil {
			if err := b.proc.stop(stopTimeout); err != nil {
				stopErr = fmt.Errorf("stop PgBouncer: %w\n%s", err, b.logTail())
			}
		}
		b.closeErr = errors.Join(stopErr, os.RemoveAll(b.Dir))
	})
	return b.closeErr
}

func (b *Bouncer) logPath() string { return filepath.Join(b.Dir, "pgbouncer.log") }

// logTail returns the last lines of PgBouncer's log, for error messages.
func (b *Bouncer) logTail() string {
	data, err := os.ReadFile(b.logPath())
	if err != nil {
		return fmt.Sprintf("(no PgBouncer log: %v)", err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return "last lines of " + b.logPath() + ":\n" + strings.Join(lines, "\n")
}
