package main

import (
	"testing"
	"time"
)

func TestFormatAndParse(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 850 * time.Millisecond: "850ms", 12 * time.Second: "12s", 65 * time.Second: "1m05s",
		2*time.Hour + 3*time.Minute + 9*time.Second: "2h03m", 76 * time.Hour: "3d04h", -5 * time.Second: "5s",
	} {
		if got := duration(d); got != want {
			t.Errorf("duration(%v) = %q, want %q", d, got, want)
		}
	}
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2026-11-29T10:00:00Z": time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC),
		"90m":                  now.Add(-90 * time.Minute),
		"3d":                   now.Add(-72 * time.Hour),
		"1d12h":                now.Add(-36 * time.Hour),
	} {
		got, err := parseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-1h", "xd", "3d-1h", "2026-11-29"} {
		if got, err := parseTime(bad, now); err == nil {
			t.Errorf("parseTime(%q) = %v, want an error", bad, got)
		}
	}
	if got := oneLine("a\x1b[31m\n\tb  c", 0); got != "a [31m b c" {
		t.Errorf("oneLine = %q", got)
	}
	if got := oneLine("abcdef", 4); got != "abc…" {
		t.Errorf("oneLine cut = %q", got)
	}
}
