package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/internal/testenv"
)

// The JSON shapes the tests read, written from the documentation (not from
// the command's own types), decoded with unknown fields refused.

type jsonRow struct {
	EventID       uuid.UUID  `json:"event_id"`
	EventType     string     `json:"event_type"`
	HandlerKey    string     `json:"handler_key"`
	Status        string     `json:"status"`
	Attempts      int        `json:"attempts"`
	MaxAttempts   int        `json:"max_attempts"`
	LastError     string     `json:"last_error"`
	ErrorType     string     `json:"error_type"`
	PayloadErased bool       `json:"payload_erased"`
	EventDate     time.Time  `json:"event_date"`
	CreatedAt     time.Time  `json:"created_at"`
	UpdatedAt     time.Time  `json:"updated_at"`
	NextAttemptAt *time.Time `json:"next_attempt_at"`
	OrderingKey   string     `json:"ordering_key"`
	Waiting       bool       `json:"waiting"`
}

type jsonPage struct {
	Rows []jsonRow `json:"rows"`
	Next string    `json:"next"`
}

type jsonStats struct {
	Handlers []inbox.HandlerStats `json:"handlers"`
	Pauses   []inbox.Pause        `json:"pauses"`
}

type jsonEvent struct {
	EventID       uuid.UUID            `json:"event_id"`
	EventType     string               `json:"event_type"`
	EventDate     time.Time            `json:"event_date"`
	StoredAt      time.Time            `json:"stored_at"`
	Payload       []byte               `json:"payload"`
	PayloadErased bool                 `json:"payload_erased"`
	Rows          []jsonRow            `json:"rows"`
	History       []inbox.HistoryEntry `json:"history"`
}

type jsonGroups struct {
	Groups []inbox.DeadGroup `json:"groups"`
}

type jsonAction struct {
	Action        string `json:"action"`
	DryRun        bool   `json:"dry_run"`
	Matched       int64  `json:"matched"`
	Changed       int64  `json:"changed"`
	PayloadErased int64  `json:"payload_erased"`
}

type jsonSchema struct {
	Schema   string `json:"schema"`
	Applied  int64  `json:"applied"`
	Latest   int64  `json:"latest"`
	UpToDate bool   `json:"up_to_date"`
	Problem  string `json:"problem"`
}

func byPair(s jsonStats) map[pair]inbox.HandlerStats {
	m := map[pair]inbox.HandlerStats{}
	for _, h := range s.Handlers {
		m[pair{h.EventType, h.HandlerKey}] = h
	}
	return m
}

// TestMigrate: status before and after migrate up, and commands refused
// on an unmigrated schema.
func TestMigrate(t *testing.T) {
	t.Parallel()
	f := newFixture(t)

	var before jsonSchema
	f.ctlJSON(&before, "migrate", "status")
	if before.Schema != f.schema || before.Applied != 0 || before.Latest < 1 || before.UpToDate || before.Problem == "" {
		t.Fatalf("status before migrating: %+v", before)
	}
	wantCode(t, f.ctl("stats"), 1, "inboxctl migrate up --schema "+f.schema)
	wantCode(t, f.ctl("migrate"), 2, "missing up|status")
	wantCode(t, f.ctl("migrate", "sideways"), 2, `unknown migrate command "sideways"`)

	wantOut(t, f.ctl("migrate", "up"), "schema:  "+f.schema, fmt.Sprintf("from version 0 to %d", before.Latest), "up to date")
	wantOut(t, f.ctl("migrate", "up"), "nothing to do")
	var after jsonSchema
	f.ctlJSON(&after, "migrate", "status")
	if after.Applied != before.Latest || after.Latest != before.Latest || !after.UpToDate || after.Problem != "" {
		t.Fatalf("status after migrating: %+v", after)
	}
	wantOut(t, f.ctl("stats"), "no rows stored")
	wantOut(t, f.ctl("workers"), "no live workers")

	// A schema that does not exist.
	r := invocation{t: t, schema: f.schema + "_missing"}.run("migrate", "status")
	wantOut(t, r, "names no existing schema")
}

// TestOperatorScenario drives a realistic incident end to end: a handler
// fails until "fixed", its rows die; the operator finds them with stats,
// list, show and dead groups, tries a replay without --yes, dry-runs it,
// replays the group and sees the rows done; discards and deletes another
// group after confirmations.
func TestOperatorScenario(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")

	var broken atomic.Bool
	broken.Store(true)
	var mu sync.Mutex
	runs := map[string]int{} // handler key/event payload -> runs
	count := func(key string, p []byte) {
		mu.Lock()
		runs[key+"/"+string(p)]++
		mu.Unlock()
	}
	var seq atomic.Int64
	reg := inbox.NewRegistry()
	reg.On("order_created",
		inbox.HandlerFunc("ok", func(_ context.Context, p []byte) error { count("ok", p); return nil }),
		inbox.HandlerFunc("flaky", func(_ context.Context, p []byte) error {
			count("flaky", p)
			if broken.Load() {
				n := seq.Add(1)
				return fmt.Errorf("smtp: dial 10.0.0.%d:25: connection refused after %dms", n, 30+n)
			}
			return nil
		}),
	)
	reg.On("payment", inbox.HandlerFunc("charge", func(context.Context, []byte) error {
		return errors.New("gateway rejected the card")
	}))
	ib := f.start(reg)
	orders := f.set(ib, "order_created", `{"order":1}`, `{"order":2}`, `{"order":3}`, `{"order":4}`, `{"order":5}`)
	payments := f.set(ib, "payment", `{"p":1}`, `{"p":2}`)
	f.waitStats("rows to finish", func(m map[pair]inbox.HandlerStats) bool {
		return m[pair{"order_created", "ok"}].Done == 5 && m[pair{"order_created", "flaky"}].Dead == 5 &&
			m[pair{"payment", "charge"}].Dead == 2
	})

	// stats: exact figures, in JSON and in the table.
	var stats jsonStats
	f.ctlJSON(&stats, "stats")
	got := byPair(stats)
	for p, want := range map[pair][5]int64{ // pending, in progress, failed, done, dead
		{"order_created", "ok"}:    {0, 0, 0, 5, 0},
		{"order_created", "flaky"}: {0, 0, 0, 0, 5},
		{"payment", "charge"}:      {0, 0, 0, 0, 2},
	} {
		h := got[p]
		if have := [5]int64{h.Pending, h.InProgress, h.Failed, h.Done, h.Dead}; have != want {
			t.Errorf("stats %v: %v, want %v", p, have, want)
		}
		if len(h.PerMinute) != 60 || h.Paused {
			t.Errorf("stats %v: %d minutes, paused %v", p, len(h.PerMinute), h.Paused)
		}
	}
	if len(stats.Handlers) != 3 || stats.Pauses == nil {
		t.Fatalf("stats: %+v", stats)
	}
	if done, dead := got[pair{"order_created", "flaky"}].FinishedLastHour(); done != 0 || dead != 5 {
		t.Errorf("flaky finished last hour: %d done, %d dead", done, dead)
	}
	r := f.ctl("stats")
	wantOut(t, r, "EVENT TYPE", "DEAD/1H")
	if !hasLine(r.stdout, "order_created", "flaky", "0", "0", "0", "0", "5") ||
		!hasLine(r.stdout, "TOTAL", "0", "0", "0", "5", "7") {
		t.Errorf("stats table:\n%s", r.stdout)
	}
	var workers struct {
		Workers []inbox.Worker `json:"workers"`
	}
	f.ctlJSON(&workers, "workers")
	if len(workers.Workers) != 1 || !slices.Contains(workers.Workers[0].EventTypes, "payment") {
		t.Errorf("workers: %+v", workers)
	}
	wantOut(t, f.ctl("workers"), "HOST", "LAST BEAT")

	// list: pages of dead rows, every row once.
	seen := map[string]bool{}
	after, pages := "", 0
	for {
		args := []string{"list", "--status", "dead", "--limit", "3"}
		if after != "" {
			args = append(args, "--after", after)
		}
		var p jsonPage
		f.ctlJSON(&p, args...)
		pages++
		for _, row := range p.Rows {
			k := row.EventID.String() + "/" + row.HandlerKey
			if seen[k] || row.Status != "dead" || row.Attempts != 1 || row.MaxAttempts != 1 || row.LastError == "" {
				t.Fatalf("page %d: row %+v (seen %v)", pages, row, seen[k])
			}
			seen[k] = true
		}
		if p.Next == "" {
			break
		}
		if len(p.Rows) != 3 || pages > 5 {
			t.Fatalf("page %d has %d rows and a next token", pages, len(p.Rows))
		}
		after = p.Next
	}
	if len(seen) != 7 || pages != 3 {
		t.Fatalf("listed %d dead rows in %d pages, want 7 in 3", len(seen), pages)
	}
	r = f.ctl("list", "--status", "dead", "--limit", "3")
	wantOut(t, r, "EVENT ID", "next page token: ", "dead", "1/1")
	var pay jsonPage
	f.ctlJSON(&pay, "list", "--event-type", "payment", "--error", "GATEWAY")
	if len(pay.Rows) != 2 || pay.Next != "" {
		t.Fatalf("payment rows: %+v", pay)
	}
	var none jsonPage
	f.ctlJSON(&none, "list", "--status", "pending,failed", "--since", "1h")
	if none.Rows == nil || len(none.Rows) != 0 {
		t.Fatalf("pending rows: %+v", none)
	}
	wantOut(t, f.ctl("list", "--event-type", "nothing"), "no rows match")
	wantOut(t, f.ctl("dead", "--handler-key", "charge"), "gateway rejected the card")

	// show: payload, both rows, the dead attempt in the history.
	var ev jsonEvent
	f.ctlJSON(&ev, "show", orders[0].String())
	if ev.EventID != orders[0] || ev.EventType != "order_created" || string(ev.Payload) != `{"order":1}` ||
		len(ev.Rows) != 2 || ev.Rows[0].HandlerKey != "flaky" || ev.Rows[0].Status != "dead" || ev.Rows[1].Status != "done" {
		t.Fatalf("show: %+v", ev)
	}
	if len(ev.History) == 0 || ev.History[len(ev.History)-1].Kind != "dead" {
		t.Fatalf("show history: %+v", ev.History)
	}
	wantOut(t, f.ctl("show", orders[0].String()), `Payload:    {"order":1}`, "flaky", "connection refused", "History:")
	wantCode(t, f.ctl("show", uuid.NewString()), 1, "not found")
	wantCode(t, f.ctl("show", "not-a-uuid"), 2, "not an event id")

	// dead groups: one group per failure, whatever the numbers in them.
	var groups jsonGroups
	f.ctlJSON(&groups, "dead", "groups")
	if len(groups.Groups) != 2 || groups.Groups[0].Count != 5 || groups.Groups[0].HandlerKey != "flaky" ||
		groups.Groups[1].Count != 2 || groups.Groups[1].EventType != "payment" {
		t.Fatalf("dead groups: %+v", groups)
	}
	flaky := groups.Groups[0].Fingerprint
	r = f.ctl("dead", "groups")
	if !hasLine(r.stdout, flaky, "5", "order_created", "flaky") {
		t.Fatalf("dead groups table:\n%v", r)
	}
	wantCode(t, f.ctl("dead", "groups", "--after", "x"), 2, "--after")

	// replay without --yes and without a terminal: refused, nothing changed.
	wantCode(t, f.ctl("replay", "--fingerprint", flaky), 2, "stdin is not a terminal", "replay 5 rows", "--yes")
	// A dry run counts, changes nothing.
	var dry jsonAction
	f.ctlJSON(&dry, "replay", "--fingerprint", flaky, "--dry-run")
	if dry != (jsonAction{Action: "replay", DryRun: true, Matched: 5}) {
		t.Fatalf("dry run: %+v", dry)
	}
	wantOut(t, f.ctl("replay", "--fingerprint", flaky, "--dry-run"), "dry run: would replay 5 rows", "nothing was changed")
	f.waitStats("nothing replayed", func(m map[pair]inbox.HandlerStats) bool {
		return m[pair{"order_created", "flaky"}].Dead == 5
	})

	// Fixed: replay the group while the handler is paused, so that the
	// rows are seen pending again; resume, and they run and end done.
	broken.Store(false)
	wantOut(t, f.ctl("pause", "--handler-key", "flaky", "--reason", "replay check"), "paused")
	var replayed jsonAction
	f.ctlJSON(&replayed, "replay", "--fingerprint", flaky, "--yes", "--reason", "smtp fixed")
	if replayed != (jsonAction{Action: "replay", Matched: 5, Changed: 5}) {
		t.Fatalf("replay: %+v", replayed)
	}
	f.ctlJSON(&stats, "stats")
	if h := byPair(stats)[pair{"order_created", "flaky"}]; h.Pending != 5 || h.Dead != 0 || !h.Paused {
		t.Fatalf("flaky after replay, paused: %+v", h)
	}
	var pending jsonPage
	f.ctlJSON(&pending, "list", "--handler-key", "flaky", "--status", "pending")
	for _, row := range pending.Rows {
		if row.Attempts != 0 || row.NextAttemptAt == nil || row.LastError == "" {
			t.Fatalf("replayed row: %+v", row)
		}
	}
	if len(pending.Rows) != 5 {
		t.Fatalf("pending flaky rows: %d", len(pending.Rows))
	}
	wantOut(t, f.ctl("resume", "--handler-key", "flaky"), "resumed")
	f.waitStats("replayed rows done", func(m map[pair]inbox.HandlerStats) bool {
		h := m[pair{"order_created", "flaky"}]
		return h.Done == 5 && h.Dead == 0
	})
	f.ctlJSON(&ev, "show", orders[2].String())
	last := ev.History[len(ev.History)-1]
	if last.Kind != "replayed" || last.Actor != "tester@testhost" || last.Text != "smtp fixed" || ev.Rows[0].Status != "done" {
		t.Fatalf("history after replay: %+v, rows %+v", ev.History, ev.Rows)
	}
	mu.Lock()
	if runs[`flaky/{"order":3}`] != 2 {
		t.Errorf("flaky ran %d times for order 3, want 2", runs[`flaky/{"order":3}`])
	}
	mu.Unlock()
	// Nothing left in the group.
	wantOut(t, f.ctl("replay", "--fingerprint", flaky, "--yes"), "no rows match")

	// One row: a done row runs again.
	r = f.ctl("replay", orders[1].String(), "--handler-key", "ok", "--yes")
	wantOut(t, r, "replayed 1 row")
	err := testenv.Poll(20*time.Second, func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return runs[`ok/{"order":2}`] == 2, nil
	})
	if err != nil {
		t.Fatalf("waiting for the replayed row to run: %v", err)
	}
	wantCode(t, f.ctl("replay", uuid.NewString(), "--handler-key", "ok", "--yes"), 1, "not found")

	// discard the payment rows (dead: mark them handled) on a terminal:
	// "n" changes nothing, "y" goes ahead.
	tty := invocation{t: t, schema: f.schema, interactive: true, stdin: "n\n"}
	r = tty.run("discard", "--event-type", "payment", "--status", "dead", "--reason", "card data bad")
	wantCode(t, r, 1, "Discard 2 rows", "[y/N]", "not confirmed")
	f.ctlJSON(&groups, "dead", "groups", "--event-type", "payment")
	if len(groups.Groups) != 1 || groups.Groups[0].ErrorType == "inbox.discarded" {
		t.Fatalf("after declining: %+v", groups)
	}
	tty.stdin = "y\n"
	r = tty.run("discard", "--fingerprint", groups.Groups[0].Fingerprint, "--reason", "card data bad")
	wantOut(t, r, "discarded 2 rows")
	f.ctlJSON(&groups, "dead", "groups", "--event-type", "payment")
	if len(groups.Groups) != 1 || groups.Groups[0].ErrorType != "inbox.discarded" ||
		!strings.Contains(groups.Groups[0].Sample, "discarded by tester@testhost: card data bad") {
		t.Fatalf("after discarding: %+v", groups)
	}

	// delete: refused without a filter; with one, the rows and events go.
	wantCode(t, f.ctl("delete", "--yes"), 2, "needs a filter")
	wantCode(t, f.ctl("delete", "--status", "progress", "--yes"), 2, "never deleted")
	var deleted jsonAction
	f.ctlJSON(&deleted, "delete", "--event-type", "payment", "--yes")
	if deleted != (jsonAction{Action: "delete", Matched: 2, Changed: 2}) {
		t.Fatalf("delete: %+v", deleted)
	}
	wantCode(t, f.ctl("show", payments[0].String()), 1, "not found")
	// The pair has no rows left; Stats may still list it for the rows it
	// finished in the last hour.
	f.ctlJSON(&stats, "stats")
	if h := byPair(stats)[pair{"payment", "charge"}]; h.Pending+h.InProgress+h.Failed+h.Done+h.Dead != 0 {
		t.Fatalf("stats after delete: %+v", h)
	}
}

// hasLine reports whether some line of out has these fields in this
// order (other fields may come between).
func hasLine(out string, fields ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		fs, i := strings.Fields(line), 0
		for _, f := range fs {
			if i < len(fields) && f == fields[i] {
				i++
			}
		}
		if i == len(fields) {
			return true
		}
	}
	return false
}

// TestJSONRowFields pins the field names of a row in --json output.
func TestJSONRowFields(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(context.Context, []byte) error { return errors.New("no") }))
	ib := f.start(reg)
	ids := f.set(ib, "e", "\x00\xffbinary")
	f.waitStats("the row to die", func(m map[pair]inbox.HandlerStats) bool { return m[pair{"e", "h"}].Dead == 1 })

	r := f.ctl("list", "--json")
	var raw struct {
		Rows []map[string]any `json:"rows"`
		Next *string          `json:"next"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil || len(raw.Rows) != 1 || raw.Next == nil {
		t.Fatalf("list --json: %v\n%v", err, r)
	}
	var keys []string
	for k := range raw.Rows[0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"attempts", "created_at", "error_type", "event_date", "event_id", "event_type", "handler_key",
		"last_error", "max_attempts", "next_attempt_at", "ordering_key", "payload_erased", "status", "updated_at", "waiting"}
	if !slices.Equal(keys, want) {
		t.Fatalf("row fields %v, want %v", keys, want)
	}
	if raw.Rows[0]["next_attempt_at"] != nil || raw.Rows[0]["status"] != "dead" {
		t.Fatalf("row: %v", raw.Rows[0])
	}
	// A binary payload: base64 in JSON, described for people.
	var ev map[string]any
	r = f.ctl("show", ids[0].String(), "--json")
	if err := json.Unmarshal([]byte(r.stdout), &ev); err != nil {
		t.Fatal(err)
	}
	if ev["payload"] != base64.StdEncoding.EncodeToString([]byte("\x00\xffbinary")) {
		t.Fatalf("payload: %v", ev["payload"])
	}
	wantOut(t, f.ctl("show", ids[0].String()), "8 bytes, not UTF-8 text")
}

// TestPauseResume: a paused handler's rows wait while another handler of
// the same events runs; resume lets them run.
func TestPauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")

	wantCode(t, f.ctl("pause", "--reason", "x"), 2, "needs --event-type, --handler-key or both")
	var paused struct {
		Pause inbox.Pause `json:"pause"`
	}
	f.ctlJSON(&paused, "pause", "--event-type", "ev", "--handler-key", "b", "--reason", "maintenance")
	if p := paused.Pause; p.EventType != "ev" || p.HandlerKey != "b" || p.Actor != "tester@testhost" ||
		p.Reason != "maintenance" || p.PausedAt.IsZero() {
		t.Fatalf("pause: %+v", p)
	}
	wantOut(t, f.ctl("pause", "--handler-key", "c", "--actor", "alice"), `paused handler key "c" of every event type`)

	reg := inbox.NewRegistry()
	reg.On("ev",
		inbox.HandlerFunc("a", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("b", func(context.Context, []byte) error { return nil }),
	)
	ib := f.start(reg)
	f.set(ib, "ev", "1", "2", "3")
	f.waitStats("a's rows done", func(m map[pair]inbox.HandlerStats) bool { return m[pair{"ev", "a"}].Done == 3 })
	var stats jsonStats
	f.ctlJSON(&stats, "stats")
	m := byPair(stats)
	if b := m[pair{"ev", "b"}]; b.Pending != 3 || !b.Paused || m[pair{"ev", "a"}].Paused {
		t.Fatalf("while paused: %+v", stats.Handlers)
	}
	if len(stats.Pauses) != 2 {
		t.Fatalf("pauses: %+v", stats.Pauses)
	}
	r := f.ctl("stats")
	if !hasLine(r.stdout, "ev", "b", "3", "0", "0", "0", "0", "paused") || !hasLine(r.stdout, "(any)", "c", "alice") ||
		!strings.Contains(r.stdout, "maintenance") {
		t.Fatalf("stats table:\n%s", r.stdout)
	}

	wantCode(t, f.ctl("resume", "--handler-key", "b"), 1, "not found")
	var resumed struct {
		Resumed struct {
			EventType  string `json:"event_type"`
			HandlerKey string `json:"handler_key"`
		} `json:"resumed"`
	}
	f.ctlJSON(&resumed, "resume", "--event-type", "ev", "--handler-key", "b")
	if resumed.Resumed.EventType != "ev" || resumed.Resumed.HandlerKey != "b" {
		t.Fatalf("resume: %+v", resumed)
	}
	f.waitStats("b's rows done", func(m map[pair]inbox.HandlerStats) bool { return m[pair{"ev", "b"}].Done == 3 })
	wantOut(t, f.ctl("resume", "--handler-key", "c"), `resumed handler key "c"`)
	f.ctlJSON(&stats, "stats")
	if len(stats.Pauses) != 0 {
		t.Fatalf("pauses after resuming: %+v", stats.Pauses)
	}
}

// TestPurge: a dry run counts, purge deletes old finished rows and erases
// old payloads, and a replay of an erased row says so.
func TestPurge(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	reg := inbox.NewRegistry()
	reg.On("old", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	reg.On("mid", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	reg.On("new", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib := f.start(reg)
	f.set(ib, "old", "1", "2", "3")
	mid := f.set(ib, "mid", "4", "5")
	f.set(ib, "new", "6")
	f.waitStats("rows done", func(m map[pair]inbox.HandlerStats) bool {
		return m[pair{"old", "h"}].Done == 3 && m[pair{"mid", "h"}].Done == 2 && m[pair{"new", "h"}].Done == 1
	})
	// Age the rows as time would.
	ctx := context.Background()
	for _, age := range []struct {
		eventType string
		days      int
	}{{"old", 40}, {"mid", 10}} {
		if _, err := f.pool.Exec(ctx, "UPDATE inbox_records SET updated_at = now() - make_interval(days => $2) WHERE event_type = $1",
			age.eventType, age.days); err != nil {
			t.Fatal(err)
		}
	}

	type purge struct {
		Action          string `json:"action"`
		DryRun          bool   `json:"dry_run"`
		MatchedRows     int64  `json:"matched_rows"`
		MatchedPayloads int64  `json:"matched_payloads"`
		RowsDeleted     int64  `json:"rows_deleted"`
		PayloadsErased  int64  `json:"payloads_erased"`
		HistoryDeleted  int64  `json:"history_deleted"`
	}
	var dry purge
	f.ctlJSON(&dry, "purge", "--retention-days", "30", "--payload-retention-days", "7", "--dry-run")
	if dry != (purge{Action: "purge", DryRun: true, MatchedRows: 3, MatchedPayloads: 2}) {
		t.Fatalf("dry run: %+v", dry)
	}
	wantCode(t, f.ctl("purge", "--retention-days", "30"), 2, "stdin is not a terminal")
	wantCode(t, f.ctl("purge", "--retention-days", "0"), 2, "at least 1")
	var done purge
	f.ctlJSON(&done, "purge", "--retention-days", "30", "--payload-retention-days", "7", "--yes")
	if done != (purge{Action: "purge", MatchedRows: 3, MatchedPayloads: 2, RowsDeleted: 3, PayloadsErased: 2}) {
		t.Fatalf("purge: %+v", done)
	}
	var stats jsonStats
	f.ctlJSON(&stats, "stats")
	if m := byPair(stats); m[pair{"old", "h"}].Done != 0 || m[pair{"mid", "h"}].Done != 2 || m[pair{"new", "h"}].Done != 1 {
		t.Fatalf("stats after purge: %+v", stats.Handlers)
	}
	wantOut(t, f.ctl("show", mid[0].String()), "erased by retention")
	// Again: the payload window's rows are counted (erased or not: a
	// Filter cannot tell), but nothing is left to do.
	var again purge
	f.ctlJSON(&again, "purge", "--retention-days", "30", "--payload-retention-days", "7", "--yes")
	if again != (purge{Action: "purge", MatchedPayloads: 2}) {
		t.Fatalf("second purge: %+v", again)
	}
	wantOut(t, f.ctl("purge", "--retention-days", "60", "--payload-retention-days", "30"), "nothing to purge")

	// A done row whose payload is erased cannot be replayed.
	r := f.ctl("replay", mid[0].String(), "--handler-key", "h", "--yes", "--json")
	wantCode(t, r, 1, "payload erased")
	var res jsonAction
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil || res.Changed != 0 || res.PayloadErased != 1 {
		t.Fatalf("replay of an erased row: %v %+v", err, res)
	}
	r = f.ctl("replay", "--event-type", "mid", "--status", "done", "--yes")
	wantCode(t, r, 1, "payload erased")
	if !strings.Contains(r.stdout, "2 rows match (event type \"mid\", status done) but cannot be replayed: retention erased their payload") {
		t.Fatalf("bulk replay of erased rows: %v", r)
	}
}

// TestInterrupt: cancelling the context (as Ctrl-C does) stops a bulk
// action between batches; the rows changed are reported, the others stay.
func TestInterrupt(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	reg := inbox.NewRegistry()
	reg.On("e", inbox.HandlerFunc("h", func(context.Context, []byte) error { return nil }))
	ib := f.start(reg)
	payloads := make([]string, 20)
	for i := range payloads {
		payloads[i] = fmt.Sprint(i)
	}
	f.set(ib, "e", payloads...)
	f.waitStats("rows done", func(m map[pair]inbox.HandlerStats) bool { return m[pair{"e", "h"}].Done == 20 })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Progress shows on the "terminal"; its first line is the interrupt.
	onProgress := writerFunc(func(p []byte) (int, error) {
		if strings.Contains(string(p), "deleted") {
			cancel()
		}
		return len(p), nil
	})
	in := invocation{t: t, ctx: ctx, schema: f.schema, progress: true, stderr: onProgress}
	r := in.run("delete", "--event-type", "e", "--batch-size", "1", "--yes", "--json")
	wantCode(t, r, 1, "interrupted", "stopped after deleted")
	var res jsonAction
	if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
		t.Fatalf("decode: %v\n%v", err, r)
	}
	if res.Matched != 20 || res.Changed < 1 || res.Changed >= 20 {
		t.Fatalf("interrupted delete: %+v", res)
	}
	n, err := f.admin.Count(context.Background(), inbox.Filter{EventType: "e"})
	if err != nil || n != 20-res.Changed {
		t.Fatalf("rows left: %d (%v), want %d", n, err, 20-res.Changed)
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// TestUsage: every kind of command-line mistake exits 2, and help exits 0.
func TestUsage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	id := uuid.NewString()
	for _, tc := range []struct {
		args []string
		err  string
	}{
		{nil, "Usage: inboxctl COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"list", "--status", "sleeping"}, `unknown status "sleeping"`},
		{[]string{"list", "--since", "yesterday"}, "neither an RFC 3339 time"},
		{[]string{"list", "--since", "1h", "--until", "2h"}, "is not before until"}, // ErrInvalidFilter from Admin
		{[]string{"list", "--limit", "20000"}, "limit 20000 is outside"},            // likewise
		{[]string{"list", "--after", "garbage"}, "page token"},                      // likewise
		{[]string{"list", "--fingerprint", "XYZ"}, "16 lowercase hex"},              // likewise
		{[]string{"list", "--limit", "-1"}, "at least 1"},
		{[]string{"list", "extra"}, `unexpected argument "extra"`},
		{[]string{"show"}, "missing EVENT_ID"},
		{[]string{"show", id, id}, "unexpected argument"},
		{[]string{"replay", "--yes"}, "needs a filter"},
		{[]string{"replay", "--status", "pending", "--yes"}, "replay takes dead, failed or done rows, not pending ones"},
		{[]string{"discard", "--status", "done", "--yes"}, "discard takes pending, failed or dead rows, not done ones"},
		{[]string{"discard", "--yes"}, "needs a filter"},
		{[]string{"replay", "nope", "--handler-key", "h"}, "not an event id"},
		{[]string{"dead", "buried"}, `unknown dead command "buried"`},
		{[]string{"serve", "--refresh", "500ms"}, "whole seconds"},
		{[]string{"parked", "--limit", "0"}, "at least 1"},
		{[]string{"parked", "--limit", "20000"}, "limit 20000 is outside"}, // ErrInvalidFilter from Admin
		{[]string{"skip", "h"}, "missing HANDLER_KEY ORDERING_KEY"},
		{[]string{"skip", "h", " ", "--yes"}, "ordering key"}, // likewise
		{[]string{"backfill", "--event-type", "e", "--yes"}, "needs --event-type and --handler-key"},
		{[]string{"backfill", "--event-type", "e", "--handler-key", "h", "--max-attempts", "-1"}, "--max-attempts must be"},
		{[]string{"backfill", "--event-type", "e", "--handler-key", "h", "--batch-size", "0"}, "--batch-size must be"},
		{[]string{"backfill", "--event-type", "e", "--handler-key", "h", "--batch-size", "20000"}, "batch size 20000 is outside"}, // likewise
		{[]string{"backfill", "--event-type", "e", "--handler-key", "h", "--resume", "garbage"}, "resume token"},                  // likewise
		{[]string{"backfill", "--event-type", "e", "--handler-key", "h", "--since", "soon"}, "neither an RFC 3339 time"},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`},
	} {
		r := f.ctl(tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.err) {
			t.Errorf("inboxctl %s: want exit 2 and %q, got %v", strings.Join(tc.args, " "), tc.err, r)
		}
	}

	// No database URL anywhere.
	a := &app{stdin: strings.NewReader(""), stdout: &syncBuffer{}, stderr: &syncBuffer{},
		env: func(string) string { return "" }, hostname: func() (string, error) { return "h", nil }}
	if code := a.run(context.Background(), []string{"stats"}); code != 2 ||
		!strings.Contains(a.stderr.(*syncBuffer).String(), "pass --database-url or set DATABASE_URL") {
		t.Errorf("no database URL: exit %d, %s", code, a.stderr.(*syncBuffer).String())
	}

	// Help, for inboxctl and for each command, both ways.
	wantOut(t, f.ctl("help"), "Exit codes:", "replay", "dead groups", "DATABASE_URL")
	wantOut(t, f.ctl("--help"), "Commands:")
	for _, c := range commands() {
		r := f.ctl("help", c.name)
		wantOut(t, r, "Usage: inboxctl "+c.name, "Examples:")
		if c.name != "help" {
			wantOut(t, f.ctl(c.name, "-h"), "Usage: inboxctl "+c.name, "--database-url")
		}
		if c.json != "" && !strings.Contains(r.stdout, "JSON output (--json):") {
			t.Errorf("help %s lacks its JSON shape", c.name)
		}
	}
	wantOut(t, f.ctl("help", "list"), "--status statuses", "--after token", "(default 100)")
}

// TestServe runs the dashboard server until its context ends (as on
// SIGINT): it must listen and answer first.
func TestServe(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan result, 1)
	go func() {
		done <- invocation{t: t, ctx: ctx, schema: f.schema, stderr: &stderr}.run("serve", "--addr", "127.0.0.1:0")
	}()
	var addr string
	err := testenv.Poll(20*time.Second, func() (bool, error) {
		select {
		case r := <-done:
			return false, fmt.Errorf("serve ended before listening: exit %d, stderr %s", r.code, stderr.String())
		default:
		}
		_, rest, ok := strings.Cut(stderr.String(), "dashboard on http://")
		addr, _, _ = strings.Cut(rest, " ")
		return ok && addr != "", nil
	})
	if err != nil {
		t.Fatalf("waiting for serve to listen: %v; stderr %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "(read-only)") {
		t.Errorf("serve: %s", stderr.String())
	}
	resp, err := httpGet(ctx, "http://"+addr+"/")
	if err != nil {
		t.Fatalf("GET /: %v", err)
	}
	if resp != 200 {
		t.Errorf("GET /: status %d", resp)
	}
	cancel()
	select {
	case r := <-done:
		wantCode(t, r, 0, "stopping")
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop after its context ended")
	}
}

type jsonBackfill struct {
	Action        string `json:"action"`
	DryRun        bool   `json:"dry_run"`
	EventType     string `json:"event_type"`
	HandlerKey    string `json:"handler_key"`
	Matched       int64  `json:"matched"`
	Created       int64  `json:"created"`
	Existing      int64  `json:"existing"`
	PayloadErased int64  `json:"payload_erased"`
	Resume        string `json:"resume"`
}

// decodeJSON decodes r's stdout into out, unknown fields refused.
func decodeJSON(t *testing.T, r result, out any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("decode JSON: %v\n%v", err, r)
	}
}

// TestBackfill: events stored with one handler; a second handler added to
// their event type gets rows for those stored since a time, counted by a
// dry run first, created with --yes, none for an event whose payload was
// erased (exit 1), never twice; an interrupted backfill prints how to
// continue, and continues from its token; the workers then run the rows.
func TestBackfill(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	ctx := context.Background()
	reg := inbox.NewRegistry()
	reg.On("order_created", inbox.HandlerFunc("a", func(context.Context, []byte) error { return nil }))
	reg.On("other", inbox.HandlerFunc("a", func(context.Context, []byte) error { return nil }))
	ib := f.start(reg)
	f.set(ib, "order_created", "old1", "old2") // before --since: no row
	var since time.Time
	if err := f.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&since); err != nil {
		t.Fatal(err)
	}
	ids := f.set(ib, "order_created", "1", "2", "3", "4", "5")
	f.set(ib, "other", "x")
	f.waitStats("a's rows done", func(m map[pair]inbox.HandlerStats) bool {
		return m[pair{"order_created", "a"}].Done == 7 && m[pair{"other", "a"}].Done == 1
	})
	// Retention erased one event's payload.
	if _, err := f.pool.Exec(ctx, "UPDATE inbox_records SET payload = NULL WHERE event_id = $1", ids[4]); err != nil {
		t.Fatal(err)
	}
	args := func(key string, more ...string) []string {
		return append([]string{"backfill", "--event-type", "order_created", "--handler-key", key,
			"--since", since.Format(time.RFC3339Nano)}, more...)
	}

	// The dry run counts, in JSON and for people, and changes nothing.
	var dry jsonBackfill
	f.ctlJSON(&dry, args("b", "--dry-run")...)
	if dry != (jsonBackfill{Action: "backfill", DryRun: true, EventType: "order_created", HandlerKey: "b", Matched: 4, PayloadErased: 1}) {
		t.Fatalf("dry run: %+v", dry)
	}
	wantOut(t, f.ctl(args("b", "--dry-run")...),
		`dry run: would create 4 rows of handler "b" for events of type "order_created" stored since`,
		"1 event cannot get one: retention erased their payload", "nothing was changed")
	wantCode(t, f.ctl(args("b")...), 2, "stdin is not a terminal", "--yes")
	rowsOf := func(key string) (n int, events []uuid.UUID, maxAttempts []int) {
		t.Helper()
		rows, err := f.pool.Query(ctx, "SELECT event_id, max_attempts FROM inbox_records WHERE handler_key = $1 ORDER BY event_id", key)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id uuid.UUID
			var m int
			if err := rows.Scan(&id, &m); err != nil {
				t.Fatal(err)
			}
			events, maxAttempts = append(events, id), append(maxAttempts, m)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return len(events), events, maxAttempts
	}
	if n, _, _ := rowsOf("b"); n != 0 {
		t.Fatalf("%d rows of b after a dry run", n)
	}

	// The backfill: 4 rows, none for the erased event, so exit 1.
	r := f.ctl(args("b", "--max-attempts", "3", "--yes", "--json")...)
	wantCode(t, r, 1, "payload erased", `1 event of type "order_created" got no row of handler "b"`)
	var done jsonBackfill
	decodeJSON(t, r, &done)
	if done != (jsonBackfill{Action: "backfill", EventType: "order_created", HandlerKey: "b", Matched: 4, Created: 4, PayloadErased: 1}) {
		t.Fatalf("backfill: %+v", done)
	}
	want := slices.Clone(ids[:4])
	slices.SortFunc(want, func(x, y uuid.UUID) int { return strings.Compare(x.String(), y.String()) })
	if n, events, attempts := rowsOf("b"); n != 4 || !slices.Equal(events, want) || slices.Max(attempts) != 3 || slices.Min(attempts) != 3 {
		t.Fatalf("rows of b: %v with max attempts %v; want %v with 3", events, attempts, want)
	}
	// Again: nothing to do, every event counted.
	r = f.ctl(args("b", "--yes")...)
	wantCode(t, r, 1, "payload erased")
	if !strings.Contains(r.stdout, "nothing to backfill") || !strings.Contains(r.stdout, "4 events had one already") {
		t.Fatalf("second backfill: %v", r)
	}

	// Interrupted after its first batch (as by Ctrl-C), then continued
	// with the command it printed.
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	onProgress := writerFunc(func(p []byte) (int, error) {
		if strings.Contains(string(p), "rows created") {
			cancel()
		}
		return len(p), nil
	})
	in := invocation{t: t, ctx: cctx, schema: f.schema, progress: true, stderr: onProgress}
	r = in.run(args("c", "--batch-size", "1", "--yes", "--json")...)
	wantCode(t, r, 1, "counting: 5 events read", "rows created, 0 existing", "interrupted: stopped after creating",
		"to continue: inboxctl backfill --event-type order_created --handler-key c --since "+since.UTC().Format(time.RFC3339Nano)+
			" --batch-size 1 --schema "+f.schema+" --resume ")
	var part jsonBackfill
	decodeJSON(t, r, &part)
	if part.Matched != 4 || part.Created+part.PayloadErased < 1 || part.Created >= 4 || part.Resume == "" {
		t.Fatalf("interrupted backfill: %+v", part)
	}
	if !strings.HasSuffix(strings.TrimSpace(r.stderr), "--resume "+part.Resume) {
		t.Fatalf("stderr does not end with the resume token %s: %v", part.Resume, r)
	}
	var rest jsonBackfill
	rr := f.ctl(args("c", "--batch-size", "1", "--resume", part.Resume, "--yes", "--json")...)
	decodeJSON(t, rr, &rest)
	if part.Created+rest.Created != 4 || part.PayloadErased+rest.PayloadErased != 1 || rest.Matched != 4-part.Created || rest.Resume != "" {
		t.Fatalf("continued backfill: %+v after %+v\n%v", rest, part, rr)
	}
	if n, events, attempts := rowsOf("c"); n != 4 || !slices.Equal(events, want) || slices.Min(attempts) != inbox.DefaultRetryAttempts {
		t.Fatalf("rows of c: %v with max attempts %v", events, attempts)
	}

	// Workers that have the new handlers run their rows.
	var ran atomic.Int64
	reg2 := inbox.NewRegistry()
	reg2.On("order_created",
		inbox.HandlerFunc("a", func(context.Context, []byte) error { return nil }),
		inbox.HandlerFunc("b", func(context.Context, []byte) error { ran.Add(1); return nil }),
		inbox.HandlerFunc("c", func(context.Context, []byte) error { ran.Add(1); return nil }))
	f.start(reg2, inbox.WithLease(inbox.DefaultLease)) // the exact run count below
	f.waitStats("the backfilled rows done", func(m map[pair]inbox.HandlerStats) bool {
		return m[pair{"order_created", "b"}].Done == 4 && m[pair{"order_created", "c"}].Done == 4
	})
	if ran.Load() != 8 {
		t.Fatalf("the new handlers ran %d times, want 8", ran.Load())
	}
	if n, _, _ := rowsOf("a"); n != 8 {
		t.Fatalf("%d rows of a, want 8 (7 events of order_created, 1 of other)", n)
	}
}

// TestParkedSkip: a handler that always fails on one event parks its
// ordering key; parked lists the key with the rows waiting behind the dead
// row; skip (dry run, refusals, then --yes) makes the key's next row due,
// and the key's rows then run.
func TestParkedSkip(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	wantOut(t, f.ctl("migrate", "up"), "up to date")
	ctx := context.Background()
	reg := inbox.NewRegistry()
	reg.Handle("acct", inbox.HandlerFunc("apply", func(_ context.Context, p []byte) error {
		if string(p) == "k1:0" {
			return errors.New("poison event")
		}
		return nil
	}), inbox.HandlerMaxAttempts(1))
	ib := f.start(reg)
	ids := map[string]uuid.UUID{}
	var recs []*inbox.Record
	for _, p := range []string{"k1:0", "k1:1", "k1:2", "k2:0"} {
		ids[p] = uuid.New()
		rec, err := inbox.NewRecord(ids[p], "acct", []byte(p))
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec.WithOrderingKey(p[:2]))
	}
	if err := ib.Client().Set(ctx, recs...); err != nil {
		t.Fatal(err)
	}
	f.waitStats("k1 parked", func(m map[pair]inbox.HandlerStats) bool {
		h := m[pair{"acct", "apply"}]
		return h.Dead == 1 && h.Done == 1 && h.Pending == 2
	})

	// show: the rows behind the dead one wait for it.
	var ev jsonEvent
	f.ctlJSON(&ev, "show", ids["k1:1"].String())
	if len(ev.Rows) != 1 {
		t.Fatalf("k1:1 before the skip: %d rows, want 1", len(ev.Rows))
	}
	if row := ev.Rows[0]; row.Status != "null" || !row.Waiting || row.OrderingKey != "k1" || row.NextAttemptAt != nil {
		t.Fatalf("k1:1 before the skip: %+v", ev.Rows)
	}
	wantOut(t, f.ctl("show", ids["k1:1"].String()), "waiting (key k1)")

	// parked: the key, its dead row and the rows waiting.
	var parked struct {
		Parked []inbox.ParkedKey `json:"parked"`
	}
	f.ctlJSON(&parked, "parked")
	if len(parked.Parked) != 1 {
		t.Fatalf("parked: %+v", parked)
	}
	k := parked.Parked[0]
	if k.DeadSince.IsZero() || time.Since(k.DeadSince) > time.Minute {
		t.Fatalf("parked key dead since %v", k.DeadSince)
	}
	k.DeadSince = time.Time{}
	if k != (inbox.ParkedKey{HandlerKey: "apply", OrderingKey: "k1", EventID: ids["k1:0"], EventType: "acct", Waiting: 2}) {
		t.Fatalf("parked key: %+v", k)
	}
	r := f.ctl("parked")
	if !hasLine(r.stdout, "apply", "k1", "2", ids["k1:0"].String(), "acct") || !strings.Contains(r.stdout, "inboxctl skip HANDLER ORDERING_KEY") {
		t.Fatalf("parked table: %v", r)
	}
	wantOut(t, f.ctl("parked", "--limit", "1"), "the first 1 parked key;")

	// skip: a key with no dead row, no --yes, a dry run.
	wantCode(t, f.ctl("skip", "apply", "k2", "--yes"), 1, "not found", `ordering key "k2" of handler "apply" has no dead row`)
	wantCode(t, f.ctl("skip", "apply", "k1"), 2, "stdin is not a terminal")
	var dry jsonSkip
	f.ctlJSON(&dry, "skip", "apply", "k1", "--dry-run")
	if dry != (jsonSkip{Action: "skip", DryRun: true, HandlerKey: "apply", OrderingKey: "k1", Matched: 1}) {
		t.Fatalf("dry run: %+v", dry)
	}
	wantOut(t, f.ctl("skip", "apply", "k1", "--dry-run"), `dry run: would skip 1 dead row of ordering key "k1" of handler "apply"`)
	wantCode(t, invocation{t: t, schema: f.schema, interactive: true, stdin: "n\n"}.run("skip", "apply", "k1"), 1, "not confirmed")
	f.ctlJSON(&ev, "show", ids["k1:1"].String())
	if !ev.Rows[0].Waiting {
		t.Fatalf("k1:1 after a dry run and a refusal: %+v", ev.Rows[0])
	}

	// Paused, so that the skip's effect stays to be seen: k1:1 due, not
	// waiting; k1:0 dead, out of the key's order, its history says who.
	wantOut(t, f.ctl("pause", "--event-type", "acct", "--handler-key", "apply"), "paused")
	var res jsonSkip
	f.ctlJSON(&res, "skip", "apply", "k1", "--reason", "obsolete", "--yes")
	if res != (jsonSkip{Action: "skip", HandlerKey: "apply", OrderingKey: "k1", Matched: 1, Changed: 1}) {
		t.Fatalf("skip: %+v", res)
	}
	f.ctlJSON(&ev, "show", ids["k1:1"].String())
	if row := ev.Rows[0]; row.Status != "null" || row.Waiting || row.NextAttemptAt == nil || time.Until(*row.NextAttemptAt) > time.Second {
		t.Fatalf("k1:1 after the skip: %+v", row)
	}
	f.ctlJSON(&ev, "show", ids["k1:2"].String())
	if !ev.Rows[0].Waiting {
		t.Fatalf("k1:2 after the skip: %+v", ev.Rows[0])
	}
	f.ctlJSON(&ev, "show", ids["k1:0"].String())
	if row := ev.Rows[0]; row.Status != "dead" || row.OrderingKey != "" {
		t.Fatalf("k1:0 after the skip: %+v", row)
	}
	if h := ev.History[len(ev.History)-1]; h.Kind != "skipped" || h.Actor != "tester@testhost" || h.Text != "obsolete" {
		t.Fatalf("k1:0's history: %+v", ev.History)
	}
	wantOut(t, f.ctl("parked"), "no parked keys")
	wantCode(t, f.ctl("skip", "apply", "k1", "--yes"), 1, "has no dead row")

	wantOut(t, f.ctl("resume", "--event-type", "acct", "--handler-key", "apply"), "resumed")
	f.waitStats("k1's rows done", func(m map[pair]inbox.HandlerStats) bool {
		h := m[pair{"acct", "apply"}]
		return h.Done == 3 && h.Dead == 1 && h.Pending == 0
	})
}

type jsonSkip struct {
	Action      string `json:"action"`
	DryRun      bool   `json:"dry_run"`
	HandlerKey  string `json:"handler_key"`
	OrderingKey string `json:"ordering_key"`
	Matched     int64  `json:"matched"`
	Changed     int64  `json:"changed"`
}
