package dashboard

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/pginbox/inbox"
)

// funcs are the templates' helpers. None of them returns trusted HTML:
// html/template escapes everything they return, except link's URL, which
// is built from the dashboard's own paths and query-escaped values.
var funcs = template.FuncMap{
	"num":        formatNum,
	"dur":        formatDuration,
	"ts":         formatTime,
	"iso":        func(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) },
	"ago":        ago,
	"status":     statusName,
	"link":       link,
	"anyOf":      func(s string) string { return cmpOr(s, "any") },
	"join":       strings.Join,
	"replayable": replayable,
}

// formatNum formats n with thousands separators: 12,345.
func formatNum(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// formatDuration formats d briefly: "—" for none, "850ms", "42s",
// "3m 12s", "2h 5m", "3d 4h".
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "—"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm %ds", d/time.Minute, d%time.Minute/time.Second)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh %dm", d/time.Hour, d%time.Hour/time.Minute)
	default:
		return fmt.Sprintf("%dd %dh", d/(24*time.Hour), d%(24*time.Hour)/time.Hour)
	}
}

// formatTime formats t in UTC, to the second.
func formatTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05") + " UTC"
}

// ago says how long before now t was: "12s ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return formatDuration(d) + " ago"
}

// statusName names a status for people: "pending" for [inbox.Null].
func statusName(s inbox.Status) string {
	if s == inbox.Null {
		return "pending"
	}
	return string(s)
}

// link returns the URL of a dashboard page: base (the page's Base), the
// page's path relative to the root, and query pairs given as strings or
// []string, whose values are escaped; empty values are left out.
func link(base, path string, args ...any) template.URL {
	var kv []string
	for _, a := range args {
		switch a := a.(type) {
		case string:
			kv = append(kv, a)
		case []string:
			kv = append(kv, a...)
		default:
			kv = append(kv, fmt.Sprint(a))
		}
	}
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			v.Add(kv[i], kv[i+1])
		}
	}
	u := base + path
	if q := v.Encode(); q != "" {
		u += "?" + q
	}
	return template.URL(u) // our own path and escaped values
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// sparkline is an inline SVG bar chart of a pair's rows finished per
// minute over the last hour: done bars, dead stacked on top.
type sparkline struct {
	Width, Height int
	Bars          []sparkBar
	Max           int64
}

type sparkBar struct {
	X, Width             int
	DoneY, DoneH         int
	DeadY, DeadH         int
	Title                string
	DoneCount, DeadCount int64
}

const (
	sparkBarWidth = 3 // per minute, with a gap of one
	sparkHeight   = 32
)

func newSparkline(minutes []inbox.MinuteCount) sparkline {
	s := sparkline{Width: len(minutes) * sparkBarWidth, Height: sparkHeight}
	for _, m := range minutes {
		s.Max = max(s.Max, m.Done+m.Dead)
	}
	if s.Max == 0 {
		return s
	}
	scale := func(n int64) int {
		if n == 0 {
			return 0
		}
		return max(1, int(n*(sparkHeight-2)/s.Max))
	}
	for i, m := range minutes {
		if m.Done+m.Dead == 0 {
			continue
		}
		b := sparkBar{X: i * sparkBarWidth, Width: sparkBarWidth - 1, DoneH: scale(m.Done), DeadH: scale(m.Dead),
			DoneCount: m.Done, DeadCount: m.Dead}
		b.DoneY = sparkHeight - b.DoneH
		b.DeadY = b.DoneY - b.DeadH
		b.Title = fmt.Sprintf("%s: %s done, %s dead", m.Minute.UTC().Format("15:04 UTC"), formatNum(m.Done), formatNum(m.Dead))
		s.Bars = append(s.Bars, b)
	}
	return s
}

// maxPayloadShown bounds how much of a payload the event page shows.
const maxPayloadShown = 64 << 10

// maxBinaryShown bounds how much of a binary payload the event page
// dumps in hex.
const maxBinaryShown = 4 << 10

// payloadView is a payload as the event page shows it: text (JSON
// indented) or, for anything else, a hex dump marked binary. The
// template escapes it like any text.
type payloadView struct {
	Erased    bool
	Size      int64
	Binary    bool
	JSON      bool
	Text      string
	Truncated bool
}

func newPayloadView(p []byte, erased bool) payloadView {
	v := payloadView{Erased: erased, Size: int64(len(p))}
	if erased {
		return v
	}
	if !isText(p) {
		v.Binary = true
		shown := p[:min(len(p), maxBinaryShown)]
		v.Text, v.Truncated = hex.Dump(shown), len(shown) < len(p)
		return v
	}
	shown := p
	if len(p) > maxPayloadShown {
		shown = bytes.ToValidUTF8(p[:maxPayloadShown], nil)
		v.Truncated = true
	} else if json.Valid(p) {
		var buf bytes.Buffer
		if json.Indent(&buf, p, "", "  ") == nil {
			v.JSON, shown = true, buf.Bytes()
		}
	}
	v.Text = string(shown)
	return v
}

// isText reports whether p is UTF-8 text without control characters but
// tabs and line ends.
func isText(p []byte) bool {
	if !utf8.Valid(p) {
		return false
	}
	for _, r := range string(p) {
		if (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f {
			return false
		}
	}
	return true
}
