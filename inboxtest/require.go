package inboxtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pginbox/inbox"
)

// queryTimeout bounds the queries of the assertions.
const queryTimeout = 30 * time.Second

// listed is how many rows a failure message lists at most.
const listed = 20

// Event returns the stored event eventID with its rows (one per handler
// key), payload and history of failed attempts, as [inbox.Admin.Show]
// does. It fails t when no row of the event is stored.
func Event(t testing.TB, pool *pgxpool.Pool, eventID uuid.UUID) *inbox.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), queryTimeout)
	defer cancel()
	ev, err := admin(t, pool).Show(ctx, eventID)
	if errors.Is(err, inbox.ErrNotFound) {
		t.Fatalf("inboxtest: no row of event %s is stored", eventID)
	}
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	return ev
}

// RequireStatus fails t unless the row of event eventID for handler
// handlerKey is stored with status want, and returns the row for further
// checks (attempts, last error). The failure message shows the row found,
// with the event's history of failed attempts, or the rows the event has.
func RequireStatus(t testing.TB, pool *pgxpool.Pool, eventID uuid.UUID, handlerKey string, want inbox.Status) inbox.RecordState {
	t.Helper()
	ev := Event(t, pool, eventID)
	for _, row := range ev.Rows {
		if row.HandlerKey != handlerKey {
			continue
		}
		if row.Status != want {
			t.Fatalf("inboxtest: event %s, handler %q: status %s, want %s\n%s%s",
				eventID, handlerKey, row.Status, want, describeRows([]inbox.RecordState{row}, 1), describeHistory(ev.History, handlerKey))
		}
		return row
	}
	t.Fatalf("inboxtest: event %s (%s) has no row for handler %q; its rows:\n%s",
		eventID, ev.EventType, handlerKey, describeRows(ev.Rows, listed))
	return inbox.RecordState{}
}

// RequireCounts fails t unless the inbox table holds exactly want[s] rows
// in each status s; a status absent from want must have none. So
// RequireCounts(t, pool, map[inbox.Status]int{inbox.Done: 2}) says that
// two rows are stored and both are done. The failure message shows the
// counts found and the rows that are not done.
func RequireCounts(t testing.TB, pool *pgxpool.Pool, want map[inbox.Status]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), queryTimeout)
	defer cancel()
	a := admin(t, pool)
	got, err := counts(ctx, a)
	if err != nil {
		t.Fatalf("inboxtest: count rows: %v", err)
	}
	match := true
	for _, s := range inbox.Statuses() {
		match = match && got[s] == want[s]
	}
	if match {
		return
	}
	msg := fmt.Sprintf("inboxtest: rows per status: got %s, want %s", formatCounts(got), formatCounts(want))
	page, err := a.List(ctx, inbox.Filter{Statuses: []inbox.Status{inbox.Null, inbox.Progress, inbox.Failed, inbox.Dead}}, "", listed)
	if err == nil && len(page.Rows) > 0 {
		more := ""
		if page.Next != "" {
			more = " (the latest changed)"
		}
		msg += fmt.Sprintf("\nrows not done%s:\n%s", more, describeRows(page.Rows, listed))
	}
	t.Fatal(msg)
}

// admin returns an Admin over pool, failing t for a nil pool.
func admin(t testing.TB, pool *pgxpool.Pool) *inbox.Admin {
	t.Helper()
	a, err := inbox.NewAdmin(pool)
	if err != nil {
		t.Fatalf("inboxtest: %v", err)
	}
	return a
}

// formatCounts formats counts in lifecycle order, zeros included.
func formatCounts(c map[inbox.Status]int) string {
	parts := make([]string, 0, len(inbox.Statuses()))
	for _, s := range inbox.Statuses() {
		parts = append(parts, fmt.Sprintf("%s=%d", s, c[s]))
	}
	return strings.Join(parts, " ")
}

// describeRows formats up to max rows, one per line.
func describeRows(rows []inbox.RecordState, max int) string {
	var b strings.Builder
	for i, row := range rows {
		if i == max {
			fmt.Fprintf(&b, "\t... and %d more\n", len(rows)-max)
			break
		}
		fmt.Fprintf(&b, "\tevent %s %s/%s: %s, attempt %d of %d", row.EventID, row.EventType, row.HandlerKey,
			row.Status, row.Attempts, row.MaxAttempts)
		if row.NextAttemptAt != nil && row.Status == inbox.Failed {
			fmt.Fprintf(&b, ", next attempt at %s", row.NextAttemptAt.Format(time.RFC3339Nano))
		}
		if row.LastError != "" {
			fmt.Fprintf(&b, ", last error: %s", oneLine(row.LastError))
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// describeHistory formats the history entries of one handler key.
func describeHistory(history []inbox.HistoryEntry, handlerKey string) string {
	var b strings.Builder
	for _, h := range history {
		if h.HandlerKey != handlerKey {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("history:\n")
		}
		fmt.Fprintf(&b, "\t%s %s, attempt %d: %s\n", h.At.Format(time.RFC3339Nano), h.Kind, h.Attempt, oneLine(h.Text))
	}
	return b.String()
}

// oneLine shortens an error text to one line of at most 300 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		n := 300
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "..."
	}
	return s
}
