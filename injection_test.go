package inbox_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// injectionNames would break out of a quoted string, identifier or format
// verb if the library ever spliced one into SQL or a log format. They serve
// as event types and handler keys.
var injectionNames = []string{
	`'; DROP TABLE inbox_records; --`,
	`"; DROP TABLE inbox_records; --`,
	`x'); DELETE FROM inbox_records; --`,
	`') OR 1=1 --`,
	`$1`,
	`$$; SELECT pg_sleep(10); $$`,
	`%s%v%d%!`,
	`\`,
	`\\'`,
	`E'\x41'`,
	`*/ /*`,
	`:name ? @p1`,
	"tab\tnew\nline\r",
	"ünïcødé 🎉 日本語",
	`"quoted"`,
	`inbox_records`,
	`NULL`,
	` leading and trailing `,
	`LISTEN x; NOTIFY x, 'y'`,
	`{a,"b"}`,
	`'::uuid`,
	strings.Repeat(`'"`, 127) + "x", // 255 bytes of quotes
}

// injectionPayloads are bodies that must reach the handlers byte for byte.
func injectionPayloads(t *testing.T) [][]byte {
	all := make([]byte, 256)
	for i := range all {
		all[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	return [][]byte{
		[]byte(`'); DROP TABLE inbox_records; --`),
		[]byte(`\x41\\x42`), // bytea escape syntax, as text
		{0, 0, 0},
		{0xff, 0xfe, 0x00, 0xc3, 0x28}, // not UTF-8
		{},
		nil,
		[]byte(`{"id": "'\"; --", "n": [1, null]}`),
		all,
		big,
	}
}

// TestInjection runs the inbox on schemas whose names, and with event
// types, handler keys and payloads whose contents, are hostile SQL; all of
// it must round-trip exactly, wake-ups by LISTEN/NOTIFY must work, and
// nothing outside the inbox's own schema may be touched.
// inboxTables are the tables Migrate creates, in name order.
var inboxTables = []string{"inbox_count_deltas", "inbox_counts", "inbox_history", "inbox_maintenance", "inbox_pauses",
	"inbox_records", "inbox_schema_lock", "inbox_schema_version", "inbox_throughput", "inbox_workers"}

// injectionSeq numbers the hostile schemas of TestInjection.
var injectionSeq atomic.Int64

func TestInjection(t *testing.T) {
	t.Parallel()
	seq := injectionSeq.Add(1)
	short := fmt.Sprintf(`x"; DROP TABLE inbox_records; -- %d`, seq)
	// A name longer than 49 bytes takes the hashed notification channel;
	// 63 bytes is the longest identifier PostgreSQL keeps.
	long := fmt.Sprintf(`y"; DROP SCHEMA public CASCADE; -- '%d' `, seq)
	for len(long)+2 <= 63 {
		long += "é"
	}
	long += strings.Repeat(".", 63-len(long))
	for _, schema := range []string{short, long} {
		t.Run(fmt.Sprintf("schema of %d bytes", len(schema)), func(t *testing.T) {
			t.Parallel()
			injectionRun(t, schema)
		})
	}
}

// injectionCanary is a schema the test must leave as it found it: a
// migrated inbox holding one unprocessed row, and a table of its own.
type injectionCanary struct {
	schema string
	pool   *pgxpool.Pool
	id     uuid.UUID
}

func newInjectionCanary(t *testing.T) *injectionCanary {
	ctx := context.Background()
	c := &injectionCanary{schema: testenv.Schema(t), id: uuid.New()}
	c.pool = testenv.SchemaPool(t, c.schema, 2)
	if err := inbox.Migrate(ctx, c.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(ctx, `
		CREATE TABLE canary_rows (id int PRIMARY KEY, note text NOT NULL);
		INSERT INTO canary_rows VALUES (1, 'one'), (2, 'two'), (3, 'three')`); err != nil {
		t.Fatal(err)
	}
	reg := inbox.NewRegistry()
	// Same event type and key as the hostile inbox uses: a worker that
	// reached this table would process the row.
	reg.On(injectionNames[0], inbox.HandlerFunc(injectionNames[1], badNoop))
	ib, err := inbox.New(c.pool, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.Client().Set(ctx, testenv.Record(t, c.id, injectionNames[0], "canary")); err != nil {
		t.Fatal(err)
	}
	return c
}

// check fails the test unless the canary is as newInjectionCanary left it.
func (c *injectionCanary) check(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var tables []string
	if err := c.pool.QueryRow(ctx,
		`SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_tables WHERE schemaname = $1`,
		c.schema).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if want := append([]string{"canary_rows"}, inboxTables...); !slices.Equal(tables, want) {
		t.Errorf("canary schema has tables %q, want %q", tables, want)
	}
	var notes string
	if err := c.pool.QueryRow(ctx, `SELECT string_agg(id || '=' || note, ',' ORDER BY id) FROM canary_rows`).Scan(&notes); err != nil {
		t.Fatal(err)
	}
	if notes != "1=one,2=two,3=three" {
		t.Errorf("canary_rows = %q, want 1=one,2=two,3=three", notes)
	}
	var rows, untouched, workers int
	if err := c.pool.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE event_id = $1 AND status = '' AND attempts = 0 AND locked_by IS NULL),
		       (SELECT count(*) FROM inbox_workers)
		FROM inbox_records`, c.id).Scan(&rows, &untouched, &workers); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || untouched != 1 || workers != 0 {
		t.Errorf("canary inbox has %d rows (%d untouched) and %d workers, want its 1 untouched row and no worker",
			rows, untouched, workers)
	}
}

// injectionReceived records what the handlers were given.
type injectionReceived struct {
	mu  sync.Mutex
	got map[[3]string]int // (event type, key, payload) → runs
}

func (r *injectionReceived) handler(eventType, key string) inbox.Handler {
	return inbox.HandlerFunc(key, func(_ context.Context, p []byte) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.got[[3]string{eventType, key, string(p)}]++
		return nil
	})
}

func (r *injectionReceived) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, v := range r.got {
		n += v
	}
	return n
}

func injectionRun(t *testing.T, schema string) {
	ctx := context.Background()
	canary := newInjectionCanary(t)
	var publicBefore []string
	if err := canary.pool.QueryRow(ctx,
		`SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_tables WHERE schemaname = 'public'`).
		Scan(&publicBefore); err != nil {
		t.Fatal(err)
	}

	// The hostile schema, created with a quoted identifier, first on the
	// search_path; the canary second, where an unqualified name that the
	// hostile schema lacks would resolve.
	if _, err := canary.pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		t.Fatalf("create schema %q: %v", schema, err)
	}
	cfg, err := pgxpool.ParseConfig(testenv.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = pgx.Identifier{schema}.Sanitize() + ", " +
		pgx.Identifier{canary.schema}.Sanitize()
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	var current string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&current); err != nil || current != schema {
		t.Fatalf("current_schema() = %q, %v; want %q", current, err, schema)
	}

	// Every name is an event type, with the next two names as its keys.
	recv := &injectionReceived{got: make(map[[3]string]int)}
	reg := inbox.NewRegistry()
	keys := make(map[string][]string)
	for i, et := range injectionNames {
		k1, k2 := injectionNames[(i+1)%len(injectionNames)], injectionNames[(i+2)%len(injectionNames)]
		keys[et] = []string{k1, k2}
		reg.On(et, recv.handler(et, k1), recv.handler(et, k2))
	}
	// Polling once an hour: only a notification can wake the worker.
	ib := start(t, pool, reg, testenv.Fast(t, inbox.WithIterationRate(time.Hour))...)

	type event struct {
		id        uuid.UUID
		eventType string
		payload   []byte
	}
	payloads := injectionPayloads(t)
	var events []event
	for i, et := range injectionNames {
		for j := range 2 {
			events = append(events, event{uuid.New(), et, payloads[(2*i+j)%len(payloads)]})
		}
	}
	recs := make([]*inbox.Record, len(events))
	for i, e := range events {
		r, err := inbox.NewRecord(e.id, e.eventType, e.payload)
		if err != nil {
			t.Fatalf("NewRecord(%q): %v", e.eventType, err)
		}
		recs[i] = r
	}

	// Three rounds, each stored once the previous one is done, when the
	// worker waits on its hour-long poll: rounds two and three are
	// processed only if their notification arrives. Round two uses SetTx,
	// whose notification is sent at commit.
	third := len(recs) / 3
	rounds := [][]*inbox.Record{recs[:third], recs[third : 2*third], recs[2*third:]}
	done := 0
	for n, round := range rounds {
		switch n {
		case 1:
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := ib.Client().SetTx(ctx, tx, round...); err != nil {
				t.Fatalf("round %d: SetTx: %v", n+1, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			if err := ib.Client().Set(ctx, round...); err != nil {
				t.Fatalf("round %d: Set: %v", n+1, err)
			}
		}
		done += 2 * len(round)
		var last map[inbox.Status]int
		if err := testenv.Poll(10*time.Second, func() (bool, error) {
			c, err := ib.Counts(ctx)
			last = c
			return err == nil && c[inbox.Done] == done, err
		}); err != nil {
			t.Fatalf("round %d (woken by notification only from round 2 on): %v; counts %v, handler runs %d, want %d",
				n+1, err, last, recv.total(), done)
		}
	}

	// A redelivery of everything stores nothing new and runs nothing again.
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	// An unknown hostile event type is refused, quoted in the message.
	unknown := `'); TRUNCATE inbox_records; --`
	err = ib.Client().Set(ctx, testenv.Record(t, uuid.New(), unknown, ""))
	if !errors.Is(err, inbox.ErrUnknownEventType) || !strings.Contains(err.Error(), fmt.Sprintf("%q", unknown)) {
		t.Errorf("Set of unknown event type %q = %v, want ErrUnknownEventType quoting it", unknown, err)
	}

	counts, err := ib.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (map[inbox.Status]int{inbox.Null: 0, inbox.Progress: 0, inbox.Failed: 0,
		inbox.Done: 2 * len(events), inbox.Dead: 0}); !maps.Equal(counts, want) {
		t.Errorf("Counts = %v, want %v", counts, want)
	}
	for _, e := range events {
		states, err := ib.Lookup(ctx, e.id)
		if err != nil {
			t.Fatal(err)
		}
		var gotKeys []string
		for _, s := range states {
			gotKeys = append(gotKeys, s.HandlerKey)
			if s.EventID != e.id || s.EventType != e.eventType || s.Status != inbox.Done || s.Attempts != 1 || s.LastError != "" {
				t.Errorf("Lookup(%s) row %+v, want event type %q done after 1 attempt", e.id, s, e.eventType)
			}
		}
		wantKeys := slices.Clone(keys[e.eventType])
		slices.Sort(wantKeys)
		if !slices.Equal(gotKeys, wantKeys) {
			t.Errorf("Lookup(%s) keys %q, want %q", e.id, gotKeys, wantKeys)
		}
	}
	// Each handler got each of its events' payloads once (two events of a
	// type may carry equal payloads: nil and empty).
	want := make(map[[3]string]int)
	for _, e := range events {
		for _, k := range keys[e.eventType] {
			want[[3]string{e.eventType, k, string(e.payload)}]++
		}
	}
	recv.mu.Lock()
	for k, n := range want {
		if got := recv.got[k]; got != n {
			t.Errorf("handler %q of %q got a payload of %d bytes %d times, want %d", k[1], k[0], len(k[2]), got, n)
		}
	}
	if len(recv.got) != len(want) {
		t.Errorf("handlers got %d distinct (event type, key, payload), want %d", len(recv.got), len(want))
	}
	recv.mu.Unlock()
	// Payloads round-trip byte for byte, as stored.
	for _, e := range events {
		var stored []byte
		if err := pool.QueryRow(ctx, `SELECT payload FROM inbox_records WHERE event_id = $1 LIMIT 1`, e.id).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(stored, e.payload) {
			t.Errorf("event %s: stored payload (%d bytes) differs from the one set (%d bytes)", e.id, len(stored), len(e.payload))
		}
	}

	workers, err := ib.Workers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantTypes := slices.Clone(injectionNames)
	slices.Sort(wantTypes)
	if len(workers) != 1 || workers[0].ID != ib.ID() {
		t.Errorf("Workers = %+v, want this inbox only", workers)
	} else if got := slices.Sorted(slices.Values(workers[0].EventTypes)); !slices.Equal(got, wantTypes) {
		t.Errorf("Workers event types %q, want %q", got, wantTypes)
	}

	// The operators' API works in the hostile schema, with hostile filters.
	admin := ib.Admin()
	if _, err := admin.Stats(ctx); err != nil {
		t.Errorf("Stats in schema %q: %v", schema, err)
	}
	for _, name := range injectionNames {
		f := inbox.Filter{EventType: name, HandlerKey: name, ErrorContains: name}
		if _, err := admin.Count(ctx, f); err != nil {
			t.Errorf("Count with filter %q: %v", name, err)
		}
		if _, err := admin.DeadGroups(ctx, f, 0); err != nil {
			t.Errorf("DeadGroups with filter %q: %v", name, err)
		}
		if err := admin.Pause(ctx, name, name, name, name); err != nil {
			t.Errorf("Pause %q: %v", name, err)
		} else if err := admin.Resume(ctx, name, name); err != nil {
			t.Errorf("Resume %q: %v", name, err)
		}
	}

	// Only the hostile schema holds the inbox; nothing else changed.
	var tables []string
	if err := pool.QueryRow(ctx,
		`SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_tables WHERE schemaname = $1`,
		schema).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if want := inboxTables; !slices.Equal(tables, want) {
		t.Errorf("schema %q has tables %q, want %q", schema, tables, want)
	}
	canary.check(t)
	var publicAfter []string
	if err := canary.pool.QueryRow(ctx,
		`SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_tables WHERE schemaname = 'public'`).
		Scan(&publicAfter); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(publicBefore, publicAfter) {
		t.Errorf("schema public had tables %q, now %q", publicBefore, publicAfter)
	}
}
