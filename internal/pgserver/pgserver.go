// Package pgserver finds or starts a real PostgreSQL server for the
// project's tests, demo program, benchmark program and chaos test.
//
// [Find] tries, in order, an explicitly configured server
// (INBOX_TEST_DATABASE_URL), a Docker container started with
// testcontainers-go, and a throwaway cluster run with locally installed
// PostgreSQL server binaries ([StartCluster]).
package pgserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL is the environment variable that points Find at an existing server.
// Its value must be a postgres:// URL of a role allowed to create databases.
const EnvURL = "INBOX_TEST_DATABASE_URL"

// pingTimeout bounds how long a server may take to answer SELECT 1.
const pingTimeout = 5 * time.Second

// Server is a reachable PostgreSQL server.
type Server struct {
	// URL is a connection URL to the server's "postgres" database (or the
	// database named in INBOX_TEST_DATABASE_URL) with administrative rights,
	// e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable.
	URL string
	// Source says where the server came from, for logs: "INBOX_TEST_DATABASE_URL",
	// "testcontainers (postgres:16-alpine)" or "local cluster in DIR (initdb from BINDIR)".
	Source string

	close     func() error // stops what Find started; nil if nothing
	closeOnce sync.Once
	closeErr  error
}

// Find returns a PostgreSQL server, trying in this order:
//
//  1. the server at INBOX_TEST_DATABASE_URL, if that variable is set; if it
//     does not answer SELECT 1 within a few seconds, Find returns an error
//     instead of trying the other ways;
//  2. a postgres:16-alpine container started with testcontainers-go, if a
//     Docker engine answers within a couple of seconds;
//  3. a throwaway cluster started with [StartCluster].
//
// If none works, the error explains each failure and how to fix it.
// The caller must call [Server.Close] when done.
func Find(ctx context.Context) (*Server, error) {
	if u := os.Getenv(EnvURL); u != "" {
		return fromEnv(ctx, u)
	}

	s, dockerErr := startContainer(ctx)
	if dockerErr == nil {
		return s, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("find PostgreSQL server: %w", err)
	}

	c, clusterErr := StartCluster(ctx)
	if clusterErr == nil {
		return &Server{
			URL:    c.URL,
			Source: fmt.Sprintf("local cluster in %s (initdb from %s)", c.Dir, c.BinDir),
			close:  c.Close,
		}, nil
	}

	return nil, fmt.Errorf("no PostgreSQL server available; do one of:\n"+
		"  1. set %s=postgres://USER:PASSWORD@HOST:PORT/postgres?sslmode=disable (it is unset)\n"+
		"  2. start a Docker engine (%v)\n"+
		"  3. install the PostgreSQL server binaries, e.g. `apt-get install postgresql` (%v)",
		EnvURL, indent(dockerErr), indent(clusterErr))
}

// indent formats err so that its continuation lines (from errors.Join or
// log tails) stay visually inside the list item that holds it.
func indent(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "\n     ")
}

// fromEnv returns the server named by the INBOX_TEST_DATABASE_URL value u
// after checking that it answers.
func fromEnv(ctx context.Context, u string) (*Server, error) {
	parsed, err := url.Parse(u)
	if err != nil || (parsed.Scheme != "postgres" && parsed.Scheme != "postgresql") {
		return nil, fmt.Errorf("%s must be a postgres://USER:PASSWORD@HOST:PORT/DATABASE URL", EnvURL)
	}
	if err := ping(ctx, u); err != nil {
		return nil, fmt.Errorf("%s is set but the server at %s does not answer (fix or unset it): %w",
			EnvURL, parsed.Redacted(), err)
	}
	return &Server{URL: u, Source: EnvURL}, nil
}

// Close stops the container or cluster that Find started, if any, and
// removes its temporary files. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		if s.close != nil {
			s.closeErr = s.close()
		}
	})
	return s.closeErr
}

// CreateDatabase creates a database with a unique random name starting with
// "inbox_test_" and returns its URL: s.URL with the database name replaced.
// drop removes the database even if connections to it are still open
// (DROP DATABASE ... WITH (FORCE), which needs PostgreSQL 13 or later);
// calling it again is harmless.
func (s *Server) CreateDatabase(ctx context.Context) (dbURL string, drop func(context.Context) error, err error) {
	suffix := make([]byte, 8)
	if _, err := rand.Read(suffix); err != nil {
		return "", nil, fmt.Errorf("generate database name: %w", err)
	}
	name := "inbox_test_" + hex.EncodeToString(suffix)

	dbURL, err = withDatabase(s.URL, name)
	if err != nil {
		return "", nil, err
	}
	ident := pgx.Identifier{name}.Sanitize()
	if err := execSQL(ctx, s.URL, "CREATE DATABASE "+ident); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	drop = func(ctx context.Context) error {
		if err := execSQL(ctx, s.URL, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	return dbURL, drop, nil
}

// withDatabase returns rawURL with its database name replaced by name,
// keeping host, credentials and query parameters.
func withDatabase(rawURL, name string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse errors quote the URL, which may hold a password.
		return "", errors.New("parse server URL: not a valid URL")
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}

// ping connects to url and runs SELECT 1, giving up after pingTimeout.
func ping(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return fmt.Errorf("SELECT 1: %w", err)
	}
	return nil
}

// execSQL runs one statement on a fresh connection to url.
func execSQL(ctx context.Context, url, sql string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return err
	}
	return nil
}
