package inboxkafka

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// mapper returns a Consumer that can map records with o.
func mapper(t *testing.T, o Options) *Consumer {
	t.Helper()
	o.Seeds, o.Group, o.Topics = []string{"localhost:9092"}, "g", []string{"t"}
	o, err := o.withDefaults()
	if err != nil {
		t.Fatalf("options: %v", err)
	}
	return &Consumer{o: o}
}

func rec(topic string, headers ...string) *kgo.Record {
	r := &kgo.Record{Topic: topic, Partition: 3, Offset: 42, Value: []byte("v"), Timestamp: time.Unix(1700000000, 0)}
	for i := 0; i+1 < len(headers); i += 2 {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: headers[i], Value: []byte(headers[i+1])})
	}
	return r
}

func TestMapID(t *testing.T) {
	id := uuid.New()
	c := mapper(t, Options{IDHeader: "event-id"})
	derived := broker.ID("kafka", "t", "3", "42")
	if got := DerivedID(rec("t")); got != derived {
		t.Fatalf("DerivedID = %s, want %s", got, derived)
	}
	for _, tc := range []struct {
		name   string
		r      *kgo.Record
		want   uuid.UUID
		poison string
	}{
		{"header", rec("t", "event-id", id.String()), id, ""},
		{"last header wins", rec("t", "event-id", uuid.NewString(), "event-id", id.String()), id, ""},
		{"no header: derived", rec("t"), derived, ""},
		{"not a uuid", rec("t", "event-id", "nope"), uuid.Nil, "id header"},
		{"nil uuid", rec("t", "event-id", uuid.Nil.String()), uuid.Nil, "nil UUID"},
	} {
		it := c.mapRecord(tc.r)
		if tc.poison != "" {
			if it.rec != nil || !strings.Contains(it.reason, tc.poison) {
				t.Errorf("%s: got record %v, reason %q; want poison with %q", tc.name, it.rec, it.reason, tc.poison)
			}
			continue
		}
		if it.rec == nil || it.rec.ID() != tc.want {
			t.Errorf("%s: got %v (%q), want id %s", tc.name, it.rec, it.reason, tc.want)
		}
	}

	fn := mapper(t, Options{IDHeader: "event-id", EventID: func(r *kgo.Record) (uuid.UUID, error) {
		switch string(r.Key) {
		case "bad":
			return uuid.Nil, errors.New("no id")
		case "none":
			return uuid.Nil, nil
		}
		return id, nil
	}})
	if it := fn.mapRecord(rec("t", "event-id", uuid.NewString())); it.rec == nil || it.rec.ID() != id {
		t.Errorf("EventID func: got %v (%q), want %s", it.rec, it.reason, id)
	}
	r := rec("t")
	r.Key = []byte("none")
	if it := fn.mapRecord(r); it.rec == nil || it.rec.ID() != derived {
		t.Errorf("EventID func giving uuid.Nil: got %v, want the derived id", it.rec)
	}
	r.Key = []byte("bad")
	if it := fn.mapRecord(r); it.rec != nil || !strings.Contains(it.reason, "no id") {
		t.Errorf("EventID func failing: got %v (%q), want poison", it.rec, it.reason)
	}
}

func TestMapEventType(t *testing.T) {
	c := mapper(t, Options{EventTypeHeader: "type", EventTypes: map[string]string{"orders": "order_created"}})
	for _, tc := range []struct {
		r    *kgo.Record
		want string
	}{
		{rec("orders", "type", "order_paid"), "order_paid"},
		{rec("orders"), "order_created"},
		{rec("refunds"), "refunds"},
	} {
		if it := c.mapRecord(tc.r); it.rec == nil || it.rec.EventType() != tc.want {
			t.Errorf("topic %s headers %v: got %v (%q), want %q", tc.r.Topic, tc.r.Headers, it.rec, it.reason, tc.want)
		}
	}
	if it := c.mapRecord(rec("orders", "type", "  ")); it.rec != nil || !strings.Contains(it.reason, "blank") {
		t.Errorf("blank type: got %v (%q), want poison", it.rec, it.reason)
	}
	fn := mapper(t, Options{EventTypeHeader: "type", EventType: func(r *kgo.Record) (string, error) {
		if r.Topic == "bad" {
			return "", errors.New("which type?")
		}
		return "from_func", nil
	}})
	if it := fn.mapRecord(rec("orders", "type", "x")); it.rec == nil || it.rec.EventType() != "from_func" {
		t.Errorf("EventType func: got %v (%q)", it.rec, it.reason)
	}
	if it := fn.mapRecord(rec("bad")); it.rec != nil || !strings.Contains(it.reason, "which type?") {
		t.Errorf("EventType func failing: got %v (%q), want poison", it.rec, it.reason)
	}
}

func TestMapPayloadDateTrace(t *testing.T) {
	c := mapper(t, Options{})
	tp := "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	it := c.mapRecord(rec("t", "traceparent", tp))
	if it.rec == nil || it.rec.TraceContext() != tp || !it.rec.EventDate().Equal(time.Unix(1700000000, 0)) || string(it.rec.Payload()) != "v" {
		t.Fatalf("got %+v (%q)", it.rec, it.reason)
	}
	long := c.mapRecord(rec("t", "traceparent", strings.Repeat("x", inbox.MaxTraceContextLength+1)))
	if long.rec == nil || long.rec.TraceContext() != "" {
		t.Errorf("an over-long trace context should be dropped, not the record: got %v (%q)", long.rec, long.reason)
	}
	if nul := c.mapRecord(rec("t", "traceparent", "a\x00b")); nul.rec == nil || nul.rec.TraceContext() != "" {
		t.Errorf("a trace context with NUL should be dropped, not the record: got %v (%q)", nul.rec, nul.reason)
	}
	r := rec("t")
	r.Timestamp = time.Time{}
	if it := c.mapRecord(r); it.rec == nil || time.Since(it.rec.EventDate()) > time.Minute {
		t.Errorf("no timestamp: got %v, want now", it.rec)
	}
	r.Value = make([]byte, inbox.MaxPayloadSize+1)
	if it := c.mapRecord(r); it.rec != nil || !strings.Contains(it.reason, "MaxPayloadSize") {
		t.Errorf("oversized payload: got %v (%q), want poison", it.rec, it.reason)
	}
}
