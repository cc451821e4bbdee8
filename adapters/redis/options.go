package inboxredis

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/pginbox/inbox"
)

// Defaults of [Options].
const (
	// DefaultBatchSize is the most entries read from one stream at once.
	DefaultBatchSize = 100
	// MaxBatchSize is the largest BatchSize accepted.
	MaxBatchSize = 10000
	// DefaultBlock is how long one read waits for new entries; Run returns
	// at most about this long after its context ends.
	DefaultBlock = time.Second
	// DefaultClaimIdle is how long an entry stays pending with another
	// consumer before this one takes it over.
	DefaultClaimIdle = time.Minute
	// DefaultDeadLetterSuffix makes "orders" dead-letter to "orders.dead".
	DefaultDeadLetterSuffix = ".dead"
	// DefaultPayloadField is the field holding the payload.
	DefaultPayloadField = "payload"
	// DefaultTraceField is the field holding a W3C traceparent.
	DefaultTraceField = "traceparent"
	// DefaultStartID is where a group created by the Consumer starts: the
	// beginning of the stream.
	DefaultStartID = "0"
	// DefaultRetryBackoff and DefaultMaxRetryBackoff bound the pause after
	// a failed Set or Redis command: it doubles from the first to the
	// second, with jitter.
	DefaultRetryBackoff    = 100 * time.Millisecond
	DefaultMaxRetryBackoff = 10 * time.Second
	// DefaultStopTimeout is how long a batch in hand may take to commit
	// and be acknowledged once Run's context has ended.
	DefaultStopTimeout = 10 * time.Second
)

// ErrInvalidMessage's text starts the reason ([DeadReasonField]) of a
// dead-lettered entry that lacks a field or whose id is not a UUID.
var ErrInvalidMessage = errors.New("inboxredis: invalid message")

// IDFunc returns the event id of an entry of stream.
type IDFunc func(stream string, msg redis.XMessage) (uuid.UUID, error)

// Options configure a [Consumer]. Group, Consumer and Streams are
// required; every other zero value means its default.
type Options struct {
	// Group is the consumer group. The Consumer creates it on each stream
	// where it is missing (XGROUP CREATE ... MKSTREAM), starting at
	// StartID.
	Group string
	// Consumer is this consumer's name in the group. Keep it stable across
	// restarts of the same process (a pod name, a host name): on start
	// the Consumer first reads the entries still pending under its name.
	// Two processes must not share a name.
	Consumer string
	// Streams maps each stream to read to the event type of its entries;
	// "" takes the event type from the field TypeField of each entry.
	Streams map[string]string
	// IDField names the field holding the event id, a UUID. An entry
	// without it, or with a value that is not a UUID, is dead-lettered.
	IDField string
	// ID returns the event id of an entry; an error dead-letters it. At
	// most one of IDField and ID may be set; with neither, the id is
	// broker.ID("redis", stream, entryID).
	ID IDFunc
	// TypeField names the field holding the event type, for the streams
	// mapped to "".
	TypeField string
	// PayloadField names the field holding the payload
	// ([DefaultPayloadField]). An entry without it is dead-lettered.
	PayloadField string
	// TraceField names the field holding the trace context
	// ([DefaultTraceField]); an entry may lack it.
	TraceField string
	// StartID is where a group the Consumer creates starts
	// ([DefaultStartID], the stream's beginning); "$" starts at its end.
	StartID string
	// BatchSize is the most entries read from one stream at once
	// ([DefaultBatchSize], at most [MaxBatchSize]). Each read's entries
	// are stored with one Set.
	BatchSize int
	// Block is how long a read waits for new entries ([DefaultBlock]).
	Block time.Duration
	// ClaimIdle is how long an entry must have been pending with another
	// consumer before this one takes it over ([DefaultClaimIdle]). The
	// Consumer looks for such entries every ClaimIdle/2. Set it well above
	// the time a batch takes to commit.
	ClaimIdle time.Duration
	// DeadLetterSuffix names each stream's dead-letter stream
	// ([DefaultDeadLetterSuffix]).
	DeadLetterSuffix string
	// RetryBackoff and MaxRetryBackoff bound the pause after a failure
	// ([DefaultRetryBackoff], [DefaultMaxRetryBackoff]).
	RetryBackoff, MaxRetryBackoff time.Duration
	// StopTimeout bounds the commit and acknowledgement of the batch in
	// hand once Run's context has ended ([DefaultStopTimeout]); past it the
	// batch is left pending.
	StopTimeout time.Duration
	// Logger receives the Consumer's logs (slog.Default() when nil).
	Logger *slog.Logger
}

// invalid returns an error wrapping inbox.ErrInvalidConfig.
func invalid(field string, value any, rule string) error {
	return fmt.Errorf("%w: inboxredis Options.%s = %v: %s", inbox.ErrInvalidConfig, field, value, rule)
}

// withDefaults checks o and returns it with its defaults applied.
func (o Options) withDefaults() (Options, error) {
	if strings.TrimSpace(o.Group) == "" {
		return o, invalid("Group", fmt.Sprintf("%q", o.Group), "required")
	}
	if strings.TrimSpace(o.Consumer) == "" {
		return o, invalid("Consumer", fmt.Sprintf("%q", o.Consumer), "required, and stable across restarts")
	}
	if len(o.Streams) == 0 {
		return o, invalid("Streams", o.Streams, "at least one stream is required")
	}
	o.DeadLetterSuffix = cmpOr(o.DeadLetterSuffix, DefaultDeadLetterSuffix)
	streams := make(map[string]string, len(o.Streams))
	for s, typ := range o.Streams {
		if s == "" {
			return o, invalid("Streams", o.Streams, "a stream name is empty")
		}
		if typ == "" && o.TypeField == "" {
			return o, invalid("Streams", fmt.Sprintf("%q: %q", s, typ), "stream has no event type and TypeField is not set")
		}
		if typ != "" {
			if _, err := inbox.NewRecord(uuid.New(), typ, nil); err != nil {
				return o, invalid("Streams", fmt.Sprintf("%q: %q", s, typ), err.Error())
			}
		}
		if strings.HasSuffix(s, o.DeadLetterSuffix) {
			return o, invalid("Streams", s, "is a dead-letter stream (ends in DeadLetterSuffix)")
		}
		streams[s] = typ
	}
	for s := range streams {
		if _, ok := streams[s+o.DeadLetterSuffix]; ok {
			return o, invalid("Streams", s+o.DeadLetterSuffix, "is the dead-letter stream of "+s)
		}
	}
	o.Streams = streams
	if o.IDField != "" && o.ID != nil {
		return o, invalid("ID", "func", "set IDField or ID, not both")
	}
	o.PayloadField = cmpOr(o.PayloadField, DefaultPayloadField)
	o.TraceField = cmpOr(o.TraceField, DefaultTraceField)
	o.StartID = cmpOr(o.StartID, DefaultStartID)
	if o.BatchSize == 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.BatchSize < 1 || o.BatchSize > MaxBatchSize {
		return o, invalid("BatchSize", o.BatchSize, fmt.Sprintf("must be 1 to %d", MaxBatchSize))
	}
	durations := []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{
		{"Block", &o.Block, DefaultBlock},
		{"ClaimIdle", &o.ClaimIdle, DefaultClaimIdle},
		{"RetryBackoff", &o.RetryBackoff, DefaultRetryBackoff},
		{"MaxRetryBackoff", &o.MaxRetryBackoff, DefaultMaxRetryBackoff},
		{"StopTimeout", &o.StopTimeout, DefaultStopTimeout},
	}
	for _, d := range durations {
		if *d.d == 0 {
			*d.d = d.def
		}
		if *d.d < time.Millisecond {
			return o, invalid(d.name, *d.d, "must be at least 1ms")
		}
	}
	if o.MaxRetryBackoff < o.RetryBackoff {
		return o, invalid("MaxRetryBackoff", o.MaxRetryBackoff, "must be at least RetryBackoff")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
