package inboxrabbitmq

import (
	"cmp"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pginbox/inbox"
)

// Defaults and limits of [Options] (each default is used when its field is
// left zero), and the trace headers a delivery's trace context is read from.
const (
	// DefaultBatchSize is the most deliveries stored by one Set, and the
	// channel's prefetch count.
	DefaultBatchSize = 100
	// MaxBatchSize is the largest BatchSize accepted.
	MaxBatchSize = 10000
	// DefaultBatchWait is how long a partial batch waits for more
	// deliveries after its first one arrived.
	DefaultBatchWait = 50 * time.Millisecond
	// DefaultRetryBackoff is the first pause after a failed Set or a lost
	// connection; each further failure doubles it.
	DefaultRetryBackoff = 100 * time.Millisecond
	// DefaultMaxRetryBackoff caps the pause between retries.
	DefaultMaxRetryBackoff = 10 * time.Second
	// MaxIDLength is the longest message id (property, header or what an
	// IDFunc is given) accepted, in bytes; AMQP's message-id property is a
	// short string of at most 255 bytes, and so is the limit for a header.
	MaxIDLength = 255
	// TraceparentHeader is the message header whose value, with the
	// tracestate header's, is stored as the record's trace context.
	TraceparentHeader = "traceparent"
	// TracestateHeader is the W3C tracestate header, stored with
	// [TraceparentHeader] when it fits.
	TracestateHeader = "tracestate"
)

// TypeSource says where a delivery's event type comes from.
type TypeSource string

const (
	// TypeFromRoutingKey takes the event type from the routing key the
	// message was published with. It is the default.
	TypeFromRoutingKey TypeSource = "routing-key"
	// TypeFromProperty takes the event type from the AMQP type property.
	TypeFromProperty TypeSource = "property"
	// TypeFromHeader takes the event type from the header named by
	// Options.TypeHeader, which must hold a string.
	TypeFromHeader TypeSource = "header"
)

// TypeSources returns every TypeSource.
func TypeSources() []TypeSource {
	return []TypeSource{TypeFromRoutingKey, TypeFromProperty, TypeFromHeader}
}

// IDFunc returns the event id of a delivery. An error makes the delivery
// poison: it is dead-lettered, not stored.
type IDFunc func(d *amqp.Delivery) (uuid.UUID, error)

// TypeFunc returns the event type of a delivery. An error makes the
// delivery poison.
type TypeFunc func(d *amqp.Delivery) (string, error)

// Options configure a [Consumer]. Queue is required; every other field has
// a default.
//
// The event id of a delivery comes from, in this order of precedence: ID
// when set; else the header IDHeader when set; else the AMQP message-id
// property. An id text that parses as a UUID is used as it is; any other
// text becomes broker.ID("rabbitmq", text), a UUID derived from it, so the
// same text always gives the same id. A delivery without an id is poison,
// unless HashPayloadIDs is set.
type Options struct {
	// Queue is the queue to consume. Required. Give it a dead-letter
	// exchange (the x-dead-letter-exchange argument or a policy): poison
	// messages are rejected without requeue, and RabbitMQ drops a rejected
	// message when its queue has no dead-letter exchange.
	Queue string
	// ConsumerTag names the consumer on the broker; "" lets the server
	// choose one.
	ConsumerTag string
	// BatchSize is the most deliveries stored by one Set and the channel's
	// prefetch count (QoS): at most BatchSize messages are unacknowledged
	// at once. 1 to MaxBatchSize; DefaultBatchSize when 0.
	BatchSize int
	// BatchWait is how long a partial batch waits for more deliveries
	// after its first one, before it is stored. DefaultBatchWait when 0.
	BatchWait time.Duration

	// ID computes the event id. It excludes IDHeader.
	ID IDFunc
	// IDHeader names the header holding the event id (a string), instead
	// of the message-id property.
	IDHeader string
	// HashPayloadIDs gives a delivery without an id the id
	// broker.ID("rabbitmq-payload", eventType, payload): a hash of its
	// event type and body. Identical messages of one type are then one
	// event, stored once: a producer that publishes the same body twice
	// on purpose loses the second. Off by default: a delivery without an
	// id is poison.
	HashPayloadIDs bool

	// TypeFrom is where the event type comes from; TypeFromRoutingKey
	// when "". It excludes TypeFunc.
	TypeFrom TypeSource
	// TypeHeader names the header holding the event type, with
	// TypeFromHeader (and only then).
	TypeHeader string
	// Types, when not nil, maps what TypeFrom gives (say a routing key) to
	// the event type stored; a value missing from it makes the delivery
	// poison.
	Types map[string]string
	// TypeFunc computes the event type, instead of TypeFrom.
	TypeFunc TypeFunc

	// MaxPayloadSize is the largest body stored, in bytes; a larger
	// delivery is poison. 1 to inbox.MaxPayloadSize, which it is when 0.
	MaxPayloadSize int

	// RetryBackoff and MaxRetryBackoff bound the pauses after a failed Set
	// and between reconnections: the first pause is RetryBackoff, each
	// failure doubles it up to MaxRetryBackoff. DefaultRetryBackoff and
	// DefaultMaxRetryBackoff when 0.
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration

	// Logger receives the consumer's logs; slog.Default() when nil.
	Logger *slog.Logger
}

// withDefaults returns o with its defaults applied, or an error wrapping
// inbox.ErrInvalidConfig naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	o.BatchSize = cmp.Or(o.BatchSize, DefaultBatchSize)
	o.BatchWait = cmp.Or(o.BatchWait, DefaultBatchWait)
	o.TypeFrom = cmp.Or(o.TypeFrom, TypeFromRoutingKey)
	o.MaxPayloadSize = cmp.Or(o.MaxPayloadSize, inbox.MaxPayloadSize)
	o.RetryBackoff = cmp.Or(o.RetryBackoff, DefaultRetryBackoff)
	o.MaxRetryBackoff = cmp.Or(o.MaxRetryBackoff, DefaultMaxRetryBackoff)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case strings.TrimSpace(o.Queue) == "":
		return o, invalid("Queue", o.Queue, "is required")
	case o.BatchSize < 1 || o.BatchSize > MaxBatchSize:
		return o, invalid("BatchSize", o.BatchSize, fmt.Sprintf("must be 1 to %d", MaxBatchSize))
	case o.BatchWait < 0:
		return o, invalid("BatchWait", o.BatchWait, "must not be negative")
	case o.ID != nil && o.IDHeader != "":
		return o, invalid("IDHeader", o.IDHeader, "must be empty when ID is set")
	case o.TypeFunc != nil && o.TypeFrom != TypeFromRoutingKey:
		return o, invalid("TypeFrom", o.TypeFrom, "must be empty when TypeFunc is set")
	case o.TypeFrom != TypeFromRoutingKey && o.TypeFrom != TypeFromProperty && o.TypeFrom != TypeFromHeader:
		return o, invalid("TypeFrom", o.TypeFrom, fmt.Sprintf("must be one of %v", TypeSources()))
	case o.TypeFrom == TypeFromHeader && o.TypeHeader == "":
		return o, invalid("TypeHeader", o.TypeHeader, "is required with TypeFromHeader")
	case o.TypeFrom != TypeFromHeader && o.TypeHeader != "":
		return o, invalid("TypeHeader", o.TypeHeader, "is used only with TypeFromHeader")
	case o.MaxPayloadSize < 1 || o.MaxPayloadSize > inbox.MaxPayloadSize:
		return o, invalid("MaxPayloadSize", o.MaxPayloadSize, fmt.Sprintf("must be 1 to %d", inbox.MaxPayloadSize))
	case o.RetryBackoff < 0:
		return o, invalid("RetryBackoff", o.RetryBackoff, "must not be negative")
	case o.MaxRetryBackoff < o.RetryBackoff:
		return o, invalid("MaxRetryBackoff", o.MaxRetryBackoff, "must be at least RetryBackoff")
	}
	for from, to := range o.Types {
		if strings.TrimSpace(to) == "" || len(to) > inbox.MaxEventTypeLength {
			return o, invalid("Types", from+" -> "+to, "maps to a blank or over-long event type")
		}
	}
	return o, nil
}

func invalid(field string, value any, rule string) error {
	return fmt.Errorf("%w: inboxrabbitmq: Options.%s (%v) %s", inbox.ErrInvalidConfig, field, value, rule)
}
