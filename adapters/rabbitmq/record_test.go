package inboxrabbitmq_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	inboxrabbitmq "github.com/pginbox/inbox/adapters/rabbitmq"
	"github.com/pginbox/inbox/internal/testenv"
)

// mapper returns a consumer with opts (Queue set), for its Record method.
func mapper(t *testing.T, opts inboxrabbitmq.Options) *inboxrabbitmq.Consumer {
	t.Helper()
	reg, _ := registry()
	ib, err := inbox.New(testenv.Pool(t, 1), reg)
	if err != nil {
		t.Fatal(err)
	}
	opts.Queue = "q"
	c, err := inboxrabbitmq.New(inboxrabbitmq.DialURL(amqpURL), ib.Client(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The derived ids are stored data: they must never change between
// releases.
func TestRecordIDs(t *testing.T) {
	t.Parallel()
	c := mapper(t, inboxrabbitmq.Options{})
	id := uuid.New()
	rec, err := c.Record(&amqp.Delivery{MessageId: id.String(), RoutingKey: "order_created", Body: []byte(`{}`)})
	if err != nil || rec.ID() != id || rec.EventType() != "order_created" {
		t.Fatalf("UUID message id: %v, %v", rec, err)
	}
	rec, err = c.Record(&amqp.Delivery{MessageId: "order-42", RoutingKey: "order_created"})
	if want := uuid.MustParse("25df3200-fe63-583b-a17f-ae008c5c5972"); err != nil || rec.ID() != want {
		t.Fatalf("text message id: %v, %v; want %s (a changed id breaks deduplication)", rec, err, want)
	}
	if _, err := c.Record(&amqp.Delivery{RoutingKey: "order_created"}); !errors.Is(err, inboxrabbitmq.ErrNoID) {
		t.Fatalf("no id: %v, want ErrNoID", err)
	}
	if _, err := c.Record(&amqp.Delivery{MessageId: strings.Repeat("x", inboxrabbitmq.MaxIDLength+1), RoutingKey: "t"}); !errors.Is(err, inboxrabbitmq.ErrBadID) {
		t.Fatalf("long id: %v, want ErrBadID", err)
	}
	if _, err := c.Record(&amqp.Delivery{MessageId: uuid.Nil.String(), RoutingKey: "t"}); !errors.Is(err, inboxrabbitmq.ErrRejected) {
		t.Fatalf("nil UUID: %v, want ErrRejected", err)
	}

	hashed := mapper(t, inboxrabbitmq.Options{HashPayloadIDs: true})
	rec, err = hashed.Record(&amqp.Delivery{RoutingKey: "order_created", Body: []byte(`{"a":1}`)})
	if want := uuid.MustParse("ed94b7ad-536c-57d5-9522-571a5bbadc2d"); err != nil || rec.ID() != want {
		t.Fatalf("hashed id: %v, %v; want %s", rec, err, want)
	}
	other, _ := hashed.Record(&amqp.Delivery{RoutingKey: "order_paid", Body: []byte(`{"a":1}`)})
	if other.ID() == rec.ID() {
		t.Fatal("hashed ids do not depend on the event type")
	}

	header := mapper(t, inboxrabbitmq.Options{IDHeader: "x-event-id"})
	rec, err = header.Record(&amqp.Delivery{MessageId: "ignored", RoutingKey: "t", Headers: amqp.Table{"x-event-id": []byte(id.String())}})
	if err != nil || rec.ID() != id {
		t.Fatalf("header id: %v, %v", rec, err)
	}
	if _, err := header.Record(&amqp.Delivery{RoutingKey: "t", Headers: amqp.Table{"x-event-id": int64(7)}}); !errors.Is(err, inboxrabbitmq.ErrBadID) {
		t.Fatalf("numeric header id: %v, want ErrBadID", err)
	}
	if _, err := header.Record(&amqp.Delivery{MessageId: id.String(), RoutingKey: "t"}); !errors.Is(err, inboxrabbitmq.ErrNoID) {
		t.Fatalf("missing header: %v, want ErrNoID", err)
	}

	fn := mapper(t, inboxrabbitmq.Options{ID: func(d *amqp.Delivery) (uuid.UUID, error) {
		if d.AppId == "" {
			return uuid.Nil, errSentinel
		}
		return id, nil
	}})
	if rec, err := fn.Record(&amqp.Delivery{AppId: "a", RoutingKey: "t"}); err != nil || rec.ID() != id {
		t.Fatalf("id func: %v, %v", rec, err)
	}
	if _, err := fn.Record(&amqp.Delivery{RoutingKey: "t"}); !errors.Is(err, inboxrabbitmq.ErrBadID) || !errors.Is(err, errSentinel) {
		t.Fatalf("id func error: %v", err)
	}
}

func TestRecordTypesAndRest(t *testing.T) {
	t.Parallel()
	id := uuid.NewString()
	prop := mapper(t, inboxrabbitmq.Options{TypeFrom: inboxrabbitmq.TypeFromProperty})
	if rec, err := prop.Record(&amqp.Delivery{MessageId: id, Type: "paid", RoutingKey: "rk"}); err != nil || rec.EventType() != "paid" {
		t.Fatalf("type property: %v, %v", rec, err)
	}
	if _, err := prop.Record(&amqp.Delivery{MessageId: id, RoutingKey: "rk"}); !errors.Is(err, inboxrabbitmq.ErrNoEventType) {
		t.Fatalf("no type property: %v", err)
	}
	header := mapper(t, inboxrabbitmq.Options{TypeFrom: inboxrabbitmq.TypeFromHeader, TypeHeader: "x-type",
		Types: map[string]string{"created": "order_created"}})
	if rec, err := header.Record(&amqp.Delivery{MessageId: id, Headers: amqp.Table{"x-type": "created"}}); err != nil || rec.EventType() != "order_created" {
		t.Fatalf("type header mapped: %v, %v", rec, err)
	}
	if _, err := header.Record(&amqp.Delivery{MessageId: id, Headers: amqp.Table{"x-type": "deleted"}}); !errors.Is(err, inboxrabbitmq.ErrNoEventType) {
		t.Fatalf("unmapped type: %v", err)
	}
	if _, err := header.Record(&amqp.Delivery{MessageId: id}); !errors.Is(err, inboxrabbitmq.ErrNoEventType) {
		t.Fatalf("missing type header: %v", err)
	}

	small := mapper(t, inboxrabbitmq.Options{MaxPayloadSize: 4})
	if _, err := small.Record(&amqp.Delivery{MessageId: id, RoutingKey: "t", Body: []byte("12345")}); !errors.Is(err, inboxrabbitmq.ErrTooLarge) {
		t.Fatalf("large body: %v", err)
	}

	when := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	rec, err := small.Record(&amqp.Delivery{MessageId: id, RoutingKey: "t", Body: []byte("1234"), Timestamp: when,
		Headers: amqp.Table{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "k=v"}})
	if err != nil || !rec.EventDate().Equal(when) || string(rec.Payload()) != "1234" {
		t.Fatalf("record: %v, %v", rec, err)
	}
	if want := "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\ntracestate: k=v"; rec.TraceContext() != want {
		t.Fatalf("trace context %q, want %q", rec.TraceContext(), want)
	}
	rec, _ = small.Record(&amqp.Delivery{MessageId: id, RoutingKey: "t", Headers: amqp.Table{"traceparent": "a\nb"}})
	if rec.TraceContext() != "" {
		t.Fatalf("a traceparent with a newline was kept: %q", rec.TraceContext())
	}
}
