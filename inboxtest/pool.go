package inboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/pgserver"
)

// DefaultMaxConns is the most connections a pool from [NewPool] or
// [NewSchema] opens, unless configure says otherwise. It leaves room for
// many parallel tests on one server.
const DefaultMaxConns = 8

const (
	// dbPrefix starts the name of every database this package creates:
	// inboxtest_<server's Unix time>_<random>.
	dbPrefix = "inboxtest_"
	// staleAfter is how old a database of this package must be, by the
	// server's clock, before another process may drop it for want of
	// connections: long enough for its creator to have connected.
	staleAfter = time.Minute
	// findTimeout bounds finding or starting PostgreSQL and creating the
	// database, which the first test of a binary waits for.
	findTimeout = 3 * time.Minute
	// cleanupTimeout bounds dropping a schema.
	cleanupTimeout = 30 * time.Second
)

// database is the database of this test binary.
type database struct {
	// srv must stay reachable for the life of the process: a throwaway
	// cluster from pgserver is stopped by a guard process when the pipe
	// srv holds closes, and a collected *os.File closes its descriptor.
	srv *pgserver.Server
	// cfg connects to the database; each schema's pool copies it.
	cfg *pgxpool.Config
	// anchor is a connection held until the process exits. While it is
	// open, sweep in other processes leaves the database alone.
	anchor *pgx.Conn
}

var (
	dbOnce sync.Once
	db     *database
	dbErr  error
)

// sharedDatabase returns the database of this test binary, creating it
// the first time.
func sharedDatabase() (*database, error) {
	dbOnce.Do(func() { db, dbErr = createDatabase() })
	return db, dbErr
}

// createDatabase finds a server with pgserver.Find, drops the databases
// that earlier test processes left on it, and creates a database for this
// process.
func createDatabase() (*database, error) {
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	defer cancel()
	srv, err := pgserver.Find(ctx)
	if err != nil {
		return nil, fmt.Errorf("inboxtest: tests need PostgreSQL: %w", err)
	}
	d, err := createOn(ctx, srv)
	if err != nil {
		return nil, errors.Join(err, srv.Close())
	}
	return d, nil
}

func createOn(ctx context.Context, srv *pgserver.Server) (*database, error) {
	admin, err := pgx.Connect(ctx, srv.URL)
	if err != nil {
		return nil, fmt.Errorf("inboxtest: connect to PostgreSQL from %s: %w", srv.Source, err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	var now int64
	if err := admin.QueryRow(ctx, `SELECT extract(epoch FROM now())::bigint`).Scan(&now); err != nil {
		return nil, fmt.Errorf("inboxtest: read the server's clock: %w", err)
	}
	sweep(ctx, admin, now)

	name := dbPrefix + strconv.FormatInt(now, 10) + "_" + randomHex(4)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, fmt.Errorf("inboxtest: create database %s on PostgreSQL from %s (the role must be allowed to create databases): %w",
			name, srv.Source, err)
	}
	cfg, err := pgxpool.ParseConfig(srv.URL)
	if err != nil {
		return nil, fmt.Errorf("inboxtest: parse the server's URL: %w", err)
	}
	cfg.ConnConfig.Database = name
	anchor, err := pgx.ConnectConfig(ctx, cfg.ConnConfig.Copy())
	if err != nil {
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
		return nil, fmt.Errorf("inboxtest: connect to database %s: %w", name, err)
	}
	return &database{srv: srv, cfg: cfg, anchor: anchor}, nil
}

// sweep drops the databases of this package that no session uses and
// that were created at least staleAfter before now (the server's Unix
// time): those of test processes that have exited. It is best effort: a
// database it may not drop, or one that a session joins meanwhile, stays.
func sweep(ctx context.Context, admin *pgx.Conn, now int64) {
	rows, err := admin.Query(ctx, `
SELECT datname FROM pg_database d
WHERE datname LIKE 'inboxtest\_%'
  AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.datid = d.oid)`)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, name := range names {
		created, ok := databaseTime(name)
		if !ok || now-created < int64(staleAfter/time.Second) {
			continue
		}
		// Without FORCE: a session that connected since the query above
		// keeps its database.
		_, _ = admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	}
}

// databaseTime returns the creation time in a name made by createOn.
func databaseTime(name string) (int64, bool) {
	rest, ok := strings.CutPrefix(name, dbPrefix)
	if !ok {
		return 0, false
	}
	secs, _, ok := strings.Cut(rest, "_")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(secs, 10, 64)
	return n, err == nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails
	return hex.EncodeToString(b)
}

// NewPool returns a pool for the test t alone: its connections work in a
// new schema (their search_path is that schema only) of the test binary's
// database, where [inbox.Migrate] has created the inbox's tables. Tables
// the test creates through the pool go into that schema too. Tests using
// NewPool may run in parallel: each sees only its own schema.
//
// The pool opens at most [DefaultMaxConns] connections; configure
// functions may change its configuration before it connects (they must
// keep the search_path). When t ends, the pool is closed and the schema
// dropped with everything in it.
//
// The first call of a test binary finds PostgreSQL and creates the
// database (see the package documentation); if no server can be found, t
// fails with the reasons and the ways to provide one. NewPool never skips
// t.
func NewPool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), findTimeout)
	defer cancel()
	pool, drop, err := newSchema(ctx, t.Name(), configure)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("inboxtest: %v", err)
		}
	})
	return pool
}

// NewSchema is [NewPool] for code without a testing.TB, such as an
// Example function or a TestMain: it returns the pool and drop, which
// closes the pool and drops the schema. drop must be called once the pool
// is no longer used.
func NewSchema(ctx context.Context, configure ...func(*pgxpool.Config)) (pool *pgxpool.Pool, drop func() error, err error) {
	return newSchema(ctx, "", configure)
}

// newSchema creates a migrated schema named after hint and a pool on it.
func newSchema(ctx context.Context, hint string, configure []func(*pgxpool.Config)) (*pgxpool.Pool, func() error, error) {
	d, err := sharedDatabase()
	if err != nil {
		return nil, nil, err
	}
	name := schemaName(hint)
	ident := pgx.Identifier{name}.Sanitize()
	if err := d.exec(ctx, "CREATE SCHEMA "+ident); err != nil {
		return nil, nil, fmt.Errorf("inboxtest: create schema %s: %w", name, err)
	}
	dropSchema := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := d.exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE"); err != nil {
			return fmt.Errorf("drop schema %s: %w", name, err)
		}
		return nil
	}

	cfg := d.cfg.Copy()
	cfg.ConnConfig.RuntimeParams["search_path"] = name
	cfg.MaxConns = DefaultMaxConns
	for _, fn := range configure {
		fn(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, nil, errors.Join(fmt.Errorf("inboxtest: connect to schema %s: %w", name, err), dropSchema())
	}
	if err := inbox.Migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, nil, errors.Join(fmt.Errorf("inboxtest: migrate schema %s: %w", name, err), dropSchema())
	}
	var once sync.Once
	var dropErr error
	return pool, func() error {
		once.Do(func() {
			pool.Close()
			dropErr = dropSchema()
		})
		return dropErr
	}, nil
}

// exec runs one statement in the database on a connection of its own
// (the anchor is not safe for concurrent use, and a pool would leave a
// health-check goroutine behind).
func (d *database) exec(ctx context.Context, sql string) error {
	conn, err := pgx.ConnectConfig(ctx, d.cfg.ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// maxHint is how much of a test's name a schema name keeps.
const maxHint = 40

// schemaName returns a unique schema name that starts with hint (a test
// name) reduced to lower-case letters, digits and underscores.
func schemaName(hint string) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(hint) {
		if b.Len() >= maxHint {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	b.WriteByte('_')
	b.WriteString(randomHex(4))
	return b.String()
}
