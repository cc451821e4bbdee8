package main

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/pginbox/inbox"
)

// filterFlags are the flags that build an [inbox.Filter].
type filterFlags struct {
	statuses      statusList
	eventType     string
	handlerKey    string
	errorContains string
	fingerprint   string
	since, until  timeFlag
}

// register adds the filter's flags to fs; withStatus adds --status.
func (f *filterFlags) register(fs *flag.FlagSet, withStatus bool) {
	if withStatus {
		fs.Var(&f.statuses, "status",
			"match rows in these `statuses`: pending (or null), progress, failed, done, dead; repeat it or separate with commas")
	}
	fs.StringVar(&f.eventType, "event-type", "", "match this event `type` exactly")
	fs.StringVar(&f.handlerKey, "handler-key", "", "match this handler `key` exactly")
	fs.Var(&f.since, "since", "match rows last changed at or after `TIME`: RFC 3339, or a duration ago such as 90m, 2h, 3d")
	fs.Var(&f.until, "until", "match rows last changed before `TIME`: RFC 3339, or a duration ago such as 90m, 2h, 3d")
	fs.StringVar(&f.errorContains, "error", "", "match rows whose last error contains this `text` (ignoring case)")
	fs.StringVar(&f.fingerprint, "fingerprint", "", "match the dead rows of this group of 'inboxctl dead groups' (16 hex `digits`)")
}

// filter returns the Filter the flags describe.
func (f *filterFlags) filter() inbox.Filter {
	return inbox.Filter{
		EventType:     f.eventType,
		HandlerKey:    f.handlerKey,
		Statuses:      slices.Clone(f.statuses),
		Since:         f.since.t,
		Until:         f.until.t,
		ErrorContains: f.errorContains,
		Fingerprint:   f.fingerprint,
	}
}

// statusList is a repeatable --status flag.
type statusList []inbox.Status

func (s *statusList) String() string {
	if s == nil {
		return ""
	}
	return joinStatuses(*s)
}

func (s *statusList) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		st, err := parseStatus(strings.TrimSpace(part))
		if err != nil {
			return err
		}
		if !slices.Contains(*s, st) {
			*s = append(*s, st)
		}
	}
	return nil
}

// parseStatus reads a status name: the library's (Status.String), or
// "pending" for Null.
func parseStatus(v string) (inbox.Status, error) {
	switch strings.ToLower(v) {
	case "pending", "null":
		return inbox.Null, nil
	case "progress", "in_progress", "in-progress":
		return inbox.Progress, nil
	case "failed":
		return inbox.Failed, nil
	case "done":
		return inbox.Done, nil
	case "dead":
		return inbox.Dead, nil
	}
	return "", fmt.Errorf("unknown status %q; use pending, progress, failed, done or dead", v)
}

// statusName is a status as people read it: "pending" for Null.
func statusName(s inbox.Status) string {
	if s == inbox.Null {
		return "pending"
	}
	return s.String()
}

func joinStatuses(ss []inbox.Status) string {
	names := make([]string, len(ss))
	for i, s := range ss {
		names[i] = statusName(s)
	}
	return strings.Join(names, ",")
}

// timeFlag is a point in time: RFC 3339, or a duration before now.
type timeFlag struct {
	t   time.Time
	raw string
}

func (f *timeFlag) String() string { return f.raw }

func (f *timeFlag) Set(v string) error {
	t, err := parseTime(v, time.Now())
	if err != nil {
		return err
	}
	f.t, f.raw = t, v
	return nil
}

// parseTime reads an RFC 3339 time, or a duration before now ("90m",
// "2h30m", "3d").
func parseTime(v string, now time.Time) (time.Time, error) {
	v = strings.TrimSpace(v)
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if d, err := parseAgo(v); err == nil {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2006-01-02T15:04:05Z) nor a duration ago (90m, 2h, 3d)", v)
}

// parseAgo reads a non-negative duration, with "d" for days allowed in
// front ("3d", "1d12h").
func parseAgo(v string) (time.Duration, error) {
	var days time.Duration
	if i := strings.Index(v, "d"); i > 0 {
		n, err := strconv.Atoi(v[:i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("bad days in %q", v)
		}
		days, v = time.Duration(n)*24*time.Hour, v[i+1:]
		if v == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("bad duration %q", v)
	}
	return days + d, nil
}

// eventIDArg parses an event id given as an argument.
func eventIDArg(s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil || id == uuid.Nil {
		return uuid.Nil, usagef("%q is not an event id (a UUID)", s)
	}
	return id, nil
}

// describe says in words what f matches.
func describe(f inbox.Filter) string {
	var parts []string
	add := func(name, v string) { parts = append(parts, name+" "+v) }
	if f.EventID != uuid.Nil {
		add("event", f.EventID.String())
	}
	if f.EventType != "" {
		add("event type", strconv.Quote(f.EventType))
	}
	if f.HandlerKey != "" {
		add("handler key", strconv.Quote(f.HandlerKey))
	}
	if len(f.Statuses) > 0 {
		add("status", joinStatuses(f.Statuses))
	}
	if !f.Since.IsZero() {
		add("changed since", f.Since.Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		add("changed before", f.Until.Format(time.RFC3339))
	}
	if f.ErrorContains != "" {
		add("error containing", strconv.Quote(f.ErrorContains))
	}
	if f.Fingerprint != "" {
		add("fingerprint", f.Fingerprint)
	}
	if len(parts) == 0 {
		return "every row"
	}
	return strings.Join(parts, ", ")
}
