package inbox

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// Filter selects rows for [Admin.List], [Admin.Count], [Admin.DeadGroups]
// and the bulk actions. Every field that is set must match; a zero Filter
// matches every row.
type Filter struct {
	// EventID matches one event's rows.
	EventID uuid.UUID `json:"event_id,omitzero"`
	// EventType and HandlerKey match exactly.
	EventType  string `json:"event_type,omitempty"`
	HandlerKey string `json:"handler_key,omitempty"`
	// Statuses matches rows in any of these statuses.
	Statuses []Status `json:"statuses,omitempty"`
	// Since and Until match rows last changed at or after Since and
	// before Until.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// ErrorContains matches rows whose last error contains this text,
	// ignoring case.
	ErrorContains string `json:"error_contains,omitempty"`
	// Fingerprint matches the rows of one group of [Admin.DeadGroups].
	Fingerprint string `json:"fingerprint,omitempty"`
}

// IsZero reports whether f matches every row.
func (f Filter) IsZero() bool {
	return f.EventID == uuid.Nil && f.EventType == "" && f.HandlerKey == "" && len(f.Statuses) == 0 &&
		f.Since.IsZero() && f.Until.IsZero() && f.ErrorContains == "" && f.Fingerprint == ""
}

var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// validate checks f, naming the field at fault.
func (f Filter) validate() error {
	for _, s := range f.Statuses {
		if !slices.Contains(Statuses(), s) {
			return fmt.Errorf("%w: unknown status %q; use one of null, progress, failed, done, dead", ErrInvalidFilter, string(s))
		}
	}
	for _, t := range []struct{ what, s string }{
		{"event type", f.EventType}, {"handler key", f.HandlerKey}, {"error text", f.ErrorContains},
	} {
		if !utf8.ValidString(t.s) || strings.ContainsRune(t.s, 0) {
			return fmt.Errorf("%w: %s %q is not valid UTF-8 text without NUL bytes", ErrInvalidFilter, t.what, t.s)
		}
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return fmt.Errorf("%w: since (%s) is not before until (%s)", ErrInvalidFilter,
			f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	if f.Fingerprint != "" && !fingerprintRE.MatchString(f.Fingerprint) {
		return fmt.Errorf("%w: fingerprint %q is not 16 lowercase hex digits, as Admin.DeadGroups returns them", ErrInvalidFilter, f.Fingerprint)
	}
	return nil
}

// where returns f's conditions, appending their values to args; "true"
// for a zero Filter.
func (f Filter) where(args *[]any) string {
	var conds []string
	// add adds the condition "<expr> <op> <placeholder of v>". The SQL is
	// put together by concatenation only: expressions hold regular
	// expressions, in which no character may be taken for a placeholder.
	add := func(expr, op string, v any) {
		conds = append(conds, expr+" "+op+" "+param(args, v))
	}
	if f.EventID != uuid.Nil {
		add("event_id", "=", pgUUID(f.EventID))
	}
	if f.EventType != "" {
		add("event_type", "=", f.EventType)
	}
	if f.HandlerKey != "" {
		add("handler_key", "=", f.HandlerKey)
	}
	if len(f.Statuses) > 0 {
		ss := make([]string, len(f.Statuses))
		for i, s := range f.Statuses {
			ss[i] = string(s)
		}
		if len(ss) == 1 {
			add("status", "=", ss[0]) // lets the planner use a partial index
		} else {
			conds = append(conds, "status = ANY ("+param(args, ss)+"::text[])")
		}
	}
	if !f.Since.IsZero() {
		add("updated_at", ">=", f.Since)
	}
	if !f.Until.IsZero() {
		add("updated_at", "<", f.Until)
	}
	if f.ErrorContains != "" {
		conds = append(conds, "strpos(lower(last_error), lower("+param(args, f.ErrorContains)+")) > 0")
	}
	if f.Fingerprint != "" {
		conds = append(conds, "status = 'dead'")
		add(fingerprintExpr, "=", f.Fingerprint)
	}
	if len(conds) == 0 {
		return "true"
	}
	return strings.Join(conds, " AND ")
}

// param appends v to args and returns its placeholder.
func param(args *[]any, v any) string {
	*args = append(*args, v)
	return "$" + strconv.Itoa(len(*args))
}

// cursor is the position after the last row of a page of [Admin.List].
type cursor struct {
	updatedAt time.Time
	eventID   uuid.UUID
	key       string
}

func (c cursor) String() string {
	return strconv.FormatInt(c.updatedAt.UnixMicro(), 10) + "." + c.eventID.String() + "." +
		base64.RawURLEncoding.EncodeToString([]byte(c.key))
}

func parseCursor(s string) (cursor, error) {
	parts := strings.SplitN(s, ".", 3)
	if len(parts) != 3 {
		return cursor{}, fmt.Errorf("%w: page token %q is not one that List returned", ErrInvalidFilter, s)
	}
	micros, err1 := strconv.ParseInt(parts[0], 10, 64)
	id, err2 := uuid.Parse(parts[1])
	key, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return cursor{}, fmt.Errorf("%w: page token %q is not one that List returned", ErrInvalidFilter, s)
	}
	return cursor{time.UnixMicro(micros), id, string(key)}, nil
}

// keysetCond is the condition of the rows after c, in List's order.
func (c cursor) cond(args *[]any) string {
	return "(updated_at, event_id, handler_key) < (" + param(args, c.updatedAt) + ", " +
		param(args, pgtype.UUID{Bytes: c.eventID, Valid: true}) + "::uuid, " + param(args, c.key) + ")"
}
