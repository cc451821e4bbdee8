package inboxrabbitmq

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
	"github.com/pginbox/inbox/broker"
)

// Reasons a delivery is poison: it cannot become a record, so it is
// dead-lettered (rejected without requeue) instead of stored. Each
// wraps [ErrPoison].
var (
	// ErrPoison is wrapped by every reason a delivery is dead-lettered.
	ErrPoison = errors.New("inboxrabbitmq: poison message")
	// ErrNoID: the delivery has no id (no message-id property, no IDHeader
	// header) and HashPayloadIDs is off.
	ErrNoID = fmt.Errorf("%w: no message id", ErrPoison)
	// ErrBadID: the id is not text, is longer than [MaxIDLength], or the
	// IDFunc failed.
	ErrBadID = fmt.Errorf("%w: unusable message id", ErrPoison)
	// ErrNoEventType: no event type could be found, or Types has no entry
	// for it.
	ErrNoEventType = fmt.Errorf("%w: no event type", ErrPoison)
	// ErrTooLarge: the body is larger than Options.MaxPayloadSize.
	ErrTooLarge = fmt.Errorf("%w: payload too large", ErrPoison)
	// ErrRejected: inbox.NewRecord or Set rejected the record as bad input
	// (for example an event type with no handler under
	// inbox.RejectUnknown).
	ErrRejected = fmt.Errorf("%w: rejected by the inbox", ErrPoison)
)

// Record maps a delivery to the record the consumer stores for it, as
// described at [Options]; an error wrapping [ErrPoison] says why it cannot
// be stored. The event date is the message's timestamp property, or now
// when it has none. A traceparent header (and tracestate, when it fits)
// becomes the record's trace context, in the "name: value" lines the
// inbox's OpenTelemetry propagator reads; one that is not valid text is
// left out.
func (c *Consumer) Record(d *amqp.Delivery) (*inbox.Record, error) {
	if len(d.Body) > c.opts.MaxPayloadSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(d.Body), c.opts.MaxPayloadSize)
	}
	eventType, err := c.eventType(d)
	if err != nil {
		return nil, err
	}
	id, err := c.eventID(d, eventType)
	if err != nil {
		return nil, err
	}
	date := d.Timestamp
	if date.IsZero() {
		date = time.Now()
	}
	rec, err := inbox.NewRecord(id, eventType, d.Body, date)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRejected, err)
	}
	if tc := traceContext(d.Headers); tc != "" {
		rec = rec.WithTraceContext(tc)
	}
	return rec, nil
}

// eventID returns the delivery's event id.
func (c *Consumer) eventID(d *amqp.Delivery, eventType string) (uuid.UUID, error) {
	if c.opts.ID != nil {
		id, err := c.opts.ID(d)
		if err != nil {
			return uuid.Nil, fmt.Errorf("%w: %w", ErrBadID, err)
		}
		return id, nil
	}
	text, where := d.MessageId, "message-id property"
	if c.opts.IDHeader != "" {
		where = "header " + c.opts.IDHeader
		v, ok := d.Headers[c.opts.IDHeader]
		if ok {
			s, isText := headerText(v)
			if !isText {
				return uuid.Nil, fmt.Errorf("%w: %s holds a %T, not text", ErrBadID, where, v)
			}
			text = s
		} else {
			text = ""
		}
	}
	switch {
	case text == "" && c.opts.HashPayloadIDs:
		return broker.ID("rabbitmq-payload", eventType, string(d.Body)), nil
	case text == "":
		return uuid.Nil, fmt.Errorf("%w: %s is empty", ErrNoID, where)
	case len(text) > MaxIDLength:
		return uuid.Nil, fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrBadID, where, len(text), MaxIDLength)
	}
	if id, err := uuid.Parse(text); err == nil {
		return id, nil
	}
	return broker.ID("rabbitmq", text), nil
}

// eventType returns the delivery's event type.
func (c *Consumer) eventType(d *amqp.Delivery) (string, error) {
	var t string
	switch {
	case c.opts.TypeFunc != nil:
		s, err := c.opts.TypeFunc(d)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrNoEventType, err)
		}
		t = s
	case c.opts.TypeFrom == TypeFromProperty:
		t = d.Type
	case c.opts.TypeFrom == TypeFromHeader:
		v, ok := d.Headers[c.opts.TypeHeader]
		s, isText := headerText(v)
		if !ok || !isText {
			return "", fmt.Errorf("%w: header %s missing or not text", ErrNoEventType, c.opts.TypeHeader)
		}
		t = s
	default:
		t = d.RoutingKey
	}
	if c.opts.Types != nil {
		mapped, ok := c.opts.Types[t]
		if !ok {
			return "", fmt.Errorf("%w: %q is not in Options.Types", ErrNoEventType, t)
		}
		t = mapped
	}
	if strings.TrimSpace(t) == "" {
		return "", fmt.Errorf("%w: empty (from %s)", ErrNoEventType, c.typeSource())
	}
	return t, nil
}

func (c *Consumer) typeSource() string {
	if c.opts.TypeFunc != nil {
		return "TypeFunc"
	}
	return string(c.opts.TypeFrom)
}

// headerText returns a header value that is text.
func headerText(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case []byte:
		return string(v), true
	}
	return "", false
}

// traceContext returns the stored form of the delivery's W3C trace
// headers, "" when it has none usable.
func traceContext(h amqp.Table) string {
	tp, ok := headerText(h[TraceparentHeader])
	if !ok || !traceValue(tp) {
		return ""
	}
	s := TraceparentHeader + ": " + strings.TrimSpace(tp)
	if inbox.ValidateTraceContext(s) != nil {
		return ""
	}
	if ts, ok := headerText(h[TracestateHeader]); ok && traceValue(ts) {
		if full := s + "\n" + TracestateHeader + ": " + strings.TrimSpace(ts); inbox.ValidateTraceContext(full) == nil {
			s = full
		}
	}
	return s
}

// traceValue reports whether v can be a header line's value: not blank
// and on one line ([inbox.ValidateTraceContext] checks the rest).
func traceValue(v string) bool {
	return strings.TrimSpace(v) != "" && !strings.ContainsAny(v, "\r\n")
}
