package inboxkafka

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/pginbox/inbox"
)

// Defaults of [Options]. Each applies when its field is left zero.
const (
	// DefaultMaxPollRecords is the most records one batch (one Set, one
	// commit) holds.
	DefaultMaxPollRecords = 500
	// MaxMaxPollRecords is the largest MaxPollRecords accepted.
	MaxMaxPollRecords = 10000
	// DefaultRetryBackoff is the first pause after a failed Set, dead-letter
	// produce or offset commit; each further failure doubles it.
	DefaultRetryBackoff = 100 * time.Millisecond
	// DefaultMaxRetryBackoff caps the pause between retries.
	DefaultMaxRetryBackoff = 10 * time.Second
	// DefaultMaxBlockRebalance is how long the consumer keeps a rebalance
	// of its group waiting while it retries a batch that it cannot store.
	// It is below kgo's default rebalance timeout (60s), past which the
	// group's coordinator expels a member that has not rejoined.
	DefaultMaxBlockRebalance = 30 * time.Second
	// DefaultAttemptTimeout bounds one attempt at a batch: the Set, the
	// dead-letter produces and the offset commit. With
	// DefaultMaxBlockRebalance it keeps a rebalance waiting 45s at most.
	DefaultAttemptTimeout = 15 * time.Second
	// DefaultTraceHeader is the header whose value becomes a record's
	// trace context ([inbox.Record.WithTraceContext]).
	DefaultTraceHeader = "traceparent"
)

// Headers of a dead-lettered record, beside the original's own headers.
const (
	// HeaderReason holds why the record was dead-lettered.
	HeaderReason = "inbox-dead-letter-reason"
	// HeaderTopic, HeaderPartition and HeaderOffset hold where the record
	// was read.
	HeaderTopic     = "inbox-source-topic"
	HeaderPartition = "inbox-source-partition"
	HeaderOffset    = "inbox-source-offset"
)

// ErrPoisonRecord reports a record that cannot be stored in the inbox
// (an unparseable id, an oversized payload, an event type without
// handlers, ...) read while no [Options.DeadLetterTopic] is set: [Consumer.Run]
// returns it and leaves the record's offset uncommitted.
var ErrPoisonRecord = errors.New("inboxkafka: record cannot be stored")

// Options configure a [Consumer]. Seeds, Group and Topics are required;
// every other field has a default.
type Options struct {
	// Seeds are the brokers to bootstrap from, "host:port" each.
	Seeds []string
	// Group is the consumer group. Every consumer of the group shares the
	// topics' partitions; offsets are committed for the group.
	Group string
	// Topics are the topics consumed.
	Topics []string

	// IDHeader names a header holding the event id as a UUID in text
	// form. A record without that header gets the derived id (see
	// [Consumer]); one whose header does not parse is a poison record.
	IDHeader string
	// EventID, when set, gives the event id of a record instead of
	// IDHeader. uuid.Nil with a nil error means "use the derived id"; an
	// error makes the record a poison record.
	EventID func(*kgo.Record) (uuid.UUID, error)

	// EventType, when set, gives the event type of a record; an error
	// makes it a poison record. Otherwise the value of EventTypeHeader is
	// used when that header is set and present, else EventTypes[topic],
	// else the topic's name.
	EventType func(*kgo.Record) (string, error)
	// EventTypeHeader names a header holding the event type.
	EventTypeHeader string
	// EventTypes maps a topic to the event type of its records.
	EventTypes map[string]string

	// TraceHeader names the header whose value is stored as the record's
	// trace context; DefaultTraceHeader ("traceparent") when empty.
	TraceHeader string

	// DeadLetterTopic receives the poison records, each with the reason
	// in the header [HeaderReason] and its source in [HeaderTopic],
	// [HeaderPartition] and [HeaderOffset], before their offsets are
	// committed. When empty, a poison record stops Run with
	// [ErrPoisonRecord] instead, its offset uncommitted.
	DeadLetterTopic string

	// MaxPollRecords is the most records of one batch:
	// DefaultMaxPollRecords when 0, at most MaxMaxPollRecords.
	MaxPollRecords int
	// RetryBackoff and MaxRetryBackoff shape the pauses between retries
	// of a failing batch: RetryBackoff, then doubled each time up to
	// MaxRetryBackoff (DefaultRetryBackoff, DefaultMaxRetryBackoff).
	RetryBackoff, MaxRetryBackoff time.Duration
	// MaxBlockRebalance is how long a failing batch keeps a rebalance of
	// the group waiting (DefaultMaxBlockRebalance), not counting the
	// attempt in flight. MaxBlockRebalance + AttemptTimeout must be below
	// the group's rebalance timeout (kgo.RebalanceTimeout, 60s by
	// default).
	MaxBlockRebalance time.Duration
	// AttemptTimeout bounds one attempt at a batch (DefaultAttemptTimeout).
	AttemptTimeout time.Duration

	// Logger receives the consumer's logs; slog.Default() when nil.
	Logger *slog.Logger
}

// withDefaults returns o with its defaults applied, or an error wrapping
// [inbox.ErrInvalidConfig] naming the first bad field.
func (o Options) withDefaults() (Options, error) {
	bad := func(field string, v any, rule string) error {
		return fmt.Errorf("%w: inboxkafka: Options.%s (%v): %s", inbox.ErrInvalidConfig, field, v, rule)
	}
	if len(o.Seeds) == 0 {
		return o, bad("Seeds", o.Seeds, "give at least one broker, host:port")
	}
	for _, s := range o.Seeds {
		if strings.TrimSpace(s) == "" {
			return o, bad("Seeds", o.Seeds, "a seed is blank")
		}
	}
	if strings.TrimSpace(o.Group) == "" {
		return o, bad("Group", o.Group, "name the consumer group")
	}
	if len(o.Topics) == 0 {
		return o, bad("Topics", o.Topics, "give at least one topic")
	}
	for _, t := range o.Topics {
		if strings.TrimSpace(t) == "" {
			return o, bad("Topics", o.Topics, "a topic is blank")
		}
		if t == o.DeadLetterTopic {
			return o, bad("DeadLetterTopic", t, "is also consumed; use a topic of its own")
		}
	}
	for topic, et := range o.EventTypes {
		if strings.TrimSpace(et) == "" || len(et) > inbox.MaxEventTypeLength {
			return o, bad("EventTypes", topic, "event type is blank or longer than inbox.MaxEventTypeLength")
		}
	}
	if o.MaxPollRecords < 0 || o.MaxPollRecords > MaxMaxPollRecords {
		return o, bad("MaxPollRecords", o.MaxPollRecords, fmt.Sprintf("want 1 to %d, or 0 for the default", MaxMaxPollRecords))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"RetryBackoff", o.RetryBackoff}, {"MaxRetryBackoff", o.MaxRetryBackoff}, {"MaxBlockRebalance", o.MaxBlockRebalance}, {"AttemptTimeout", o.AttemptTimeout}} {
		if d.v < 0 {
			return o, bad(d.name, d.v, "must not be negative")
		}
	}
	o.MaxPollRecords = cmp.Or(o.MaxPollRecords, DefaultMaxPollRecords)
	o.RetryBackoff = cmp.Or(o.RetryBackoff, DefaultRetryBackoff)
	o.MaxRetryBackoff = cmp.Or(o.MaxRetryBackoff, DefaultMaxRetryBackoff)
	o.MaxBlockRebalance = cmp.Or(o.MaxBlockRebalance, DefaultMaxBlockRebalance)
	o.AttemptTimeout = cmp.Or(o.AttemptTimeout, DefaultAttemptTimeout)
	o.TraceHeader = cmp.Or(o.TraceHeader, DefaultTraceHeader)
	if o.MaxRetryBackoff < o.RetryBackoff {
		return o, bad("MaxRetryBackoff", o.MaxRetryBackoff, "is below RetryBackoff")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}
