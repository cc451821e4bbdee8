package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

func TestMain(m *testing.M) {
	os.Exit(testenv.Main(m, "inboxctl", testenv.InboxCode, testenv.PgxPool, testenv.HTTPServer))
}

// fixture is one test's schema, with a pool and an Admin working in it.
type fixture struct {
	t      *testing.T
	schema string
	pool   *pgxpool.Pool
	admin  *inbox.Admin
}

// newFixture creates an empty schema for t (not migrated).
func newFixture(t *testing.T) *fixture {
	t.Helper()
	schema := testenv.Schema(t)
	pool := testenv.SchemaPool(t, schema, 8)
	admin, err := inbox.NewAdmin(pool)
	if err != nil {
		t.Fatalf("NewAdmin: %v", err)
	}
	return &fixture{t: t, schema: schema, pool: pool, admin: admin}
}

// start starts an inbox in the fixture's schema that reacts in
// milliseconds and gives each row one attempt; it stops when t ends.
func (f *fixture) start(reg *inbox.Registry, more ...inbox.Option) *inbox.Inbox {
	f.t.Helper()
	opts := append([]inbox.Option{inbox.WithMaxRetryAttempt(1), inbox.WithLogger(slog.New(slog.DiscardHandler))}, more...)
	return testenv.Start(f.t, context.Background(), f.pool, reg, testenv.Fast(f.t, opts...)...)
}

// set stores one event of eventType per payload and returns their ids.
func (f *fixture) set(ib *inbox.Inbox, eventType string, payloads ...string) []uuid.UUID {
	f.t.Helper()
	var recs []*inbox.Record
	var ids []uuid.UUID
	for _, p := range payloads {
		id := uuid.New()
		r, err := inbox.NewRecord(id, eventType, []byte(p))
		if err != nil {
			f.t.Fatalf("NewRecord: %v", err)
		}
		recs, ids = append(recs, r), append(ids, id)
	}
	if err := ib.Client().Set(context.Background(), recs...); err != nil {
		f.t.Fatalf("Set: %v", err)
	}
	return ids
}

// pair names an (event type, handler key) pair in stats.
type pair struct{ eventType, key string }

// waitStats polls Admin.Stats until cond holds, for up to 20 seconds.
func (f *fixture) waitStats(what string, cond func(map[pair]inbox.HandlerStats) bool) {
	f.t.Helper()
	var last map[pair]inbox.HandlerStats
	err := testenv.Poll(20*time.Second, func() (bool, error) {
		stats, err := f.admin.Stats(context.Background())
		if err != nil {
			return false, err
		}
		last = map[pair]inbox.HandlerStats{}
		for _, h := range stats {
			last[pair{h.EventType, h.HandlerKey}] = h
		}
		return cond(last), nil
	})
	if err != nil {
		f.t.Fatalf("waiting for %s: %v; last stats %+v", what, err, last)
	}
}

// result is what one run of inboxctl did.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// invocation is how a test runs inboxctl: in-process through app.run.
type invocation struct {
	t           *testing.T
	ctx         context.Context
	schema      string // passed as --schema unless ""
	stdin       string
	interactive bool
	progress    bool
	stderr      io.Writer // receives stderr too, when set
}

func (f *fixture) ctl(args ...string) result {
	f.t.Helper()
	return invocation{t: f.t, schema: f.schema}.run(args...)
}

// ctlJSON runs inboxctl with --json, wants exit 0 and decodes stdout into
// out.
func (f *fixture) ctlJSON(out any, args ...string) {
	f.t.Helper()
	r := f.ctl(append(args, "--json")...)
	if r.code != 0 {
		f.t.Fatalf("inboxctl %s: %v", strings.Join(args, " "), r)
	}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		f.t.Fatalf("inboxctl %s: decode JSON: %v\n%s", strings.Join(args, " "), err, r.stdout)
	}
}

// syncBuffer is a buffer safe for a writer and a reader in two
// goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (in invocation) run(args ...string) result {
	in.t.Helper()
	if in.schema != "" && len(args) > 0 && args[0] != "help" {
		args = append(args, "--schema", in.schema)
	}
	ctx := in.ctx
	if ctx == nil {
		ctx = context.Background()
	}
	var stdout, stderr syncBuffer
	var errw io.Writer = &stderr
	if in.stderr != nil {
		errw = io.MultiWriter(&stderr, in.stderr)
	}
	env := map[string]string{"DATABASE_URL": testenv.URL(), "USER": "tester"}
	a := &app{
		stdin: strings.NewReader(in.stdin), stdout: &stdout, stderr: errw,
		env:         func(k string) string { return env[k] },
		interactive: in.interactive, showProgress: in.progress,
		hostname: func() (string, error) { return "testhost", nil },
	}
	code := a.run(ctx, args)
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// wantCode fails the test unless r exited with code and its stderr
// contains each of errs.
func wantCode(t *testing.T, r result, code int, errs ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("want exit %d, got %v", code, r)
	}
	for _, e := range errs {
		if !strings.Contains(r.stderr, e) {
			t.Fatalf("stderr lacks %q: %v", e, r)
		}
	}
}

// wantOut fails the test unless r exited 0 and its stdout contains each
// of outs.
func wantOut(t *testing.T, r result, outs ...string) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("want exit 0, got %v", r)
	}
	for _, o := range outs {
		if !strings.Contains(r.stdout, o) {
			t.Fatalf("stdout lacks %q: %v", o, r)
		}
	}
}
