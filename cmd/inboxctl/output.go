package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

// writeJSON writes v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns a tabwriter for aligned columns; call Flush.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// row is the JSON shape of an [inbox.RecordState], with stable names
// (RecordState itself has no JSON tags).
type row struct {
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

func rowOf(s inbox.RecordState) row {
	return row{
		EventID: s.EventID, EventType: s.EventType, HandlerKey: s.HandlerKey,
		Status: s.Status.String(), Attempts: s.Attempts, MaxAttempts: s.MaxAttempts,
		LastError: s.LastError, ErrorType: s.ErrorType, PayloadErased: s.PayloadErased,
		EventDate: s.EventDate, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt, NextAttemptAt: s.NextAttemptAt,
		OrderingKey: s.OrderingKey, Waiting: s.Waiting,
	}
}

func rowsOf(states []inbox.RecordState) []row {
	out := make([]row, len(states))
	for i, s := range states {
		out[i] = rowOf(s)
	}
	return out
}

// orEmpty returns s, or an empty slice for nil, so JSON shows [] not null.
func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// duration formats d for people: "850ms", "12s", "1m05s", "2h03m",
// "3d04h".
func duration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d == 0:
		return "0s"
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// ago formats how long before now t was ("1m05s ago"), or after ("in 5s").
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if t.After(now) {
		return "in " + duration(t.Sub(now))
	}
	return duration(now.Sub(t)) + " ago"
}

// timestamp formats t for people, in UTC to the second.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// oneLine makes untrusted text safe for a table cell: control characters
// become spaces, runs of space one space, and text over max runes is cut
// with "…".
func oneLine(s string, max int) string {
	s = strings.Join(strings.FieldsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || r == utf8.RuneError
	}), " ")
	if max > 0 && utf8.RuneCountInString(s) > max {
		s = string([]rune(s)[:max-1]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}

// safeText makes untrusted text safe to print on a terminal, keeping its
// lines: control characters other than newline and tab become "?".
func safeText(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' {
			return r
		}
		if unicode.IsControl(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// dash returns s, or "-" when it is empty, for table cells.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// plural returns "1 row" or "n rows".
func plural(n int64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
