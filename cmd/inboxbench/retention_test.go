package main

import (
	"bytes"
	"compress/flate"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/pginbox/inbox"
)

// A redelivery must carry the very bytes first stored, and the payloads
// must not compress, or TOAST would shrink them and the sizes would flatter.
func TestRetentionPayload(t *testing.T) {
	ev := newRetentionEvents(10, 16<<10)
	a, b := ev.payload(3), ev.payload(3)
	if len(a) != 16<<10 || !bytes.Equal(a, b) {
		t.Fatalf("payload(3) is %d bytes, equal at the second call: %t", len(a), bytes.Equal(a, b))
	}
	if bytes.Equal(a, ev.payload(4)) {
		t.Fatal("events 3 and 4 have the same payload")
	}
	if bytes.Equal(newRetentionEvents(10, 64).payload(3), a[:64]) {
		t.Fatal("the payload does not depend on the size")
	}
	var z bytes.Buffer
	w, _ := flate.NewWriter(&z, flate.BestCompression)
	_, _ = w.Write(a)
	_ = w.Close()
	if z.Len() < len(a)*99/100 {
		t.Fatalf("a %d-byte payload deflates to %d bytes", len(a), z.Len())
	}
	if r := ev.record(3, a); r.ID() != ev.ids[3] || !bytes.Equal(r.Payload(), a) || r.EventType() != eventType {
		t.Fatalf("record(3) = %v %q", r.ID(), r.EventType())
	}
}

func TestRetentionSample(t *testing.T) {
	ev := newRetentionEvents(5_000, 64)
	s := ev.sample(1_000)
	if len(s) != 1_000 || s[0] != 0 || s[999] != 4_995 || !slices.IsSorted(s) || len(slices.Compact(slices.Clone(s))) != 1_000 {
		t.Fatalf("sample of 1,000 of 5,000 = %v ... %v", s[:3], s[len(s)-3:])
	}
	if got := newRetentionEvents(10, 64).sample(1_000); !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("sample of 1,000 of 10 = %v", got)
	}
}

func TestRedeliveryChecks(t *testing.T) {
	good := redelivery{
		same:          inbox.SetResult{Records: redeliverSample, Duplicates: redeliverSample},
		changed:       inbox.SetResult{Records: redeliverChanged, Conflicting: redeliverChanged},
		rows:          5_000,
		payloadErased: true,
	}
	if !good.sameOK() || !good.changedOK() || !good.untouched(5_000) {
		t.Fatalf("a clean redelivery fails: %t %t %t", good.sameOK(), good.changedOK(), good.untouched(5_000))
	}
	for name, bad := range map[string]func(*redelivery){
		"a new record":            func(r *redelivery) { r.same.New, r.same.Duplicates = 1, redeliverSample-1 },
		"a row stored":            func(r *redelivery) { r.same.Rows = 1 },
		"a conflict among same":   func(r *redelivery) { r.same.Conflicting, r.same.Duplicates = 1, redeliverSample-1 },
		"a changed one stored":    func(r *redelivery) { r.changed.New, r.changed.Conflicting = 1, redeliverChanged-1 },
		"a changed one duplicate": func(r *redelivery) { r.changed.Duplicates, r.changed.Conflicting = 1, redeliverChanged-1 },
		"a handler ran":           func(r *redelivery) { r.handlerRuns = 1 },
		"a row changed":           func(r *redelivery) { r.rowsChanged = 1 },
		"a row gone":              func(r *redelivery) { r.rows-- },
		"payload not erased":      func(r *redelivery) { r.payloadErased = false },
	} {
		r := good
		bad(&r)
		if r.sameOK() && r.changedOK() && r.untouched(5_000) {
			t.Errorf("%s passes", name)
		}
	}
}

func TestConflictWarnings(t *testing.T) {
	var out bytes.Buffer
	h := &conflictWarnings{Handler: slog.NewTextHandler(&out, nil), n: new(atomic.Int64)}
	log := slog.New(h).With("worker", 1)
	log.Warn("inbox: conflicting duplicate: event id stored already", "event_id", "x")
	log.Warn("inbox: something else")
	if h.n.Load() != 1 || bytes.Contains(out.Bytes(), []byte("conflicting")) || !bytes.Contains(out.Bytes(), []byte("something else")) {
		t.Fatalf("counted %d, logged %q", h.n.Load(), out.String())
	}
}

func TestFmtSize(t *testing.T) {
	for n, want := range map[int]string{64: "64 B", 1 << 10: "1 KiB", 16 << 10: "16 KiB", 1500: "1500 B"} {
		if got := fmtSize(n); got != want {
			t.Errorf("fmtSize(%d) = %q, want %q", n, got, want)
		}
	}
	if got, want := bytesCell(spreadOf([]float64{221.4, 219, 1234})), "221 B (219–1,234)"; got != want {
		t.Fatalf("bytesCell = %q, want %q", got, want)
	}
}

func TestParseOnlyRetention(t *testing.T) {
	got, err := parseOnly("retention,W1")
	if err != nil || !slices.Equal(got, []string{"W1", "Retention"}) {
		t.Fatalf("parseOnly = %v, %v", got, err)
	}
	if all, _ := parseOnly(""); !slices.Contains(all, "Retention") {
		t.Fatalf("default workloads = %v", all)
	}
}
